"""The accounting of anything the library had to drop: counted by reason and logged, never silent.

Whatever is dropped is counted, so that a test or the user can ask how much was lost and why
(``dropped_counts()``).
"""

from __future__ import annotations

from _thread import allocate_lock

from ._log import logger

_drops: dict[str, int] = {}
_drops_lock = allocate_lock()


def record_drop(reason: str, count: int = 1, detail: str = "") -> None:
    """Count and log something the library had to drop. Never raises."""
    with _drops_lock:
        total = _drops[reason] = _drops.get(reason, 0) + count
    logger.warning("dropped %d (%s, %d so far)%s", count, reason, total, f": {detail}" if detail else "")


def dropped_counts() -> dict[str, int]:
    """What has been dropped so far in this process, by reason."""
    with _drops_lock:
        return dict(_drops)


def reset_drops() -> None:
    """Forget the counts (``testing.reset()``)."""
    with _drops_lock:
        _drops.clear()
