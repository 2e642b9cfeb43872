"""The extension's log lines: stdout (Lambda sends it to CloudWatch), one line per problem.

Not the ``logging`` module (nor ``threading``): this runs before registration, where imports
count, and the extension needs only a prefix, a lock and "say this once".
"""

from __future__ import annotations

import sys
from _thread import allocate_lock

PREFIX = "[posthog-lambda]"

_lock = allocate_lock()
_said: set[str] = set()
debug_enabled = False
"""Set from POSTHOG_LAMBDA_DEBUG at start-up."""


def _write(line: str) -> None:
    with _lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass  # stdout closed: nowhere left to say it, and no reason to stop working


def warn(message: str) -> None:
    _write(f"{PREFIX} {message}")


def once(key: str, message: str) -> bool:
    """Say ``message`` the first time ``key`` comes up (later only in debug); True if said."""
    with _lock:
        first = key not in _said
        _said.add(key)
    if first:
        warn(message)
    elif debug_enabled:
        debug(message)
    return first


def debug(message: str) -> None:
    if debug_enabled:
        _write(f"{PREFIX} debug: {message}")


def reset() -> None:
    """Forget what was said (for tests)."""
    with _lock:
        _said.clear()
