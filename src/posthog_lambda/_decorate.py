"""Wrap sync functions, coroutines, generators and async generators in a span.

A generator's span covers its whole life: it starts at the first ``next()`` and ends when
the generator is exhausted, closed or raises. The span is current only while the generator's
own code runs, never in the caller between two items.
"""

from __future__ import annotations

from ._context import current, deactivate
from ._log import logger
from ._missing import MISSING
from ._wraps import wraps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Generator
    from typing import Any, TypeVar

    from ._spans import Span

    F = TypeVar("F", bound=Callable[..., Any])
    Start = Callable[[tuple[Any, ...], dict[str, Any]], Span | None]

_MAX_ITEMS = 10_000
# Code flags (as in the inspect module, which is too slow to import here).
_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200


def _code_flags(func: Any) -> int:
    func = getattr(func, "__func__", func)  # bound methods
    while not hasattr(func, "__code__") and callable(getattr(func, "func", None)):
        func = getattr(func.func, "__func__", func.func)  # functools.partial
    flags = getattr(getattr(func, "__code__", None), "co_flags", 0)
    return flags if isinstance(flags, int) else 0


def arguments(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A decorated function's arguments by parameter name, without ``self``/``cls``."""
    code = getattr(func, "__code__", None)
    names = code.co_varnames[: code.co_argcount] if code is not None else ()
    named: dict[str, Any] = {}
    for index, value in enumerate(args):
        name = names[index] if index < len(names) else f"arg{index}"
        if index == 0 and name in ("self", "cls"):
            continue
        named[name] = value
    named.update(kwargs)
    return named


def _start(start: Start, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Span | None:
    """The started, current span for this call; None when nothing is to be recorded."""
    try:
        span = start(args, kwargs)
    except Exception:
        logger.exception("starting a span failed; the function runs untraced")
        return None
    return span if span is not None and span._token is not None else None


def _succeed(span: Span, output: Any) -> None:
    """Record the output, then end the span as leaving a ``with`` block would."""
    try:
        if output is not MISSING:
            span.update(output=output)
    except Exception:
        logger.exception("recording the output of %r failed", span.name)
    span.end()


def _detach(span: Span) -> Span:
    """A generator's span is current only while the generator runs, not between items."""
    token = span._token
    if token is not None:
        span._token = None
        deactivate(token)
    return span


def _collector(span: Span) -> list[Any] | None:
    return [] if span._trace.record_output else None


def _joined(items: list[Any] | None) -> Any:
    if items is None:
        return MISSING
    if items and all(isinstance(i, str) for i in items):
        return "".join(items)
    return items


def instrument(func: F, start: Start) -> F:
    """``func`` wrapped so that each call runs inside the span ``start`` returns."""
    flags = _code_flags(func)
    if flags & _CO_ASYNC_GENERATOR:
        return _wrap_async_generator(func, start)  # type: ignore[return-value]
    if flags & _CO_GENERATOR:
        return _wrap_generator(func, start)  # type: ignore[return-value]
    if flags & _CO_COROUTINE:
        return _wrap_coroutine(func, start)  # type: ignore[return-value]
    return _wrap_sync(func, start)  # type: ignore[return-value]


def _wrap_sync(func: Callable[..., Any], start: Start) -> Callable[..., Any]:
    @wraps(func)
    def traced(*args: Any, **kwargs: Any) -> Any:
        span = _start(start, args, kwargs)
        if span is None:
            return func(*args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            span.end(error)
            raise
        _succeed(span, result)
        return result

    return traced


def _wrap_coroutine(func: Callable[..., Any], start: Start) -> Callable[..., Any]:
    @wraps(func)
    async def traced(*args: Any, **kwargs: Any) -> Any:
        span = _start(start, args, kwargs)
        if span is None:
            return await func(*args, **kwargs)
        try:
            result = await func(*args, **kwargs)
        except BaseException as error:
            span.end(error)
            raise
        _succeed(span, result)
        return result

    return traced


def _wrap_generator(func: Callable[..., Generator[Any, Any, Any]], start: Start) -> Callable[..., Any]:
    @wraps(func)
    def traced(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        span = _start(start, args, kwargs)
        if span is None:
            return (yield from func(*args, **kwargs))
        try:
            inner = func(*args, **kwargs)
        except BaseException as error:
            span.end(error)
            raise
        _detach(span)
        items = _collector(span)
        method: Callable[[Any], Any] = inner.send
        value: Any = None
        while True:
            token = current.set(span)
            try:
                item = method(value)
            except StopIteration as stop:
                deactivate(token)
                _succeed(span, _joined(items))
                return stop.value
            except BaseException as error:
                deactivate(token)
                span.end(error)
                raise
            deactivate(token)
            if items is not None and len(items) < _MAX_ITEMS:
                items.append(item)
            try:
                value = yield item
                method = inner.send
            except GeneratorExit:
                token = current.set(span)
                try:
                    inner.close()
                finally:
                    deactivate(token)
                _succeed(span, _joined(items))
                raise
            except BaseException as thrown:
                method, value = inner.throw, thrown

    return traced


def _wrap_async_generator(func: Callable[..., AsyncGenerator[Any, Any]], start: Start) -> Callable[..., Any]:
    @wraps(func)
    async def traced(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        span = _start(start, args, kwargs)
        if span is None:
            async for item in func(*args, **kwargs):
                yield item
            return
        try:
            inner = func(*args, **kwargs)
        except BaseException as error:
            span.end(error)
            raise
        _detach(span)
        items = _collector(span)
        method: Callable[[Any], Any] = inner.asend
        value: Any = None
        while True:
            token = current.set(span)
            try:
                item = await method(value)
            except StopAsyncIteration:
                deactivate(token)
                _succeed(span, _joined(items))
                return
            except BaseException as error:
                deactivate(token)
                span.end(error)
                raise
            deactivate(token)
            if items is not None and len(items) < _MAX_ITEMS:
                items.append(item)
            try:
                value = yield item
                method = inner.asend
            except GeneratorExit:
                token = current.set(span)
                try:
                    await inner.aclose()
                finally:
                    deactivate(token)
                _succeed(span, _joined(items))
                raise
            except BaseException as thrown:
                method, value = inner.athrow, thrown

    return traced
