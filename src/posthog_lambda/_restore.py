"""An environment restored from a snapshot (Lambda SnapStart).

With SnapStart (``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``) Init runs once; Lambda snapshots
the environment's memory and every environment that serves invocations is restored from that
snapshot, with whatever this process made during Init copied into it: the ids' random generator
(each copy would draw the same ids, which PostHog deduplicates away: see
``posthog_lambda_contract.ids``), the connection to the extension, the first-invocation mark.

So, when the package is imported on SnapStart (``arm``), ids are drawn from the kernel at once:
those made during Init, and by users' after-restore hooks run before ours, cannot repeat. And a
hook registered with the runtime's ``snapshot_restore_py`` runs after each restore, before the
first invocation (``after_restore``): back to the cheap generator, freshly seeded; a new
connection; the process marked restored (``lambda_restored`` on its traces). Without
``snapshot_restore_py`` (not Lambda's managed runtime) ids stay drawn from the kernel: safe,
about half a microsecond more per id. Elsewhere nothing is imported and nothing changes.
"""

from __future__ import annotations

import os

from posthog_lambda_contract import ids
from posthog_lambda_contract.environment import on_snap_start

from . import _lambda
from ._log import logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

HOOKS_MODULE = "snapshot_restore_py"
"""Shipped with Lambda's Python runtimes (3.12 and later); awslambdaric runs what is registered
there after a restore, in registration order."""


def arm(environ: Mapping[str, str] = os.environ) -> bool:
    """On SnapStart, make ids safe to copy and register ``after_restore``; whether it was
    registered. Never raises."""
    if not on_snap_start(environ):
        return False
    ids.draw_from_kernel()
    try:
        from importlib import import_module

        hooks = import_module(HOOKS_MODULE)
        hooks.register_after_restore(after_restore)
    except Exception as exc:
        logger.debug("SnapStart without %s (%s): ids stay drawn from the kernel", HOOKS_MODULE, exc)
        return False
    return True


def after_restore() -> None:
    """Run by the runtime after a restore from the snapshot, before the first invocation. Never
    raises: a hook that raises makes the runtime fail the restore (awslambdaric exits 65)."""
    try:
        _lambda.mark_restored()
        from ._destination import reconnect

        reconnect()
        # Last: should anything above fail, ids stay drawn from the kernel, which is safe.
        ids.reseed()
    except Exception:
        logger.exception("setting up after the restore from the snapshot failed; tracing goes on")
