"""What the local Lambda environment reports: an Init's, an invocation's and a shutdown's results
and measurements (durations in milliseconds)."""

from __future__ import annotations

from dataclasses import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@dataclass
class ExtensionInit:
    name: str
    register_ms: float | None
    """From the extension's start to its register call."""
    first_next_ms: float | None
    """From the extension's start to its first ``next`` call."""


@dataclass
class InitResult:
    duration_ms: float
    extensions: list[ExtensionInit]
    error: str | None = None


@dataclass
class RestoreResult:
    """A restore from the snapshot (SnapStart): from the restore's start to the runtime's first
    ``next`` call after its after-restore hooks."""

    duration_ms: float
    error: str | None = None


@dataclass
class InvokeResult:
    request_id: str
    status: str
    """success, error (the handler raised), timeout, failure (runtime crash, Init or extension
    failure), unavailable (Lambda Managed Instances: no worker was free; nothing ran)."""
    payload: Any = None
    """The handler's response, decoded from JSON when it is JSON."""
    error: dict[str, Any] | None = None
    response_latency_ms: float | None = None
    """From the invoke to the caller's answer: what the caller waits. On Lambda that is the
    runtime posting its response; under ``behaviour="runtime-interface-emulator"`` the last
    ``next`` of the runtime and every extension (and, for an invocation that failed or timed
    out, the end of its reset), as the emulator holds the response until then."""
    post_runtime_ms: float | None = None
    """From the response to the last extension's ``next``: billed time that, on Lambda, the
    caller does not wait (under the emulator's behaviour it does: it is in the latency)."""
    duration_ms: float = 0.0
    billed_duration_ms: int = 0
    max_memory_used_mb: int = 0
    init: InitResult | None = None
    """Set when this invoke had to initialize the environment first."""
    restore: RestoreResult | None = None
    """Set when this invoke had to restore an environment from the snapshot first (SnapStart)."""
    logs: list[str] = field(default_factory=list)


@dataclass
class ExtensionShutdown:
    name: str
    exit_ms: float | None
    """From the SHUTDOWN event to the process's exit; None if it had to be killed."""
    killed: bool


@dataclass
class ShutdownResult:
    reason: str
    """As the SHUTDOWN event spelled it (the behaviour's spelling)."""
    deadline_ms: float
    extensions: list[ExtensionShutdown]
