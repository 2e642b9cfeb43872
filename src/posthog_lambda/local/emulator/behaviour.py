"""Whom the on-demand environment behaves as: Lambda, or AWS's Runtime Interface Emulator.

``LambdaEnvironment(..., behaviour="runtime-interface-emulator")`` makes the environment behave
as the Runtime Interface Emulator (RIE, ``aws-lambda-rie``: what ``sam local`` and the AWS base
images run a function under) where it differs from Lambda in ways an extension meets. Every
difference is a field of :class:`Behaviour`; the lifecycle reads them and knows nothing else of
RIE. What each says of RIE was read in RIE's source (github.com/aws/aws-lambda-runtime-interface-emulator,
the ``lambda/`` tree that ``cmd/aws-lambda-rie`` builds):

- SHUTDOWN's reason is the reason RIE resets with, as it is (``lambda/rapid/shutdown.go``,
  ``shutdownAgents``). ``lambda/rapidcore/server.go``: a timeout resets with
  ``autoresetReasonTimeout = "Timeout"``; a failed invocation (the runtime or an extension
  exiting: ``ErrInvokeDoneFailed``) with ``autoresetReasonReleaseFail = "ReleaseFail"``. The
  environment ends when RIE itself gets SIGTERM or SIGINT (``docker stop``, ``sam local``
  stopping the container): ``lambda/rapidcore/sandbox_builder.go`` resets with
  ``"SandboxTerminated"``. Every version read spells these three so. After a failed Init, recent
  versions shut the runtime domain down with ``lambda/rapid``'s ``standaloneShutdownReason =
  "spindown"`` (older ones reset with ``"ReserveFail"``); the recent one is followed here.
- The Telemetry and Logs APIs are stubs (``lambda/rapi/router.go``, ``lambda/rapi/handler/runtimelogs_stub.go``):
  every subscription, whoever makes it and whenever, is answered 202 with an error body written
  by ``rendering.RenderJSON``, a Go ``json.Encoder`` line (JSON, then ``\\n``); nothing is ever
  delivered.
- The caller's answer waits for the extensions: ``cmd/aws-lambda-rie/handlers.go`` buffers the
  response (``ResponseWriterProxy``) and writes it once ``sandbox.Invoke`` returns, which is
  when the invocation's DONE arrives, sent after ``invokeFlow.AwaitAgentsReady``
  (``lambda/rapid/handlers.go``): every extension back in ``next``. A timed-out or failed
  invocation is answered once its reset has run (``server.go``: ``Invoke`` resets, then returns).
- Nothing is frozen: RIE's process supervisor (``lambda/supervisor/local_supervisor.go``) has
  ``Freeze`` and ``Thaw`` that do nothing, so every process runs between invocations.
- Shutdown (``shutdown.go``): with an extension registered, the runtime gets SIGTERM first and
  ``runtimeDeadlineShare = 0.3`` of the budget (600 of 2,000 ms) before SIGKILL; only then do
  the extensions get SHUTDOWN, its deadline the end of the whole budget. An extension still busy
  with the invocation gets it at its next ``next`` call, if that comes before the deadline
  (``agent.Release()`` is sticky: ``lambda/core``'s ``ManagedThread``); otherwise it is SIGKILLed
  at the deadline, as one that ignores SHUTDOWN is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .routing import LOGS_SUBSCRIBE, TELEMETRY_SUBSCRIBE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

LAMBDA = "lambda"
RUNTIME_INTERFACE_EMULATOR = "runtime-interface-emulator"
BEHAVIOURS = (LAMBDA, RUNTIME_INTERFACE_EMULATOR)
"""``behaviour=``: as Lambda, or as the Runtime Interface Emulator."""

SPINDOWN = "spindown"
TIMEOUT = "timeout"
FAILURE = "failure"
INIT_FAILURE = "init-failure"
"""The lifecycle's name for the shutdown after a failed Init (Lambda calls it ``failure``)."""


def _not_supported(error_type: str, message: str) -> bytes:
    # Go's json.Encoder: the struct's field order, no spaces, a newline at the end.
    return (json.dumps({"errorMessage": message, "errorType": error_type}, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class Behaviour:
    """What the lifecycle does where Lambda and RIE differ."""

    name: str
    shutdown_reasons: Mapping[str, str] = field(default_factory=dict)
    """SHUTDOWN's ``shutdownReason`` for each of the lifecycle's reasons (``spindown``,
    ``timeout``, ``failure``, ``init-failure``); one not listed is sent as it is."""
    freezes: bool = True
    """Whether every process is stopped (SIGSTOP) between invocations."""
    replies_after_extensions: bool = False
    """Whether the caller is answered only once every extension is back in ``next`` (and a
    failed invocation only once its reset has run), not when the runtime posts the response."""
    subscription_stubs: Mapping[str, bytes] = field(default_factory=dict)
    """Subscription paths answered 202 with this body, for anyone at any time, and never
    delivered to; the others are served."""
    runtime_first: bool = False
    """Whether, at shutdown, the runtime is stopped before the extensions are handed SHUTDOWN."""
    runtime_grace_s: float | None = None
    """At shutdown, how long the runtime has after SIGTERM before SIGKILL; None: the lifecycle's own."""

    def shutdown_reason(self, reason: str) -> str:
        """``reason`` as SHUTDOWN spells it."""
        return self.shutdown_reasons.get(reason, reason)


BY_NAME: dict[str, Behaviour] = {
    LAMBDA: Behaviour(LAMBDA, shutdown_reasons={INIT_FAILURE: FAILURE}),
    RUNTIME_INTERFACE_EMULATOR: Behaviour(
        RUNTIME_INTERFACE_EMULATOR,
        shutdown_reasons={
            SPINDOWN: "SandboxTerminated",
            TIMEOUT: "Timeout",
            FAILURE: "ReleaseFail",
            INIT_FAILURE: SPINDOWN,
        },
        freezes=False,
        replies_after_extensions=True,
        subscription_stubs={
            TELEMETRY_SUBSCRIBE: _not_supported("Telemetry.NotSupported", "Telemetry API is not supported"),
            LOGS_SUBSCRIBE: _not_supported("Logs.NotSupported", "Logs API is not supported"),
        },
        runtime_first=True,
        runtime_grace_s=0.6,
    ),
}
"""Each behaviour's differences, by name."""
