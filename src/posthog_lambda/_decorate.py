"""Wrap sync functions, coroutines, generators and async generators in a span.

A generator's span covers its whole life: it starts at the first ``next()`` and ends when
the generator is exhausted, closed or raises. The span is current only while the generator's
own code runs, never in the caller between two items.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, TypeVar

from ._context import activate, deactivate
from ._log import logger
from ._spans import MISSING, Span

F = TypeVar("F", bound=Callable[..., Any])
Start = Callable[[tuple[Any, ...], dict[str, Any]], "Span | None"]
_MAX_ITEMS = 10_000


def _start(start: Start, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Span | None:
    try:
        return start(args, kwargs)
    except Exception:
        logger.exception("starting a span failed; the function runs untraced")
        return None


def _succeed(span: Span, output: Any) -> None:
    try:
        if output is not MISSING:
            span.set_output(output)
    except Exception:
        logger.exception("recording the output of %r failed", span.name)
    span.end()


def _collector(span: Span) -> list[Any] | None:
    trace = span.trace
    return [] if trace.capture_output and not trace.privacy_mode else None


def _joined(items: list[Any] | None) -> Any:
    if items is None:
        return MISSING
    if items and all(isinstance(i, str) for i in items):
        return "".join(items)
    return items


def instrument(func: F, start: Start) -> F:
    """``func`` wrapped so that each call runs inside the span ``start`` returns."""
    if inspect.isasyncgenfunction(func):
        return _wrap_async_generator(func, start)  # type: ignore[return-value]
    if inspect.isgeneratorfunction(func):
        return _wrap_generator(func, start)  # type: ignore[return-value]
    if inspect.iscoroutinefunction(func):
        return _wrap_coroutine(func, start)  # type: ignore[return-value]
    return _wrap_sync(func, start)  # type: ignore[return-value]


def _wrap_sync(func: Callable[..., Any], start: Start) -> Callable[..., Any]:
    @functools.wraps(func)
    def traced(*args: Any, **kwargs: Any) -> Any:
        span = _start(start, args, kwargs)
        if span is None:
            return func(*args, **kwargs)
        token = activate(span)
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            deactivate(token)
            span.end(error)
            raise
        deactivate(token)
        _succeed(span, result)
        return result

    return traced


def _wrap_coroutine(func: Callable[..., Any], start: Start) -> Callable[..., Any]:
    @functools.wraps(func)
    async def traced(*args: Any, **kwargs: Any) -> Any:
        span = _start(start, args, kwargs)
        if span is None:
            return await func(*args, **kwargs)
        token = activate(span)
        try:
            result = await func(*args, **kwargs)
        except BaseException as error:
            deactivate(token)
            span.end(error)
            raise
        deactivate(token)
        _succeed(span, result)
        return result

    return traced


def _wrap_generator(func: Callable[..., Generator[Any, Any, Any]], start: Start) -> Callable[..., Any]:
    @functools.wraps(func)
    def traced(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        span = _start(start, args, kwargs)
        if span is None:
            return (yield from func(*args, **kwargs))
        token = activate(span)
        try:
            inner = func(*args, **kwargs)
        except BaseException as error:
            deactivate(token)
            span.end(error)
            raise
        deactivate(token)
        items = _collector(span)
        method: Callable[[Any], Any] = inner.send
        value: Any = None
        while True:
            token = activate(span)
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
                token = activate(span)
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
    @functools.wraps(func)
    async def traced(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        span = _start(start, args, kwargs)
        if span is None:
            async for item in func(*args, **kwargs):
                yield item
            return
        token = activate(span)
        try:
            inner = func(*args, **kwargs)
        except BaseException as error:
            deactivate(token)
            span.end(error)
            raise
        deactivate(token)
        items = _collector(span)
        method: Callable[[Any], Any] = inner.asend
        value: Any = None
        while True:
            token = activate(span)
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
                token = activate(span)
                try:
                    await inner.aclose()
                finally:
                    deactivate(token)
                _succeed(span, _joined(items))
                raise
            except BaseException as thrown:
                method, value = inner.athrow, thrown

    return traced
