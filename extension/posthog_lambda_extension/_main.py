"""Start-up: register as soon as possible, then load the rest.

Lambda starts the function's runtime only once every extension has registered, so before
registering the extension loads only its settings, the socket's listening end and the
Extensions API client; the rest (buffer, frame server, sender) loads while the runtime starts,
and so does a key kept in a secret store (``_secrets``: boto3 and powertools are imported only
then). Connections made meanwhile wait in the socket's backlog. Worth keeping: register first,
with nothing but these modules loaded (``tests/extension/test_startup_modules.py`` lists them);
each import added before ``register`` delays every cold start of the function.
"""

from __future__ import annotations

import contextlib
import gc
import os

from . import _log
from ._api import ApiError, ExtensionsApi, next_event, register
from ._settings import Settings
from ._unix_socket import bind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


NICENESS = 10
"""Added to the extension's nice value once registered."""


def main(argv: Sequence[str] = ()) -> int:
    """Run the extension as ``argv[0]`` (default ``posthog-lambda``); 0 after SHUTDOWN."""
    settings = Settings(os.environ, argv)
    if settings.snap_start:
        # Before anything can make an id: one made before the snapshot must not repeat in every
        # environment restored from it (``_restore``).
        from posthog_lambda_contract import ids

        ids.draw_from_kernel()
    _log.debug_enabled = settings.debug
    try:
        api = ExtensionsApi(os.environ.get("AWS_LAMBDA_RUNTIME_API", ""))
    except ApiError as exc:
        _log.warn(f"not running in AWS Lambda: {exc}")
        return 1
    listener = bind(settings.socket_path)
    # Lambda Managed Instances refuses INVOKE: asking for it there only costs a refusal.
    identifier, invokes = register(api, settings.name, invoke=not settings.managed)
    # Background work by nature: when the function and the extension both want the CPU (a
    # sandbox at low memory has a fraction of one), the function goes first. Only lowering, so
    # always allowed.
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    try:
        from ._loop import Extension

        extension = Extension(settings)
    except Exception as exc:  # a bug here must not fail the function: stay registered, idle
        _log.warn(f"cannot start ({exc!r}); events from the function are not sent")
        if listener is not None:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(settings.socket_path)  # so that the library does not wait on it
        _collect_again()
        while next_event(api, identifier).get("eventType") != "SHUTDOWN":
            pass
        return 0
    _collect_again()
    return extension.run(api, identifier, listener, invokes=invokes)


def _collect_again() -> None:
    """Turn the garbage collector back on if the layer's bootstrap turned it off for start-up
    (``layer/build.py``), after freezing what start-up made (modules, classes, functions: kept
    until the process ends): no collection scans them again. Collecting during start-up
    would add about 7% to the extension's CPU until its first next, for nothing (that CPU is Init's)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
