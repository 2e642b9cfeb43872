"""Which invocations the function's START and END frames announced, and which the Telemetry
API's ``platform.runtimeDone`` said are over, for the main loop to wait on.

Frames can arrive before the extension has even handled the INVOKE they belong to, so every
kind is remembered (the last ``KEEP`` request ids of each).
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

KEEP = 64


class Invocations:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._started: dict[str, int] = {}
        self._ended: dict[str, None] = {}
        self._done: dict[str, None] = {}
        self.starts = 0
        """START frames seen so far."""

    def start(self, request_id: str, deadline_ms: int) -> None:
        with self._changed:
            self._started[request_id] = deadline_ms
            self.starts += 1
            _trim(self._started)
            self._changed.notify_all()

    def end(self, request_id: str) -> None:
        with self._changed:
            self._ended[request_id] = None
            _trim(self._ended)
            self._changed.notify_all()

    def runtime_done(self, request_id: str) -> None:
        """``platform.runtimeDone``: the runtime finished the invocation (whatever its status)."""
        with self._changed:
            self._done[request_id] = None
            _trim(self._done)
            self._changed.notify_all()

    def done(self, request_id: str) -> bool:
        with self._changed:
            return request_id in self._done

    def started(self, request_id: str) -> bool:
        with self._changed:
            return request_id in self._started

    def ended(self, request_id: str) -> bool:
        with self._changed:
            return request_id in self._ended

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``predicate`` (checked whenever a frame or a
        runtimeDone arrives)."""
        with self._changed:
            return self._changed.wait_for(predicate, max(0.0, timeout))


def _trim(seen: dict[str, int] | dict[str, None]) -> None:
    while len(seen) > KEEP:
        del seen[next(iter(seen))]
