"""When a trace's finished spans leave the handler's process: the processor (as in OpenTelemetry's
SDK, between the span model and the exporters).

Each trace gets a ``Batch``: its finished spans and other events wait there, in the order they
finished, and leave as records (``Span._record``) and events through the current exporter
(``_destination``):

- when the trace's root span ends (the handler returned or raised, or an outermost span outside
  a handler ended), everything, with the invocation's END in the same write;
- while the handler runs, if the exporter streams (the extension's socket): every
  ``HANDOFF_AT`` spans, and otherwise at most ``HANDOFF_INTERVAL_S`` after they end, so that a
  timeout or a crash later in the invocation cannot take them with it. A span's end does that
  check; a ticker thread does it too, for a handler blocked in a slow call that ends no span;
- an invocation still running ``HANDOFF_INTERVAL_S`` after it began is announced (START: its
  ``$ai_trace`` and the spans running, as records; then OPEN for spans started since), so that the
  extension can report it as failed if it never ends. Quicker ones never pay for announcing.

The spans themselves know only that they tell their batch when they start and end.
"""

from __future__ import annotations

import time
from _thread import allocate_lock, start_new_thread

from ._drops import record_drop
from ._export import Announcement, Ended
from ._log import logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, TypeAlias

    from ._export import Record
    from ._spans import Span
    from ._trace import Trace
    from ._types import Event

    Waiting: TypeAlias = Span | Event | Record
    """A finished span, an event already built, or a record made elsewhere (an OpenTelemetry
    span's, ``posthog_lambda.otel``)."""

_perf = time.perf_counter

HANDOFF_AT = 64
"""Finished spans a streaming trace collects before handing them over mid-invocation."""
HANDOFF_INTERVAL_S = 0.2
"""...or the longest a finished span waits before being handed over mid-invocation; also how long
an invocation runs before it is announced."""
TICK_S = 0.1
"""How often the ticker looks for a batch that is due."""
_NEVER = float("inf")


class Batch:
    """One trace's finished spans and events waiting to leave, and its running spans."""

    __slots__ = (
        "_announce_at",
        "_announced",
        "_lock",
        "_started",
        "_taken",
        "_told",
        "closed",
        "due",
        "handoff_at",
        "items",
        "on_start",
        "trace",
    )

    def __init__(self, trace: Trace, streams: bool) -> None:
        self.trace = trace
        self.items: list[Waiting] = []
        self._taken: list[Waiting] = []
        self._started: list[Span] = []
        """Spans started, some maybe ended: what an announcement looks through for running ones."""
        self.on_start = self._started.append
        """Called by each span of the trace as it starts (a bound ``append``: the hot path)."""
        self._told: set[Span] = set()
        """Spans already announced as running."""
        self._announced = 0
        """How many of ``_started`` were running when last announced (0: not announced yet)."""
        self.closed = False
        self._lock = allocate_lock()
        if streams:
            self.handoff_at = HANDOFF_AT
            self.due = self._announce_at = _perf() + HANDOFF_INTERVAL_S
            _watch(self)
        else:
            self.handoff_at = 1 << 62
            self.due = self._announce_at = _NEVER

    def on_end(self, span: Span, now: float) -> None:
        """``span`` ended at ``now`` (perf_counter): hand over what is due."""
        # No lock on this path: under the GIL an append is atomic, and close() takes an atomic
        # snapshot. Only an append that sees the batch closed afterwards has to find out, under
        # the lock, whether the snapshot got its item (settle).
        if not self.closed:
            items = self.items
            items.append(span)
            if not self.closed:
                if span._owns_trace:
                    self.finish()
                elif len(items) >= self.handoff_at or now >= self.due:
                    self.hand_off()
                return
        self.settle(span)

    def add(self, item: Event | Record) -> None:
        """An event of this trace that is not one of its spans, or a finished record of one that
        joined it (an OpenTelemetry span): it leaves with the trace's spans."""
        if not self.closed:
            self.items.append(item)
            if not self.closed:
                return
        self.settle(item)

    def settle(self, item: Waiting) -> None:
        """``item`` was added while or after the batch closed: make sure it is sent once."""
        with self._lock:
            if any(taken is item for taken in self._taken):
                return
        # Ended after its trace was handed over (a thread that outlived the handler): send it on
        # its own rather than lose it.
        logger.debug("an item ended after its trace %s was sent; sending it alone", self.trace.trace_id)
        self._export([item])

    def finish(self) -> None:
        """The root span ended: everything leaves, with the invocation's END."""
        trace = self.trace
        request = trace.request_id
        self._export(self.close(), Ended(request, trace.trace_id) if request else None)

    def is_due(self, now: float) -> bool:
        """Whether the ticker should hand over now: finished spans or an announcement wait."""
        if now < self.due:
            return False
        # Finished spans to hand over, or (in a handler's trace) spans started since the last
        # announcement, or the invocation itself not announced yet.
        return bool(self.items) or (self.trace.request_id is not None and len(self._started) != self._announced)

    def hand_off(self) -> None:
        """Send what has finished so far, without closing the batch; in a handler's trace, also
        announce the invocation and the spans still running (once each)."""
        with self._lock:
            if self.closed:
                return
            count = len(self.items)
            batch = self.items[:count]
            # Atomic under the GIL: spans appended meanwhile stay for the next hand-off.
            del self.items[:count]
            now = _perf()
            self.due = now + HANDOFF_INTERVAL_S
            running = None
            if self.trace.request_id is None:
                del self._started[:]  # only a handler's invocation is announced
            elif now >= self._announce_at:
                running = self._announcement()
        self._export(batch, None, running)

    def _announcement(self) -> Announcement:
        count = len(self._started)
        started = self._started[:count]
        del self._started[:count]
        running = [span for span in started if span._latency is None]
        self._started.extend(running)  # ended spans need no more looking at
        root = None
        opened: list[Record] = []
        for span in running:
            if span in self._told:
                continue
            self._told.add(span)
            record = span._running_record()
            if span._owns_trace:
                root = record
            else:
                opened.append(record)
        first = not self._announced
        self._announced = len(running) or -1
        trace = self.trace
        return Announcement(trace.request_id or "", trace.trace_id, trace.deadline_ms, first, root, opened)

    def close(self) -> list[Waiting]:
        with self._lock:
            self.closed = True
            self._taken = list(self.items)
            self.items = []
            self._started.clear()
            self._told.clear()
        if self.due != _NEVER:
            _unwatch(self)
        return self._taken

    def _export(
        self, waiting: Sequence[Waiting], ended: Ended | None = None, running: Announcement | None = None
    ) -> None:
        """Hand ``waiting`` to the current exporter as records and events. Never raises."""
        try:
            from ._destination import exporter

            items: list[Any] = [
                item if type(item) is dict or type(item) is tuple else item._record()  # type: ignore[union-attr]
                for item in waiting
            ]
            exporter().export(self.trace.header(), items, ended, running)
        except Exception as exc:
            record_drop("sink_error", len(waiting), f"{type(exc).__name__}: {exc}")


def begin(trace: Trace, detached: bool) -> Batch:
    """The batch of a trace that starts now: streaming if the exporter takes hand-offs."""
    # The exporters load with the first trace, not on import: the import runs on every cold start.
    from ._destination import exporter

    return Batch(trace, not detached and exporter().streams)


def export_events(events: list[Event]) -> None:
    """Events of no running trace, sent at once. Never raises."""
    if events:
        _export_now(None, events)


def export_records(header: dict[str, Any], records: list[Record]) -> None:
    """Records of a trace that runs elsewhere (an OpenTelemetry span of no handler's trace),
    made with ``header``, sent at once. Never raises."""
    _export_now(header, records)


def _export_now(header: dict[str, Any] | None, items: Sequence[Any]) -> None:
    try:
        from ._destination import exporter

        exporter().export(header, items)
    except Exception as exc:
        record_drop("sink_error", len(items), f"{type(exc).__name__}: {exc}")


# -- the ticker: hand-offs while a handler is blocked -------------------------------------------
# It only runs while the environment runs (Lambda freezes it between invocations, harmlessly),
# and is started with ``_thread`` so that nothing heavier is imported.

_watched: set[Batch] = set()
_watched_lock = allocate_lock()
_ticking = False


def _watch(batch: Batch) -> None:
    global _ticking
    with _watched_lock:
        _watched.add(batch)
        if not _ticking:
            _ticking = True
            start_new_thread(_tick, ())


def _unwatch(batch: Batch) -> None:
    with _watched_lock:
        _watched.discard(batch)


def _tick() -> None:
    while True:
        time.sleep(TICK_S)
        with _watched_lock:
            batches = list(_watched)
        now = _perf()
        for batch in batches:
            try:
                if batch.is_due(now):
                    batch.hand_off()
            except Exception:  # a ticker that dies would silently stop hand-offs
                logger.exception("handing finished spans over failed")
