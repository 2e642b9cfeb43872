"""The direct fallback: send with posthog-python's Client, synchronously, from the handler.

Used when no extension receives the events (locally, or when the layer is missing). It adds
PostHog's round trip to every invocation, which is exactly what the extension exists to
avoid, so it says so once in the log. posthog is an optional extra, imported only here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from posthog_lambda_contract.keys import mask

from ._log import logger

if TYPE_CHECKING:
    from ._types import Event

FLUSH_TIMEOUT_S = 10.0


class PostHogSink:
    def __init__(self, api_key: str, host: str) -> None:
        self._api_key = api_key
        self._host = host
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostHogSink(host={self._host!r}, api_key={mask(self._api_key)!r})"

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    from posthog.client import Client
                except ImportError as exc:
                    raise RuntimeError(
                        "POSTHOG_API_KEY is set but neither the posthog-lambda extension nor the "
                        "posthog package is present: pip install 'posthog-lambda[posthog]'"
                    ) from exc
                logger.warning(
                    "no posthog-lambda extension found: sending to %s synchronously with "
                    "posthog-python, which adds PostHog's round trip to every invocation",
                    self._host,
                )
                # $ai_* events go to the AI endpoint, which takes larger events; posthog-python
                # applies no truncation there, ours already did.
                self._client = Client(
                    self._api_key,
                    host=self._host,
                    enable_full_ai_capture=True,
                    flush_at=100,
                    max_retries=2,
                    timeout=5,
                )
            return self._client

    def send(self, events: Sequence[Event]) -> None:
        client = self._get_client()
        for event in events:
            capture = client.capture_ai if event["event"].startswith("$ai_") else client.capture
            capture(
                event["event"],
                distinct_id=event["distinct_id"],
                properties=event["properties"],
                timestamp=event["timestamp"],
                uuid=event["uuid"],
            )
        client.flush(FLUSH_TIMEOUT_S)
