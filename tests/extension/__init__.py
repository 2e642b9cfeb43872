"""Tests of the extension process (extension/posthog_lambda_extension). Helpers shared by them."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from posthog_lambda_contract import records
from posthog_lambda_contract.events import DISTINCT_ID, TRACE_ID

ISO_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
"""The one timestamp format (``events.iso``)."""


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


def header(trace_id: str = "t", **keys: Any) -> dict[str, Any]:
    """A trace's header (``events``' keys) as the library sends it with START and span records."""
    return {TRACE_ID: trace_id, DISTINCT_ID: "user-1", **keys}


def running(
    kind: str, name: str, parent: str | None, started_us: int, span_id: str | None = None, **fields: Any
) -> list[Any]:
    """A span's record as START and OPEN announce it: ``records.RUNNING``, ended when it started."""
    return [kind, name, parent, started_us, records.RUNNING, span_id, None, None, fields or None, 0]


def start(request_id: str, trace_id: str = "t", deadline_ms: int = 0, **payload: Any) -> dict[str, Any]:
    """A START frame's payload: the trace's header, and ``root`` and ``open`` if given."""
    frame = {"request_id": request_id, "trace_id": trace_id, "deadline_ms": deadline_ms, "trace": header(trace_id)}
    frame.update(payload)
    return frame


def builder_problems(event: dict[str, Any]) -> list[str]:
    """Why ``event`` was not made by ``events.make_event``: a UUIDv7, the one timestamp format."""
    problems = []
    if uuid.UUID(event["uuid"]).version != 7:
        problems.append(f"{event['event']} has uuid {event['uuid']}, not a UUIDv7")
    if not ISO_TIMESTAMP.fullmatch(event["timestamp"]):
        problems.append(f"{event['event']} has timestamp {event['timestamp']!r}")
    return problems
