"""What the extension had to drop, by reason, and the event that makes the loss visible in PostHog.

Reasons name their unit: ``frames_*`` count frames that could not be read (their events are
unknown), ``events_*`` count events. Each reason is logged the first time it happens; the
counts since the last report travel to PostHog as one ``posthog_lambda_dropped`` event.
"""

from __future__ import annotations

import os
import threading
import time

from . import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DROPPED_EVENT = "posthog_lambda_dropped"
DISTINCT_ID = "posthog-lambda"


class Drops:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._totals: dict[str, int] = {}

    def add(self, reason: str, count: int = 1, detail: str = "", *, log: bool = True) -> None:
        """Count ``count`` losses; ``log=False`` when the cause was already said."""
        if count <= 0:
            return
        with self._lock:
            self._pending[reason] = self._pending.get(reason, 0) + count
            self._totals[reason] = self._totals.get(reason, 0) + count
        if log:
            suffix = f": {detail}" if detail else ""
            _log.once(f"drop:{reason}", f"dropped {count} ({reason}){suffix}")

    def take(self) -> dict[str, int]:
        """The counts since the last ``take``, which starts a new count."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def totals(self) -> dict[str, int]:
        """Everything dropped since start-up, by reason."""
        with self._lock:
            return dict(self._totals)


def dropped_event(counts: dict[str, int]) -> dict[str, Any]:
    """A plain PostHog event carrying ``counts``: no person profile, a fresh uuid."""
    properties: dict[str, Any] = dict(counts)
    properties["$process_person_profile"] = False
    properties["posthog_lambda_dropped_total"] = sum(counts.values())
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if function:
        properties["lambda_function_name"] = function
    return {
        "event": DROPPED_EVENT,
        "distinct_id": DISTINCT_ID,
        "properties": properties,
        "timestamp": iso_now(),
        "uuid": new_uuid(),
    }


def new_uuid() -> str:
    """A random (version 4) UUID, without importing ``uuid``."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso_now() -> str:
    """The current UTC time as ISO 8601 with milliseconds, without importing ``datetime``."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
