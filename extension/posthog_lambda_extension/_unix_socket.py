"""The Unix socket the function writes frames to: its listening end, bound before registering (so
before the function starts). ``_server`` accepts and reads its connections.

Only ``os``, ``socket`` and ``stat``: it runs before registration, where every import counts.
"""

from __future__ import annotations

import os
import socket
import stat

from . import _log

BACKLOG = 16
"""Connections made before the accept thread runs wait here."""


def bind(path: str) -> socket.socket | None:
    """A socket listening on ``path``, replacing a stale one; None (logged) if that fails."""
    try:
        _remove_stale(path)
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(BACKLOG)
        except OSError:
            listener.close()
            raise
    except OSError as exc:
        _log.warn(f"cannot listen on {path} ({exc}); the function will write events to the spool instead")
        return None
    return listener


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    os.unlink(path)
