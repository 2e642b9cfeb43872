"""Which span is current, per thread and per asyncio task, and how to carry it into threads.

The current span lives in a ContextVar and is only ever replaced (set/reset), never mutated,
so concurrent tasks and threads each see their own. New threads start with an empty context:
``carry_context`` and ``ContextExecutor`` hand them the caller's.
"""

from __future__ import annotations

from contextvars import ContextVar, copy_context

from ._wraps import wraps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from contextvars import Token
    from typing import ParamSpec, TypeVar

    from ._spans import Span

    P = ParamSpec("P")
    R = TypeVar("R")

current: ContextVar[Span | None] = ContextVar("posthog_lambda_current_span", default=None)


def deactivate(token: Token[Span | None]) -> None:
    try:
        current.reset(token)
    except ValueError:
        # The token came from another context (a span entered in one task and left in
        # another): restore what it replaced rather than fail.
        previous = token.old_value
        current.set(None if previous is token.MISSING else previous)


def carry_context(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``func`` so that it runs, in any thread, inside the caller's current span.

    The context is captured now; each call runs in its own copy of it, so the wrapper can be
    called several times and from several threads at once.
    """
    captured = copy_context()

    @wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(func, *args, **kwargs)

    return run
