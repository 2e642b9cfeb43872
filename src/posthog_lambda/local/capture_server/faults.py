"""Fault injection for the local capture server: the faults a test asks for (fail, slow, drop),
each affecting one request in the order asked, and how a fault changes the answer.

Refusing connections (``refuse_for``) is the server's own, as it closes its listening socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading

    from .ingestion import Verdict
    from .received import Outcome

_FAULT_STATUSES = range(400, 600)


@dataclass(frozen=True)
class Fault:
    kind: Literal["fail", "slow", "drop"]
    status: int = 0
    retry_after: int | float | str | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        if self.kind == "fail":
            after = "" if self.retry_after is None else f" Retry-After {self.retry_after}"
            return f"fail_next {self.status}{after}"
        if self.kind == "slow":
            return f"slow_next {self.seconds:g}s"
        return "drop_next"

    def answer(self, verdict: Verdict) -> tuple[int | None, Outcome, str, dict[str, Any], dict[str, str]]:
        """What to answer instead of ``verdict``: the status (None: no answer at all), outcome,
        detail, body and extra headers."""
        status: int | None = verdict.status
        outcome, detail, body = verdict.outcome, verdict.detail, verdict.body
        extra_headers: dict[str, str] = {}
        if self.kind == "fail":
            status, outcome = self.status, "failed"
            detail = f"injected by {self.describe()}"
            body = {"type": "server_error" if self.status >= 500 else "client_error", "detail": detail}
            if self.retry_after is not None:
                extra_headers["Retry-After"] = _retry_after(self.retry_after)
        elif self.kind == "drop":
            status, outcome, detail = None, "dropped", "connection closed without an answer (drop_next)"
        return status, outcome, detail, body, extra_headers


class FaultInjection:
    """The faults asked for and not yet met (a :class:`CaptureServer` is one). ``lock`` guards
    them; the server passes the condition that guards its records."""

    def __init__(self, lock: threading.Condition) -> None:
        self._faults_lock = lock
        self._faults: deque[Fault] = deque()

    def fail_next(self, n: int = 1, status: int = 503, retry_after: int | float | str | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (e.g. 500, 503, 429) without recording their
        events; ``retry_after`` (seconds or an HTTP date) is sent as the ``Retry-After`` header."""
        if status not in _FAULT_STATUSES:
            raise ValueError(f"fail_next status must be a 4xx or 5xx status, not {status}")
        self._add_faults(n, Fault("fail", status=status, retry_after=retry_after))

    def slow_next(self, n: int, seconds: float) -> None:
        """Hold each of the next ``n`` requests for ``seconds`` before handling it normally.

        The events are recorded when the delay ends even if the client gave up meanwhile: a real
        server that answers late has still ingested them, which is what makes a retry a duplicate.
        """
        if seconds < 0:
            raise ValueError("slow_next seconds must not be negative")
        self._add_faults(n, Fault("slow", seconds=seconds))

    def drop_next(self, n: int = 1) -> None:
        """Read each of the next ``n`` requests, then close the connection without any HTTP answer."""
        self._add_faults(n, Fault("drop"))

    @property
    def pending_faults(self) -> int:
        """How many requests the faults already asked for will still affect."""
        with self._faults_lock:
            return len(self._faults)

    def _add_faults(self, n: int, fault: Fault) -> None:
        if n < 0:
            raise ValueError("the number of requests must not be negative")
        with self._faults_lock:
            self._faults.extend([fault] * n)

    def _take_fault(self) -> Fault | None:
        with self._faults_lock:
            return self._faults.popleft() if self._faults else None

    def _forget_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()


def _retry_after(value: int | float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
