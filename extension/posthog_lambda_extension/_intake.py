"""What happens to each frame read from the socket or a spool file.

START, OPEN and END go to the invocation and trace trackers; SNAPSHOT to the extension, which
sends what it holds before the snapshot and whose answer goes back on the frame's connection;
each valid event of an EVENTS
frame goes into the buffer as JSON (``limits.encode``), cut to its limit if it is larger. An
event sent whole was fitted by the library already: its limit is its endpoint's. A span sent as
a record is expanded here (``records.expand``) and fitted to the ``max_event_bytes`` its trace's
header carries, as the library fits the events it sends itself: the user's limit holds whichever
way an event leaves. Anything that cannot be used is counted by reason (and logged the first
time), never raised.
"""

from __future__ import annotations

import threading
from collections import deque

from posthog_lambda_contract import frames, limits, records
from posthog_lambda_contract.events import MAX_EVENT_BYTES
from posthog_lambda_contract.frames import END, SNAPSHOT
from posthog_lambda_contract.schema import LAMBDA_RESTORED, is_root

from . import _log
from ._traces import Traces

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._buffer import Buffer
    from ._drops import Drops
    from ._invocations import Invocations
    from ._server import Stream


HANDLER_BATCHES_KEPT = 256
"""How many batches of handlers' spans ``handlers`` keeps (the latest)."""
HANDLER_SPANS_KEPT = 512
"""How many spans of one batch it keeps."""


def trace_max_event_bytes(header: dict[str, Any]) -> int:
    """The ``max_event_bytes`` a trace's header gives its events (the default when it gives none
    that can be used)."""
    value = header.get(MAX_EVENT_BYTES)
    if isinstance(value, int) and not isinstance(value, bool):
        return limits.clamp(value)
    return limits.BATCH_EVENT_LIMIT


def error_reason(error: str, broken: str | None) -> str:
    """The drop reason for one of ``Reader.feed``'s errors."""
    if error == broken:
        return "frames_too_large" if "limit" in error else "frames_bad_header"
    return "frames_bad_json" if "not JSON" in error else "frames_bad_shape"


class Intake:
    def __init__(self, buffer: Buffer, invocations: Invocations, drops: Drops) -> None:
        self.buffer = buffer
        self.invocations = invocations
        self.drops = drops
        self.accepted = 0
        """Events buffered so far."""
        self.traces = Traces()
        """What the frames and events say about each invocation's trace."""
        self.discard: str | None = None
        """When set, events are counted under this reason instead of buffered (the reason was
        said when it was set)."""
        self.arrived: threading.Event | None = None
        """Set after each batch of frames taken in, for a background flusher waiting on it."""
        self.restored = False
        """The environment was restored from a SnapStart snapshot: each ``$ai_trace`` says so
        (``schema.LAMBDA_RESTORED``), whether or not the function's library knew."""
        self.before_snapshot: Callable[[], dict[str, Any]] | None = None
        """What a SNAPSHOT frame runs (the extension sends what it holds); its answer goes back."""
        self.awaits_report: Callable[[str, str], bool] | None = None
        """Set with the Telemetry API: whether an ``$ai_trace`` (request id, uuid), just held back,
        waits for its invocation's report (``Telemetry.awaits``)."""
        self.handlers: deque[tuple[dict[str, Any], list[tuple[int, int, str]]]] | None = None
        """When OTLP is taken: the latest batches of handlers' spans, each its trace's header and
        its spans' (start, end in Unix µs, span id), where ``_otlp`` looks for the span an OTLP
        span ran in."""

    def feed(self, reader: frames.Reader, data: bytes, source: str, stream: Stream | None = None) -> bool:
        """Hand ``data`` to ``reader`` and act on what it yields (noting on ``stream``, a
        connection's, whether an invocation is under way); False once the stream is broken."""
        frames, errors = reader.feed(data)
        for error in errors:
            self.drops.add(error_reason(error, reader.broken), 1, f"{source}: {error}")
        for kind, payload in frames:
            self.frame(kind, payload, stream)
        if frames and stream is not None:
            stream.mid_invocation = frames[-1][0] not in (END, SNAPSHOT)
        if frames and self.arrived is not None:
            self.arrived.set()
        return reader.broken is None

    def finish(self, reader: frames.Reader, source: str) -> None:
        """The stream ended: a frame cut short is lost."""
        if reader.broken is None and reader.pending:
            self.drops.add("frames_truncated", 1, f"{source} ended {reader.pending} bytes into a frame")

    def frame(self, kind: int, payload: dict[str, Any], stream: Stream | None = None) -> None:
        if kind == frames.START:
            _log.debug(f"START {payload['request_id']}")
            self.traces.start(payload)
            self.invocations.start(payload["request_id"], payload["deadline_ms"])
        elif kind == frames.OPEN:
            self.traces.opened(payload)
        elif kind == frames.END:
            _log.debug(f"END {payload['request_id']}")
            self.traces.end(payload["request_id"])
            self.invocations.end(payload["request_id"])
        elif kind == SNAPSHOT:
            answer = self.before_snapshot() if self.before_snapshot is not None else None
            if answer is None:
                answer = {"sent": False, "kept": len(self.buffer)}
            if stream is not None:  # a spooled one has no one waiting for its answer
                stream.answers.append(frames.encode(SNAPSHOT, answer))
        else:
            for event in payload["events"]:
                self.event(event)
            spans = payload.get("spans")
            if spans:
                self.spans(payload["trace"], spans)

    def _hold(self, trace: dict[str, Any]) -> None:
        """Keep an invocation's ``$ai_trace`` back while Lambda's report on the invocation is to
        come, so that its figures are properties of the trace rather than events of their own."""
        request_id = trace["properties"].get("lambda_request_id")
        if not isinstance(request_id, str) or not request_id:
            return
        uuid = trace["uuid"]
        # Held first, then registered: a report that comes in between finds it held.
        if self.buffer.hold(uuid) and not (self.awaits_report and self.awaits_report(request_id, uuid)):
            self.buffer.release(uuid)

    def spans(self, header: dict[str, Any], span_records: list[Any]) -> None:
        """Finished spans sent as records (``posthog_lambda_contract.records``): their events."""
        max_event_bytes = trace_max_event_bytes(header)
        handlers = self.handlers
        times: list[tuple[int, int, str]] = []
        for record in span_records:
            try:
                event = records.expand(header, record)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError) as exc:
                self.drops.add("events_invalid", 1, f"a span record that cannot be read: {exc!r:.200}")
                continue
            if handlers is not None and record[records.KIND] != records.OTEL_SPAN and len(times) < HANDLER_SPANS_KEPT:
                props = event["properties"]
                end_us = record[records.END_US]
                span_id = props.get("$ai_span_id") or props.get("$ai_trace_id")
                times.append((end_us - record[records.LATENCY_NS] // 1000, end_us, str(span_id)))
            self.event(event, max_event_bytes)
        if times and handlers is not None:
            handlers.append((header, times))

    def event(self, event: Any, max_event_bytes: int = limits.AI_EVENT_LIMIT) -> None:
        """Buffer ``event``, cut to ``limits.limit_for`` its name and ``max_event_bytes`` (its
        trace's; by default only its endpoint's limit applies)."""
        problem = frames.valid_event(event)
        if problem is not None:
            self.drops.add("events_invalid", 1, problem)
            return
        if self.discard is not None:
            self.drops.add(self.discard, 1, log=False)
            return
        name: str = event["event"]
        root = is_root(event)
        if self.restored and root:
            event.setdefault("properties", {})[LAMBDA_RESTORED] = True
        if self.traces.late(event):
            detail = (
                f"a {name} of trace {event['properties'].get('$ai_trace_id')} ended after its invocation "
                "timed out and was sent cut short"
            )
            self.drops.add("events_late", 1, detail)
            return
        try:
            data = limits.encode(event, limits.limit_for(name, max_event_bytes))
        except (TypeError, ValueError) as exc:
            self.drops.add("events_invalid", 1, f"{name} cannot be serialized: {exc}")
            return
        if self.buffer.add(event["uuid"], name, data):
            self.accepted += 1
            self.traces.event(event)
            if root and self.awaits_report is not None:
                self._hold(event)
