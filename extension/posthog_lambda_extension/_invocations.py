"""Which invocations the function's START and END frames announced, and which the Telemetry
API's ``platform.runtimeDone`` said are over (and how), for the main loop to wait on.

Frames can arrive before the extension has even handled the INVOKE they belong to, so every
kind is remembered (the last ``RECENT`` request ids of each).
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

RECENT = 2048
"""Recent invocations remembered, for each thing remembered about them (here, in ``_traces`` and
in ``_telemetry``): more than run at once in one environment (one on-demand; up to 1,600 on
Lambda Managed Instances), a few hundred bytes each at most."""


def forget_oldest(seen: dict[str, Any]) -> None:
    """Keep the ``RECENT`` newest entries of ``seen`` (insertion order)."""
    while len(seen) > RECENT:
        del seen[next(iter(seen))]


class Invocations:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._started: dict[str, int] = {}
        self._ended: dict[str, None] = {}
        self._done: dict[str, str] = {}
        self.announced = 0
        """START and END frames seen so far: the function is traced."""
        self.ended_total = 0
        """END frames seen so far."""
        self.deaths = 0
        """Function processes that closed their connection in the middle of an invocation."""

    def start(self, request_id: str, deadline_ms: int) -> None:
        with self._changed:
            self._started[request_id] = deadline_ms
            self.announced += 1
            forget_oldest(self._started)
            self._changed.notify_all()

    def end(self, request_id: str) -> None:
        with self._changed:
            self._ended[request_id] = None
            self.announced += 1
            self.ended_total += 1
            forget_oldest(self._ended)
            self._changed.notify_all()

    def process_died(self) -> None:
        with self._changed:
            self.deaths += 1
            self._changed.notify_all()

    def runtime_done(self, request_id: str, status: str = "") -> None:
        """``platform.runtimeDone``: the runtime finished the invocation, with ``status``."""
        with self._changed:
            self._done[request_id] = status
            forget_oldest(self._done)
            self._changed.notify_all()

    def done(self, request_id: str) -> bool:
        with self._changed:
            return request_id in self._done

    def status(self, request_id: str) -> str | None:
        """runtimeDone's status for ``request_id`` ("" if it gave none), None before it came."""
        with self._changed:
            return self._done.get(request_id)

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
