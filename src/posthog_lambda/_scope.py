"""``span()``, ``generation()`` and ``embedding()``: context managers that also decorate.

Outside any trace (no traced handler is running in this context), the outermost span starts
a trace of its own and hands it to the sink when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import Token
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from ._config import get_config
from ._context import activate, current, deactivate
from ._decorate import instrument
from ._log import logger
from ._spans import MISSING, Embedding, Generation, Span, Trace

S = TypeVar("S", bound=Span)
F = TypeVar("F", bound=Callable[..., Any])


class NoOpSpan(Embedding):
    """Stands in when nothing is being recorded; every method does nothing."""

    __slots__ = ()

    def __init__(self) -> None:  # no trace, nothing to record
        pass

    @property
    def trace_id(self) -> str:
        return ""

    @property
    def span_id(self) -> str:  # type: ignore[override]
        return ""

    @property
    def name(self) -> str:  # type: ignore[override]
        return ""

    def __repr__(self) -> str:
        return "<NoOpSpan>"

    def is_recording(self) -> bool:
        return False

    def update(self, **_: Any) -> None:
        pass

    def chunk(self, delta: Any = None) -> None:
        pass

    def set_input(self, value: Any) -> None:
        pass

    def set_output(self, value: Any) -> None:
        pass

    def end(self, error: BaseException | None = None) -> None:
        pass


NOOP = NoOpSpan()


def current_span() -> Span:
    """The span running now in this thread or task; a no-op span (never None) outside any."""
    span = current.get()
    return NOOP if span is None else span


def open_span(kind: type[S], name: str, fields: Mapping[str, Any]) -> S | None:
    """Start a span of ``kind`` under the current one, or as a new trace outside any."""
    config = get_config()
    if not config.enabled:
        return None
    parent = current.get()
    if parent is None or parent.trace.closed:
        trace = Trace(config)
        span = kind(trace, name, trace.trace_id, owns_trace=True)
    else:
        span = kind(parent.trace, name, parent.span_id)
    if fields:
        span.update(**fields)
    return span


def _arguments(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
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


class SpanScope(Generic[S]):
    """What ``span()`` returns: ``with`` it, ``async with`` it, or decorate a function with it."""

    __slots__ = ("_capture_input", "_fields", "_kind", "_name", "_stack")

    def __init__(self, kind: type[S], name: str | None, fields: dict[str, Any], capture_input: bool | None) -> None:
        self._kind = kind
        self._name = name
        self._fields = fields
        self._capture_input = capture_input
        self._stack: list[tuple[Span, Token[Span | None] | None]] = []

    def __enter__(self) -> S:
        try:
            span = open_span(self._kind, self._name or self._kind.kind[4:], self._fields)
        except Exception:
            logger.exception("starting span %r failed; continuing untraced", self._name)
            span = None
        if span is None:
            self._stack.append((NOOP, None))
            return NOOP  # type: ignore[return-value]
        self._stack.append((span, activate(span)))
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            span, token = self._stack.pop()
            if token is not None:
                deactivate(token)
            span.end(exc)
        except Exception:
            logger.exception("ending span %r failed", self._name)

    async def __aenter__(self) -> S:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        name = self._name or str(getattr(func, "__qualname__", None) or getattr(func, "__name__", "span"))
        kind, fields, capture_input = self._kind, self._fields, self._capture_input

        def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Span | None:
            span = open_span(kind, name, fields)
            if span is not None and "input" not in fields and capture_input is not False:
                trace = span.trace
                if trace.capture_input and not trace.privacy_mode:
                    span.set_input(_arguments(func, args, kwargs))
            return span

        return instrument(func, start)


def _scope(kind: type[S], name: Any, fields: dict[str, Any], capture_input: bool | None) -> Any:
    clean = {k: v for k, v in fields.items() if v is not None and v is not MISSING}
    if "input" in fields and fields["input"] is not MISSING:
        clean["input"] = fields["input"]
    if callable(name):  # used bare: @span
        return SpanScope(kind, None, clean, capture_input)(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"span name must be a string, got {type(name).__name__}")
    return SpanScope(kind, name, clean, capture_input)


@overload
def span(name: F) -> F: ...
@overload
def span(
    name: str | None = None,
    *,
    input: Any = MISSING,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> SpanScope[Span]: ...
def span(
    name: Any = None,
    *,
    input: Any = MISSING,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> Any:
    """A ``$ai_span``: ``with span("retrieve", input=q) as s:``, or ``@span`` / ``@span("name")``.

    As a decorator, the function's arguments are its input (unless ``capture_input=False`` or
    ``input=`` is given) and its return value, or a generator's items, its output.
    """
    return _scope(Span, name, {"input": input, "properties": properties}, capture_input)


@overload
def generation(name: F) -> F: ...
@overload
def generation(
    name: str | None = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    input: Any = MISSING,
    model_parameters: Mapping[str, Any] | None = None,
    tools: Any = None,
    base_url: str | None = None,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> SpanScope[Generation]: ...
def generation(
    name: Any = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    input: Any = MISSING,
    model_parameters: Mapping[str, Any] | None = None,
    tools: Any = None,
    base_url: str | None = None,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> Any:
    """A ``$ai_generation`` (one LLM call); ``g.chunk(delta)`` per streamed chunk,
    ``g.update(output=..., input_tokens=..., ...)`` when the response is in."""
    fields = {
        "model": model,
        "provider": provider,
        "input": input,
        "model_parameters": model_parameters,
        "tools": tools,
        "base_url": base_url,
        "properties": properties,
    }
    return _scope(Generation, name, fields, capture_input)


@overload
def embedding(name: F) -> F: ...
@overload
def embedding(
    name: str | None = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    input: Any = MISSING,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> SpanScope[Embedding]: ...
def embedding(
    name: Any = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    input: Any = MISSING,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> Any:
    """A ``$ai_embedding``; ``input`` is the text or list of texts embedded."""
    fields = {"model": model, "provider": provider, "input": input, "properties": properties}
    return _scope(Embedding, name, fields, capture_input)
