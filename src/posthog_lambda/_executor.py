"""``ContextExecutor``, loaded on first use: concurrent.futures is not cheap to import."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ContextExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks run inside the submitter's current span."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        # Context.run(fn, *args) is fn(*args) run inside the copied context.
        return super().submit(copy_context().run, fn, *args, **kwargs)  # type: ignore[arg-type]
