"""Which span is current, per thread and per asyncio task, and how to carry it into threads.

The current span lives in a ContextVar and is only ever replaced (set/reset), never mutated,
so concurrent tasks and threads each see their own. New threads start with an empty context:
``carry_context`` and ``ContextExecutor`` hand them the caller's.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from ._spans import Span

P = ParamSpec("P")
R = TypeVar("R")

current: ContextVar[Span | None] = ContextVar("posthog_lambda_current_span", default=None)


def activate(span: Span) -> Token[Span | None]:
    return current.set(span)


def deactivate(token: Token[Span | None]) -> None:
    try:
        current.reset(token)
    except ValueError:
        # The token came from another context (a span entered in one task and left in
        # another): restore what it replaced rather than fail.
        previous = token.old_value
        current.set(None if previous is Token.MISSING else previous)


def carry_context(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``func`` so that it runs, in any thread, inside the caller's current span.

    The context is captured now; each call runs in its own copy of it, so the wrapper can be
    called several times and from several threads at once.
    """
    captured = contextvars.copy_context()

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(func, *args, **kwargs)

    return run


class ContextExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks run inside the submitter's current span."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)
