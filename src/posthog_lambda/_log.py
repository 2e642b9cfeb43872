"""The library's one logger, secret masking, and the accounting of anything dropped.

The logger is silent unless POSTHOG_LAMBDA_DEBUG is set: a tracing library must not write
into its users' logs on its own. ``logging`` itself is imported on the first message, not at
import time (it costs more than the rest of the package). Whatever is dropped is still
counted, so that a test or the user can ask how much was lost and why (``dropped_counts()``).
"""

from __future__ import annotations

import os
import sys
from _thread import allocate_lock

from posthog_lambda_contract.environment import POSTHOG_LAMBDA_DEBUG, parse_flag

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any

NAME = "posthog_lambda"


class _Logger:
    """Stands for ``logging.getLogger("posthog_lambda")``, set up on first use."""

    _real: logging.Logger | None = None

    def _get(self) -> logging.Logger:
        real = self._real
        if real is None:
            real = self._real = _setup()
        return real

    def debug(self, msg: str, *args: Any) -> None:
        self._get().debug(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: Any) -> None:
        self._get().warning(msg, *args, stacklevel=2)

    def exception(self, msg: str, *args: Any) -> None:
        self._get().error(msg, *args, exc_info=True, stacklevel=2)


logger = _Logger()


def _setup() -> logging.Logger:
    import logging

    real = logging.getLogger(NAME)
    if not any(isinstance(h, logging.NullHandler) for h in real.handlers):
        real.addHandler(logging.NullHandler())
    if _flag(POSTHOG_LAMBDA_DEBUG) is True:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[posthog_lambda] %(levelname)s %(message)s"))
        real.addHandler(handler)
        real.setLevel(logging.DEBUG)
    elif real.level == logging.NOTSET:
        # Above CRITICAL: nothing reaches the user's handlers unless they lower it themselves.
        real.setLevel(logging.CRITICAL + 1)
    return real


def _flag(name: str) -> bool | None:
    raw = os.environ.get(name)
    return None if raw is None else parse_flag(raw)


def env_flag(name: str, default: bool) -> bool:
    """Read a boolean environment variable; an unreadable value keeps the default, logged."""
    value = _flag(name)
    if value is None:
        if os.environ.get(name) is not None:
            logger.warning("%s=%r is not a boolean; using %s", name, os.environ[name], default)
        return default
    return value


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
