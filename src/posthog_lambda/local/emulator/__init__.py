"""The local Lambda execution environment, by topic.

- ``lifecycle``: :class:`LambdaEnvironment`, Init, Invoke and Shutdown, freezing and resets;
- ``behaviour``: where the Runtime Interface Emulator's lifecycle differs from Lambda's
  (``behaviour="runtime-interface-emulator"``), each difference with where RIE's source has it;
- ``managed``: the Lambda Managed Instances lifecycle (``lifecycle="lambda-managed-instances"``):
  concurrent invocations in worker processes, never frozen, extensions for SHUTDOWN only;
- ``snapstart``: the SnapStart lifecycle (``lifecycle="snap-start"``): one Init, one snapshot,
  environments restored from it one at a time; ``snapshot``: the snapshot itself (raw clones);
- ``results``: what an Init, an invocation and a shutdown report;
- ``processes``: the runtime, extension and worker processes as the lifecycle follows them;
- ``routing``: the Runtime, Extensions and Telemetry APIs' HTTP routes and their server;
- ``extensions``: the Extensions API, also served on its own (:class:`ExtensionsApi`) as a
  stand-in for Lambda in front of an extension a test or benchmark starts itself;
- ``telemetry``: the Telemetry API's delivery to subscribers;
- ``invoke_api``: Lambda's Invoke API (:class:`InvokeApi`) in front of environments, for boto3's
  ``lambda`` client (a function's among them) to invoke them by name;
- ``sandbox``: each process's view of the file system (``/opt``, ``/tmp``), its user, its
  environment and signals;
- ``cpu``: Lambda's CPU share for the memory size (``cpu_share=True``), a CFS quota on a cgroup
  v1 cpu cgroup holding every process of the sandbox.
"""

from __future__ import annotations

from .behaviour import BEHAVIOURS
from .extensions import ExtensionsApi, ExtensionState
from .invoke_api import InvokeApi
from .lifecycle import LIFECYCLES, TELEMETRY_MODES, LambdaEnvironment
from .managed import ManagedInstancesEnvironment
from .results import ExtensionInit, ExtensionShutdown, InitResult, InvokeResult, RestoreResult, ShutdownResult
from .sandbox import SandboxError
from .snapstart import SnapStartEnvironment

__all__ = [
    "BEHAVIOURS",
    "LIFECYCLES",
    "TELEMETRY_MODES",
    "ExtensionInit",
    "ExtensionShutdown",
    "ExtensionState",
    "ExtensionsApi",
    "InitResult",
    "InvokeApi",
    "InvokeResult",
    "LambdaEnvironment",
    "ManagedInstancesEnvironment",
    "RestoreResult",
    "SandboxError",
    "ShutdownResult",
    "SnapStartEnvironment",
]
