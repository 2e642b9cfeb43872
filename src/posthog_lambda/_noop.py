"""The no-op span: what ``current_span()`` gives outside any span, so callers never test for None.

It has the public surface of a generation (the widest of the span kinds), and every method
does nothing; it is no ``Span``, so nothing that records can mistake it for one.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])


class NoOpSpan:
    """Stands in when nothing is being recorded; every method does nothing."""

    __slots__ = ()
    name = ""
    trace_id = ""
    span_id = ""

    def __repr__(self) -> str:
        return "<NoOpSpan>"

    def __bool__(self) -> bool:
        return True

    def is_recording(self) -> bool:
        return False

    def update(self, *_: Any, **__: Any) -> None:
        pass

    def chunk(self, delta: Any = None) -> None:
        pass

    def end(self, error: BaseException | None = None) -> None:
        pass

    def __enter__(self) -> NoOpSpan:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    async def __aenter__(self) -> NoOpSpan:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass

    def __call__(self, func: F) -> F:
        return func


NOOP = NoOpSpan()
