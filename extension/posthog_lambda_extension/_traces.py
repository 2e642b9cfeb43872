"""Each recent invocation's trace as the extension knows it, from the function's frames and events.

- A long invocation's START frame announces it (``Announced``): its trace's header, the record of
  its ``$ai_trace`` and those of the spans running, each ``records.RUNNING``; OPEN frames add the
  spans started since. When the invocation then times out or its process dies (SHUTDOWN with
  reason ``timeout``/``failure``), these records are completed as failed (``records.cut_short``)
  and made into events by the one builder (``records.expand``), like every other span: the trace
  shows up in PostHog with every span that finished and those cut short.
- Each buffered ``$ai_trace`` is remembered by request id (``BufferedTrace``), for
  ``platform.report``'s figures.
- On Lambda Managed Instances a timed-out invocation's process lives on: its handler may still
  finish after its trace was sent cut short. The spans sent cut short are remembered
  (``cut``), so that their late events are recognised (``late``) and dropped, counted: each
  span arrives once.
"""

from __future__ import annotations

import threading

from posthog_lambda_contract import records
from posthog_lambda_contract.events import header_of
from posthog_lambda_contract.schema import is_root

from ._invocations import forget_oldest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from posthog_lambda_contract.schema import Event


class BufferedTrace:
    """A buffered ``$ai_trace``: what a later report needs to find it or link to it."""

    __slots__ = ("header", "trace_id", "uuid")

    def __init__(self, uuid: str, trace_id: str, header: dict[str, Any]) -> None:
        self.uuid = uuid
        self.trace_id = trace_id
        self.header = header
        """``events.header_of`` the event: its user, person-profile rule, session and groups."""


class Announced:
    """An invocation announced by START whose ``$ai_trace`` has not arrived."""

    __slots__ = ("deadline_ms", "header", "open", "request_id", "root", "trace_id")

    def __init__(self, request_id: str, trace_id: str, deadline_ms: int) -> None:
        self.request_id = request_id
        self.trace_id = trace_id
        self.deadline_ms = deadline_ms
        self.header: dict[str, Any] | None = None
        """The trace's header (``events``' keys), as its span records are sent with."""
        self.root: Sequence[Any] | None = None
        """The running record of its ``$ai_trace``."""
        self.open: dict[str, Sequence[Any]] = {}
        """Span id -> the record of a span announced running and not received since."""

    @property
    def reportable(self) -> bool:
        """Whether it can be sent as failed: its header and the record of its ``$ai_trace`` came."""
        return self.root is not None and self.header is not None


class Traces:
    """Written by the frames' threads, read by the main loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, str] = {}
        """trace id -> request id."""
        self._announced: dict[str, Announced] = {}
        self._buffered: dict[str, BufferedTrace] = {}
        self._cut: dict[str, set[str]] = {}
        """trace id -> ids of its spans sent cut short, its root (the invocation) among them."""

    def start(self, payload: Mapping[str, Any]) -> None:
        """A START frame (its shape checked by ``frames``)."""
        request_id, trace_id = payload["request_id"], payload["trace_id"]
        with self._lock:
            self._requests[trace_id] = request_id
            forget_oldest(self._requests)
            if request_id in self._buffered:
                return  # its trace came first (frames from a spool file are read late)
            announced = self._announced.get(request_id) or Announced(request_id, trace_id, payload["deadline_ms"])
            announced.deadline_ms = payload["deadline_ms"]
            announced.header = payload["trace"]
            root = payload.get("root")
            if root is not None:
                announced.root = root
            self._announced[request_id] = announced
            forget_oldest(self._announced)
        self.opened(payload)

    def opened(self, payload: Mapping[str, Any]) -> None:
        """Spans announced running (a START's or an OPEN frame's ``open`` list)."""
        with self._lock:
            announced = self._announced.get(payload["request_id"])
            if announced is None:
                return
            for record in payload.get("open", ()):
                span_id = _span_id(record)
                if span_id is not None:
                    announced.open[span_id] = record

    def end(self, request_id: str) -> None:
        """An END frame: the handler returned or raised, its events are all sent."""
        with self._lock:
            self._announced.pop(request_id, None)

    def event(self, event: dict[str, Any]) -> None:
        """An event was buffered: a span announced running has ended, or the trace has."""
        properties = event.get("properties")
        if not isinstance(properties, dict):
            return
        trace_id = properties.get("$ai_trace_id")
        if not isinstance(trace_id, str):
            return
        with self._lock:
            if not is_root(event):
                if self._announced:
                    announced = self._announced.get(self._requests.get(trace_id, ""))
                    span_id = properties.get("$ai_span_id")
                    if announced is not None and isinstance(span_id, str):
                        announced.open.pop(span_id, None)
                return
            request_id = properties.get("lambda_request_id")
            if not isinstance(request_id, str) or not request_id:
                request_id = self._requests.get(trace_id)
            if request_id is None:
                return
            self._announced.pop(request_id, None)
            self._buffered[request_id] = BufferedTrace(event["uuid"], trace_id, header_of(event))
            forget_oldest(self._buffered)

    def get(self, request_id: str) -> BufferedTrace | None:
        """The buffered ``$ai_trace`` of ``request_id``, if one was."""
        with self._lock:
            return self._buffered.get(request_id)

    def take(self, request_id: str) -> Announced | None:
        """The announced invocation ``request_id`` if its trace never came (forgotten as it is
        returned)."""
        with self._lock:
            announced = self._announced.get(request_id)
            if announced is None or not announced.reportable:
                return None
            del self._announced[request_id]
            return announced

    def cut(self, announced: Announced) -> None:
        """``announced``'s trace was sent cut short: its spans that arrive from now on are late."""
        with self._lock:
            # The root's own id: the trace's, or a span's where the trace is another function's.
            root_id = _span_id(announced.root) or announced.trace_id
            self._cut[announced.trace_id] = {root_id, *announced.open}
            forget_oldest(self._cut)

    def overdue(self, before_ms: int) -> list[str]:
        """Request ids of announced invocations whose deadline (Unix ms) is before ``before_ms``
        (one announced without a deadline never is)."""
        with self._lock:
            return [a.request_id for a in self._announced.values() if 0 < a.deadline_ms < before_ms]

    def late(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` is a span (or the ``$ai_trace``) already sent cut short."""
        if not self._cut:
            return False
        properties = event.get("properties")
        if not isinstance(properties, dict):
            return False
        trace_id = properties.get("$ai_trace_id")
        span_id = trace_id if event.get("event") == "$ai_trace" else properties.get("$ai_span_id")
        with self._lock:
            cut = self._cut.get(trace_id) if isinstance(trace_id, str) else None
            return cut is not None and span_id in cut

    def take_unfinished(self) -> list[Announced]:
        """Announced invocations whose trace never came, forgotten as they are returned."""
        with self._lock:
            unfinished = [a for a in self._announced.values() if a.reportable]
            self._announced.clear()
            return unfinished


def failed_events(announced: Announced, status: str, now: float) -> tuple[list[Event], int]:
    """The events that report ``announced`` as failed with Lambda's ``status`` (``timeout``,
    ``failure``, ...): its ``$ai_trace`` and each span cut short, ended at the deadline for a
    timeout, else at ``now`` (Unix seconds) or the deadline, whichever is earlier; and how many
    of its records could not be made into an event (malformed: the caller counts them)."""
    header, root = announced.header, announced.root
    assert header is not None
    assert root is not None
    deadline = announced.deadline_ms / 1000
    ended = deadline if status == "timeout" else min(now, deadline)
    started = _started(root)
    if status == "timeout":
        # The trace began as the invocation did, give or take a few ms; timeouts are whole seconds
        # on AWS, so one decimal says it exactly.
        limit = f"its {round(deadline - started, 1):g} s timeout" if started is not None else "its timeout"
        error = f"Lambda status timeout: the invocation did not finish within {limit}"
    else:
        error = f"Lambda status {status}: the function's process ended before the invocation finished"
    fields = {"lambda_status": status}
    made: list[Event] = []
    unreadable = 0
    cut = [(record, f"did not end: {error}") for record in announced.open.values()]
    for record, message in [(root, error), *cut]:
        try:
            made.append(records.expand(header, records.cut_short(record, ended, message, fields)))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            unreadable += 1
    return made, unreadable


def _started(record: Sequence[Any]) -> float | None:
    """When a running span's record says it started (Unix seconds), if it says."""
    started_us = record[records.END_US] if len(record) > records.END_US else None
    if isinstance(started_us, int) and not isinstance(started_us, bool):
        return started_us / 1e6
    return None


def _span_id(record: Any) -> str | None:
    """The id of a running span's record (None if it is not one: it could not be found again)."""
    if not isinstance(record, list | tuple) or len(record) <= records.ID:
        return None
    span_id = record[records.ID]
    return span_id if isinstance(span_id, str) and span_id else None
