"""Handler exceptions in PostHog's error-tracking shape (``$exception`` / ``$exception_list``)."""

from __future__ import annotations

import linecache
import os
import sys
import sysconfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any


_MAX_CHAIN = 10
_MAX_FRAMES = 100
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY_DIRS = tuple({p for p in (sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib")) if p})
_LIBRARY_MARKERS = ("site-packages", "dist-packages", f"{os.sep}var{os.sep}runtime{os.sep}")


def _in_app(path: str) -> bool:
    return not (path.startswith(_LIBRARY_DIRS) or any(m in path for m in _LIBRARY_MARKERS))


def _frames(tb: TracebackType | None) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        path = os.path.abspath(code.co_filename)
        # Our own wrapper frames say nothing about the user's bug.
        if not path.startswith(_OWN_DIR):
            module = tb.tb_frame.f_globals.get("__name__")
            frame: dict[str, Any] = {
                "platform": "python",
                "filename": os.path.basename(path),
                "abs_path": path,
                "function": code.co_name,
                "module": module if isinstance(module, str) else None,
                "lineno": tb.tb_lineno,
                "in_app": _in_app(path),
            }
            line = linecache.getline(code.co_filename, tb.tb_lineno).strip()
            if line:
                frame["context_line"] = line
            frames.append(frame)
        tb = tb.tb_next
    # Keep the innermost frames: that is where the error happened.
    return frames[-_MAX_FRAMES:]


def exception_list(error: BaseException) -> list[dict[str, Any]]:
    """The caught exception first, then its causes, as PostHog's ``$exception_list``."""
    chain: list[tuple[BaseException, str | None]] = [(error, None)]
    source: str
    seen = {id(error)}
    current = error
    while len(chain) < _MAX_CHAIN:
        if current.__cause__ is not None:
            nxt, source = current.__cause__, "__cause__"
        elif current.__context__ is not None and not current.__suppress_context__:
            nxt, source = current.__context__, "__context__"
        else:
            break
        if id(nxt) in seen:
            break
        seen.add(id(nxt))
        chain.append((nxt, source))
        current = nxt
    out = []
    for index, (exc, origin) in enumerate(chain):
        mechanism: dict[str, Any] = {"type": "generic", "handled": False, "synthetic": False, "exception_id": index}
        if index:
            mechanism["parent_id"] = index - 1
            mechanism["source"] = origin
        try:
            value = str(exc)
        except Exception:
            value = "<str() failed>"
        entry: dict[str, Any] = {
            "type": type(exc).__name__,
            "value": value,
            "module": type(exc).__module__,
            "mechanism": mechanism,
        }
        frames = _frames(exc.__traceback__)
        if frames:
            entry["stacktrace"] = {"type": "raw", "frames": frames}
        out.append(entry)
    return out


def exception_properties(error: BaseException, trace_id: str) -> dict[str, Any]:
    return {
        "$exception_list": exception_list(error),
        "$exception_level": "error",
        "$ai_trace_id": trace_id,
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
