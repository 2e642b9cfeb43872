"""Each recent invocation's trace as the extension knows it, from the function's frames and events.

- A long invocation's START and OPEN frames announce its ``$ai_trace`` and the spans running,
  as the library would send them. When the invocation then times out or its process dies
  (SHUTDOWN with reason ``timeout``/``failure``), these are completed and sent as failed: the
  trace shows up in PostHog with every span that finished and those cut short.
- Each buffered ``$ai_trace`` is remembered by request id, for ``platform.report``'s figures.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

KEEP = 64
"""Invocations remembered (each kind): Lambda runs one invocation at a time per environment."""


class Trace:
    """A buffered ``$ai_trace``: what a later report needs to find it or link to it."""

    __slots__ = ("anonymous", "distinct_id", "trace_id", "uuid")

    def __init__(self, uuid: str, trace_id: str, distinct_id: str, anonymous: bool) -> None:
        self.uuid = uuid
        self.trace_id = trace_id
        self.distinct_id = distinct_id
        self.anonymous = anonymous


class Running:
    """An announced invocation whose trace has not arrived."""

    __slots__ = ("deadline_ms", "open", "request_id", "trace", "trace_id")

    def __init__(self, request_id: str, trace_id: str, deadline_ms: int) -> None:
        self.request_id = request_id
        self.trace_id = trace_id
        self.deadline_ms = deadline_ms
        self.trace: dict[str, Any] | None = None
        """Its ``$ai_trace`` as the library would have sent it."""
        self.open: dict[str, dict[str, Any]] = {}
        """Span id -> the event of a span announced running and not received since."""


class Traces:
    """Written by the frames' threads, read by the main loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, str] = {}
        """trace id -> request id."""
        self._running: dict[str, Running] = {}
        self._traces: dict[str, Trace] = {}

    def start(self, payload: Mapping[str, Any]) -> None:
        """A START frame (its shape checked by ``frames``)."""
        request_id, trace_id = payload["request_id"], payload["trace_id"]
        with self._lock:
            self._requests[trace_id] = request_id
            _trim(self._requests)
            if request_id in self._traces:
                return  # its trace came first (frames from a spool file are read late)
            running = self._running.get(request_id) or Running(request_id, trace_id, payload["deadline_ms"])
            running.deadline_ms = payload["deadline_ms"]
            trace = payload.get("trace")
            if _is_event(trace):
                running.trace = trace
            self._running[request_id] = running
            _trim(self._running)
        self.opened(payload)

    def opened(self, payload: Mapping[str, Any]) -> None:
        """Spans announced running (a START's or an OPEN frame's ``open`` list)."""
        with self._lock:
            running = self._running.get(payload["request_id"])
            if running is None:
                return
            for event in payload.get("open", ()):
                span_id = _span_id(event)
                if span_id is not None:
                    running.open[span_id] = event

    def end(self, request_id: str) -> None:
        """An END frame: the handler returned or raised, its events are all sent."""
        with self._lock:
            self._running.pop(request_id, None)

    def event(self, event: Mapping[str, Any]) -> None:
        """An event was buffered: a span announced running has ended, or the trace has."""
        properties = event.get("properties")
        if not isinstance(properties, dict):
            return
        trace_id = properties.get("$ai_trace_id")
        if not isinstance(trace_id, str):
            return
        with self._lock:
            if event.get("event") != "$ai_trace":
                if self._running:
                    running = self._running.get(self._requests.get(trace_id, ""))
                    span_id = properties.get("$ai_span_id")
                    if running is not None and isinstance(span_id, str):
                        running.open.pop(span_id, None)
                return
            request_id = properties.get("lambda_request_id")
            if not isinstance(request_id, str) or not request_id:
                request_id = self._requests.get(trace_id)
            if request_id is None:
                return
            self._running.pop(request_id, None)
            anonymous = properties.get("$process_person_profile") is False
            self._traces[request_id] = Trace(event["uuid"], trace_id, event["distinct_id"], anonymous)
            _trim(self._traces)

    def get(self, request_id: str) -> Trace | None:
        """The buffered ``$ai_trace`` of ``request_id``, if one was."""
        with self._lock:
            return self._traces.get(request_id)

    def take_unfinished(self) -> list[Running]:
        """Announced invocations whose trace never came, forgotten as they are returned."""
        with self._lock:
            unfinished = [running for running in self._running.values() if running.trace is not None]
            self._running.clear()
            return unfinished


def failed_events(running: Running, status: str, now: float) -> list[dict[str, Any]]:
    """The events that report ``running`` as failed with Lambda's ``status`` (``timeout``,
    ``failure``, ...): its ``$ai_trace`` and each span cut short, ended at the deadline for a
    timeout, else at ``now`` (Unix seconds) or the deadline, whichever is earlier."""
    from posthog_lambda_contract.events import iso

    assert running.trace is not None
    deadline = running.deadline_ms / 1000
    ended = deadline if status == "timeout" else min(now, deadline)
    started = _unix(running.trace)
    if status == "timeout":
        # The trace began as the invocation did, give or take a few ms; timeouts are whole seconds
        # on AWS, so one decimal says it exactly.
        limit = f"its {round(deadline - started, 1):g} s timeout" if started is not None else "its timeout"
        error = f"Lambda status timeout: the invocation did not finish within {limit}"
    else:
        error = f"Lambda status {status}: the function's process ended before the invocation finished"
    events = []
    cut_short = [(span, f"did not end: {error}") for span in running.open.values()]
    for template, message in [(running.trace, error), *cut_short]:
        properties = dict(template["properties"])
        properties["$ai_is_error"] = True
        properties["$ai_error"] = message
        properties["lambda_status"] = status
        begun = _unix(template)
        if begun is not None:
            properties["$ai_latency"] = max(0.0, ended - begun)
        events.append({**template, "properties": properties, "timestamp": iso(ended)})
    return events


def _is_event(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("properties"), dict) and isinstance(value.get("uuid"), str)


def _span_id(event: Any) -> str | None:
    if not _is_event(event):
        return None
    span_id = event["properties"].get("$ai_span_id")
    return span_id if isinstance(span_id, str) and span_id else None


def _unix(event: Mapping[str, Any]) -> float | None:
    """When an announced span started: its event's timestamp (it had not ended)."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(event["timestamp"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _trim(seen: dict[str, Any]) -> None:
    while len(seen) > KEEP:
        del seen[next(iter(seen))]
