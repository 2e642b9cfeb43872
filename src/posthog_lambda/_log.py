"""The library's one logger, secret masking, and the accounting of anything dropped.

The logger is silent unless POSTHOG_LAMBDA_DEBUG is set: a tracing library must not write
into its users' logs on its own. Whatever is dropped is still counted, so that a test or the
user can ask how much was lost and why (``dropped_counts()``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter

from . import constants

logger = logging.getLogger("posthog_lambda")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def env_flag(name: str, default: bool) -> bool:
    """Read a boolean environment variable; an unreadable value keeps the default, logged."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    logger.warning("%s=%r is not a boolean; using %s", name, raw, default)
    return default


def _setup() -> None:
    logger.addHandler(logging.NullHandler())
    if env_flag(constants.POSTHOG_LAMBDA_DEBUG, False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[posthog_lambda] %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    else:
        # Above CRITICAL: nothing reaches the user's handlers unless they lower it themselves.
        logger.setLevel(logging.CRITICAL + 1)


_setup()


def mask(secret: str | None) -> str:
    """Show enough of a key to recognise it, never enough to use it."""
    if not secret:
        return "<unset>"
    if len(secret) <= 8:
        return "****"
    return f"{secret[:4]}****{secret[-4:]}"


_drops: Counter[str] = Counter()
_drops_lock = threading.Lock()


def record_drop(reason: str, count: int = 1, detail: str = "") -> None:
    """Count and log something the library had to drop. Never raises."""
    with _drops_lock:
        _drops[reason] += count
        total = _drops[reason]
    logger.warning("dropped %d (%s, %d so far)%s", count, reason, total, f": {detail}" if detail else "")


def dropped_counts() -> dict[str, int]:
    """What has been dropped so far in this process, by reason."""
    with _drops_lock:
        return dict(_drops)
