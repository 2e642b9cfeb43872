"""Run Lambda functions, the layer and its extension locally, without Docker or AWS.

``LambdaEnvironment`` is a faithful local Lambda execution environment (the real runtime
interface client, real extension processes, the real lifecycle including freezing, or with
``lifecycle="lambda-managed-instances"`` that of Lambda Managed Instances: concurrent
invocations, never frozen); ``InvokeApi`` serves Lambda's Invoke API in front of such
environments (for boto3's ``lambda`` client, a function's among them); ``CaptureServer`` is a
local PostHog capture endpoint. None of them is imported by ``import posthog_lambda``: they are
for development and tests. Names load on first use, from the two packages that hold them:
``emulator`` (the Lambda environment and its Invoke API) and ``capture_server``; ``cli`` is the
command line of both.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .capture_server import CaptureServer
    from .emulator import (
        ExtensionInit,
        ExtensionShutdown,
        InitResult,
        InvokeApi,
        InvokeResult,
        LambdaEnvironment,
        SandboxError,
        ShutdownResult,
    )

__all__ = [
    "CaptureServer",
    "ExtensionInit",
    "ExtensionShutdown",
    "InitResult",
    "InvokeApi",
    "InvokeResult",
    "LambdaEnvironment",
    "SandboxError",
    "ShutdownResult",
]

_WHERE = {"CaptureServer": ".capture_server"}


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module 'posthog_lambda.local' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_WHERE.get(name, ".emulator"), __name__), name)
    globals()[name] = value
    return value
