"""The processes of a local Lambda environment as its lifecycle follows them: the runtime, with
the invocation it is working on, and each extension, with what the Extensions API knows of it."""

from __future__ import annotations

import time

from .extensions import ExtensionState

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any


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
