"""Tests of the extension process (extension/posthog_lambda_extension). Helpers shared by them."""

from __future__ import annotations

import json
import uuid
from typing import Any


def make_event(
    name: str = "$ai_span", pad: int = 0, event_uuid: str | None = None, **properties: Any
) -> dict[str, Any]:
    """An event as the library hands it over; ``pad`` adds that many characters of payload."""
    props: dict[str, Any] = {"$ai_trace_id": "trace-1", **properties}
    if pad:
        props["$ai_input_state"] = "x" * pad
    return {
        "event": name,
        "distinct_id": "user-1",
        "properties": props,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "uuid": event_uuid or str(uuid.uuid4()),
    }


def data(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
