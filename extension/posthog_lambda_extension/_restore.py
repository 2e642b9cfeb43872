"""An environment restored from a snapshot (Lambda SnapStart), as the extension learns it.

With SnapStart, Init runs once; Lambda snapshots the memory of the whole environment, this
process's included, and every environment that serves invocations is restored from it. Whatever
this process made during Init is copied into each: the ids' random generator (every copy would
make the same ids, which PostHog deduplicates away), a kept-alive connection to PostHog, times
read from the monotonic clock before the snapshot.

Lambda gives extensions no hook and no event for a restore: the ``next`` pending at the snapshot
simply returns the first INVOKE (or SHUTDOWN). The sign is whichever comes first of

- the first event from the Extensions API after Init, and
- a Telemetry API ``platform.restore*`` record (``restoreStart``, sent as the restore begins).

Both are sound, never early: on SnapStart the environment that ran Init is never invoked (it is
only snapshotted), so every event after Init, and every restore record, happens in a restored
environment. At the sign, once (``Restore.sign``): ids come from a freshly seeded generator again,
and the extension forgets what the snapshot copied (``Extension.restored``). Until then ids are
drawn from the kernel (``ids.draw_from_kernel``, at start-up): frames that arrive before the sign
(spans of the function's own after-restore hooks) are safe already.
"""

from __future__ import annotations

import threading

from posthog_lambda_contract import ids

from . import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Restore:
    """Waits for the sign of the restore and acts on it once, whichever thread sees it first."""

    def __init__(self, on_restore: Callable[[], None]) -> None:
        self._on_restore = on_restore
        self._lock = threading.Lock()
        self.awaiting = True
        """No sign yet (read without the lock: ``sign`` decides under it)."""

    def sign(self, what: str) -> bool:
        """``what`` says this environment was restored: act, unless done already; True if this
        call did. A second caller waits until the first is done, so that nothing goes on with
        what the snapshot copied."""
        with self._lock:
            if not self.awaiting:
                return False
            try:
                self._on_restore()
                ids.reseed()  # last: should anything fail, ids stay drawn from the kernel, which is safe
            except Exception as exc:
                _log.once("restore", f"setting up after the restore from the snapshot failed: {exc!r}")
            finally:
                self.awaiting = False
        _log.debug(f"restored from the snapshot ({what})")
        return True
