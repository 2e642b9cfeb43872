"""The local Lambda execution environment, by topic.

- ``lifecycle``: :class:`LambdaEnvironment`, Init, Invoke and Shutdown, freezing and resets;
- ``results``: what an Init, an invocation and a shutdown report;
- ``processes``: the runtime and extension processes as the lifecycle follows them;
- ``routing``: the Runtime, Extensions and Telemetry APIs' HTTP routes and their server;
- ``extensions``: the Extensions API, also served on its own (:class:`ExtensionsApi`) as a
  stand-in for Lambda in front of an extension a test or benchmark starts itself;
- ``telemetry``: the Telemetry API's delivery to subscribers;
- ``sandbox``: each process's view of the file system (``/opt``, ``/tmp``), its environment
  and signals.
"""

from __future__ import annotations

from .extensions import ExtensionsApi, ExtensionState
from .lifecycle import TELEMETRY_MODES, LambdaEnvironment
from .results import ExtensionInit, ExtensionShutdown, InitResult, InvokeResult, ShutdownResult
from .sandbox import SandboxError

__all__ = [
    "TELEMETRY_MODES",
    "ExtensionInit",
    "ExtensionShutdown",
    "ExtensionState",
    "ExtensionsApi",
    "InitResult",
    "InvokeResult",
    "LambdaEnvironment",
    "SandboxError",
    "ShutdownResult",
]
