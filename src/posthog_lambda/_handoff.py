"""Hand finished spans to a streaming sink while the handler runs, also when it stops emitting.

A span's end hands over the trace's finished spans once there are many of them or the last
hand-off was ``HANDOFF_INTERVAL_S`` ago; a handler that then blocks (a slow model call, a hang
that ends in a timeout) emits no more span ends, so a ticker thread does the same check on its
own, and also announces invocations that have run that long (see ``Trace.hand_off``).
It only runs while the environment runs (Lambda freezes it between invocations, harmlessly),
and it is started with ``_thread`` so that nothing heavier is imported.
"""

from __future__ import annotations

import time
from _thread import allocate_lock, start_new_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._spans import Trace

TICK_S = 0.1

_watched: set[Trace] = set()
_lock = allocate_lock()
_running = False


def watch(trace: Trace) -> None:
    global _running
    with _lock:
        _watched.add(trace)
        if not _running:
            _running = True
            start_new_thread(_tick, ())


def unwatch(trace: Trace) -> None:
    with _lock:
        _watched.discard(trace)


def _tick() -> None:
    while True:
        time.sleep(TICK_S)
        with _lock:
            traces = list(_watched)
        now = time.perf_counter()
        for trace in traces:
            try:
                if trace.due(now):
                    trace.hand_off()
            except Exception:  # a ticker that dies would silently stop hand-offs
                from ._log import logger

                logger.exception("handing finished spans over failed")
