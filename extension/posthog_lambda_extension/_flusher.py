"""Sending from a background thread, where no INVOKE event comes (Lambda Managed Instances).

There the main thread waits in ``next`` until SHUTDOWN, invocations overlap and the environment
is never frozen, so this thread is what sends. It sleeps until frames arrive
(``Intake.arrived``) or the oldest buffered event comes due (``Policy.wait_s``), and never
longer than the flush interval (spool files and overdue invocations announce themselves to no
one); then it completes the traces of invocations that failed (``Extension.complete_failed``)
and asks ``Policy.on_tick`` whether to flush. At least ``COALESCE_S`` pass between two looks, so
a steady stream of frames costs a few wake-ups a second, not one per frame; after a flush that
could not send, it waits for the sender's backoff. SHUTDOWN stops it (``stop``) before the main
thread makes the last flush.
"""

from __future__ import annotations

import threading
import time

from . import _log
from ._policy import FLUSH_NOW

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._loop import Extension

COALESCE_S = 0.05
FLUSH_BUDGET_S = 5.0
"""The most one background flush may take, retries included (then the events wait for the next,
after the sender's backoff): SHUTDOWN waits for the flush under way before its own."""


class Flusher:
    def __init__(self, extension: Extension, clock: Callable[[], float] = time.monotonic) -> None:
        self._extension = extension
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="posthog-lambda-flush", daemon=True)

    @property
    def wake(self) -> threading.Event:
        """Set it to have the flusher look now (frames arrived, an invocation failed)."""
        return self._wake

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop once the flush under way (if any) is over; True if the thread ended within
        ``timeout`` seconds."""
        self._stopping.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def _run(self) -> None:
        extension = self._extension
        policy = extension.policy
        ended_seen = extension.invocations.ended_total
        while not self._stopping.is_set():
            try:
                self._wake.clear()  # before looking: whatever arrives from now on wakes the next wait
                extension.spool.drain()
                completed = extension.complete_failed()
                ended = completed > 0 or extension.invocations.ended_total != ended_seen
                now = self._clock()
                stats = extension.buffer.stats()
                wait = policy.wait_s(now, stats.oldest)
                if policy.on_tick(now, stats.count, stats.size, stats.oldest, ended) == FLUSH_NOW:
                    ended_seen = extension.invocations.ended_total
                    sent = extension.flush(now + FLUSH_BUDGET_S)
                    sender = extension.sender
                    now = self._clock()
                    if not sent and sender is not None and not sender.ready():
                        wait = sender.not_before - now  # PostHog is failing: its backoff, not the timer
                    else:
                        wait = policy.wait_s(now, extension.buffer.stats().oldest)
                        if not sent:
                            wait = policy.interval_s  # not sendable yet (a key still being read)
                interval = policy.interval_s
                self._wake.wait(interval if wait is None else min(max(wait, 0.0), interval))
                self._stopping.wait(COALESCE_S)
            except Exception as exc:  # a bug must cost a flush, never the thread
                _log.once(f"flusher:{type(exc).__name__}", f"background flush failed unexpectedly: {exc!r}")
                self._stopping.wait(policy.interval_s)
