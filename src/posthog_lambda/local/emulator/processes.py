"""The processes of a local Lambda environment as its lifecycle follows them: the runtime, with
the invocation it is working on, each extension, with what the Extensions API knows of it, and
(Lambda Managed Instances) each worker process the runtime forked."""

from __future__ import annotations

import time

from .extensions import ExtensionState

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from .managed import Invocation


class Process:
    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.process = process
        self.started = time.monotonic()
        self.exited: float | None = None


class ExtensionProcess(Process, ExtensionState):
    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        Process.__init__(self, name, process)
        ExtensionState.__init__(self, name)


class RuntimeProcess(Process):
    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        super().__init__(name, process)
        self.waiting = False
        self.next_at: float | None = None
        self.queue: list[tuple[str, bytes, dict[str, str]]] = []
        self.init_error: dict[str, Any] | None = None
        self.request_id: str | None = None
        self.response: bytes | None = None
        self.error: dict[str, Any] | None = None
        self.responded: float | None = None


class WorkerProcess:
    """One of the runtime's worker processes (Lambda Managed Instances): not started by the
    environment but forked by the runtime, so known by its pid only."""

    def __init__(self, name: str, pid: int, generation: int) -> None:
        self.name = name
        self.pid = pid
        self.generation = generation
        """The Init it belongs to."""
        self.exited: float | None = None
        self.exit_status: str | None = None
        """How it ended, as Lambda words it (``exit status 3``, ``signal: killed``), when known."""
        self.next_calls = 0
        self.waiting = False
        """In a ``next`` call that has no invocation yet."""
        self.handed: tuple[bytes, dict[str, str]] | None = None
        """The invocation (body, headers) its ``next`` call is to answer with."""
        self.current: Invocation | None = None
        """The invocation it works on, from the hand-out to its next ``next`` call."""
