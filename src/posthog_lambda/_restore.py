"""An environment restored from a snapshot (Lambda SnapStart).

With SnapStart (``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``) Init runs once; Lambda snapshots
the environment's memory and every environment that serves invocations is restored from that
snapshot, with whatever this process made during Init copied into it: the ids' random generator
(each copy would draw the same ids, which PostHog deduplicates away: see
``posthog_lambda_contract.ids``), the connection to the extension, the first-invocation mark;
and, in the extension, the events it still buffers (each copy would send them again).

So, when the package is imported on SnapStart (``arm``), ids are drawn from the kernel at once:
those made during Init, and by users' after-restore hooks run before ours, cannot repeat. And a
hook registered with the runtime's ``snapshot_restore_py`` runs after each restore, before the
first invocation (``after_restore``): back to the cheap generator, freshly seeded; a new
connection; the process marked restored (``lambda_restored`` on its traces). Without
``snapshot_restore_py`` (not Lambda's managed runtime) ids stay drawn from the kernel: safe,
about half a microsecond more per id. Elsewhere nothing is imported and nothing changes.

Before the snapshot, a hook (``before_snapshot``) has the extension send what Init made, and waits
for it (``SNAPSHOT_WAIT_S`` at most), so that it is sent once. The runtime runs before-snapshot
hooks in the reverse order of their registration: ours, registered when the package is imported,
runs after the hooks of code that imports it (priming spans made there are sent too).
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


SNAPSHOT_WAIT_S = 4.0
"""The most the snapshot waits for the extension to send what Init made: its own budget
(``SNAPSHOT_BUDGET_S``, 3 s) and some. Init's time, which SnapStart spends once per version."""


def arm(environ: Mapping[str, str] = os.environ) -> bool:
    """On SnapStart, make ids safe to copy and register ``before_snapshot`` and ``after_restore``;
    whether they were registered. Never raises."""
    if not on_snap_start(environ):
        return False
    ids.draw_from_kernel()
    try:
        from importlib import import_module

        hooks = import_module(HOOKS_MODULE)
        hooks.register_before_snapshot(before_snapshot)
        hooks.register_after_restore(after_restore)
    except Exception as exc:
        logger.debug("SnapStart without %s (%s): ids stay drawn from the kernel", HOOKS_MODULE, exc)
        return False
    return True


def before_snapshot() -> None:
    """Run by the runtime once Init is over, before the snapshot. Never raises: a hook that
    raises fails the Init (awslambdaric exits 64)."""
    try:
        from ._destination import before_snapshot as ask

        answer = ask(SNAPSHOT_WAIT_S)
        if answer is not None and answer.get("kept"):
            logger.debug("%s events the extension could not send before the snapshot", answer["kept"])
    except Exception:
        logger.exception("sending before the snapshot failed; tracing goes on")


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
