"""When to flush: the decisions of every flush mode, as a pure class (no clock, no I/O).

- ``end``: after each invocation (the END frame, or the deadline), before calling next. Billed
  time, never response time; nothing waits in the buffer between invocations.
- ``batch``: at INVOKE, in parallel with the handler, once ``flush_at`` events or
  ``interval`` seconds have accumulated (or half the buffer is used). Adds no billed time while
  PostHog answers faster than the handler runs; events may wait for the next invocation.
- ``adaptive``: ``end`` while invocations are rare, ``batch`` once the median gap between the
  last few INVOKEs is shorter than the flush interval.

Without INVOKE events (Lambda Managed Instances: many invocations at once, never frozen, SHUTDOWN
the only event) a background thread asks ``on_tick`` instead, whenever events arrive or a timer
it was given by ``wait_s`` expires; the flush never holds up a response or an invocation:

- ``end``: as soon as an invocation has ended (END frame) and events are buffered;
- ``batch`` and ``adaptive``: once ``flush_at`` events or ``interval`` seconds have accumulated
  (``adaptive`` has nothing to adapt to: invocations overlap, and flushing costs none of them).

Waiting for END needs the function to send START/END frames (``@posthog_traced``). If neither
arrives for an invocation soon after its INVOKE (and no runtimeDone ends it), the function is
taken to be untraced and invocations are handled like ``batch`` until a START or END shows up
again; otherwise every invocation would wait until its deadline.

Worth keeping as it is: a pure decision class. It is given the time and the buffer's figures and
returns a decision; the loop does the waiting and the sending. So every rule is tested with plain
numbers (tests/extension/test_policy.py), without clocks, sockets or threads.
"""

from __future__ import annotations

END = "end"
BATCH = "batch"
ADAPTIVE = "adaptive"

WAIT_FOR_END = "wait_for_end"
"""Wait for the invocation's END frame, then flush everything."""
FLUSH_NOW = "flush_now"
"""Flush what is buffered now, then call next."""
HOLD = "hold"
"""Hold the events in the buffer; call next."""

GAP_WINDOW = 5


class Policy:
    def __init__(self, mode: str, flush_at: int, interval_s: float, buffer_limit: int) -> None:
        self.mode = mode
        self.flush_at = flush_at
        self.interval_s = interval_s
        self.buffer_limit = buffer_limit
        self.untraced = False
        """No START frame came for the last invocation waited on."""
        self._gaps: list[float] = []
        self._last_invoke: float | None = None

    def on_invoke(self, now: float, count: int, size: int, oldest: float | None) -> str:
        """The action for an INVOKE received at ``now`` (seconds) with the buffer holding ``count``
        events of ``size`` bytes, the oldest added at ``oldest``."""
        if self._last_invoke is not None:
            self._gaps = [*self._gaps[-(GAP_WINDOW - 1) :], max(0.0, now - self._last_invoke)]
        self._last_invoke = now
        if self.style() == END and not self.untraced:
            return WAIT_FOR_END
        return FLUSH_NOW if self.due(now, count, size, oldest) else HOLD

    def style(self) -> str:
        """``end`` or ``batch``: what ``adaptive`` resolves to given the recent gaps."""
        if self.mode != ADAPTIVE:
            return self.mode
        gap = self.gap()
        return BATCH if gap is not None and gap < self.interval_s else END

    def gap(self) -> float | None:
        """The median of the last few gaps between INVOKEs (seconds), None before the second."""
        if not self._gaps:
            return None
        ordered = sorted(self._gaps)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    def due(self, now: float, count: int, size: int, oldest: float | None) -> bool:
        """Whether a batch flush is due."""
        if count == 0:
            return False
        if count >= self.flush_at or size * 2 >= self.buffer_limit:
            return True
        return oldest is not None and now - oldest >= self.interval_s

    def restored(self) -> None:
        """After a restore from a snapshot: the INVOKE times seen before are forgotten (they
        were read on the clock before the snapshot)."""
        self._gaps = []
        self._last_invoke = None

    def saw_start(self) -> None:
        self.untraced = False

    def missed_start(self) -> None:
        self.untraced = True

    def on_tick(self, now: float, count: int, size: int, oldest: float | None, ended: bool) -> str:
        """Without INVOKE events: the action at ``now`` with the buffer's figures, ``ended`` if
        an invocation has ended since the last flush."""
        if count and self.mode == END and ended:
            return FLUSH_NOW
        return FLUSH_NOW if self.due(now, count, size, oldest) else HOLD

    def wait_s(self, now: float, oldest: float | None) -> float | None:
        """Without INVOKE events: how long until a flush is due by age alone (None: nothing is
        buffered, so only arriving events can make one due)."""
        return None if oldest is None else max(0.0, oldest + self.interval_s - now)
