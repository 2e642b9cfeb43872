"""``functools.wraps`` without importing functools (and collections, which it pulls in)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar
    from typing import overload as overload

    W = TypeVar("W", bound=Callable[..., Any])
else:

    def overload(func: Any) -> Any:
        """typing.overload for type checkers; at run time the last definition simply wins."""
        return func


ANNOTATIONS = "__annotate__" if sys.version_info >= (3, 14) else "__annotations__"
"""What carries a function's annotations, as ``functools`` copies it. From Python 3.14 (PEP 649)
it is the function that computes them: reading ``__annotations__`` there evaluates them, which
raises NameError for a name imported only for type checkers (``if TYPE_CHECKING:``), at the
moment the user's handler is decorated, in Init."""
_ASSIGNED = ("__module__", "__name__", "__qualname__", "__doc__", ANNOTATIONS, "__type_params__")


def wraps(wrapped: Callable[..., Any]) -> Callable[[W], W]:
    """Make the decorated wrapper look like ``wrapped``, as ``functools.wraps`` does."""

    def apply(wrapper: W) -> W:
        for name in _ASSIGNED:
            try:
                value = getattr(wrapped, name)
            except Exception:  # absent, or an attribute of the user's own that raises
                continue
            setattr(wrapper, name, value)
        wrapper.__dict__.update(getattr(wrapped, "__dict__", {}))
        wrapper.__wrapped__ = wrapped  # type: ignore[attr-defined]
        return wrapper

    return apply
