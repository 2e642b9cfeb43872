"""The factories ``span()``, ``generation()``, ``embedding()``, and ``current_span()``.

Each factory returns a span that starts when entered (``with``/``async with``) or, used as a
decorator, a wrapper that records a span per call. Outside any trace (no traced handler is
running in this context), the outermost span starts a trace of its own and hands it to the
sink when it ends.
"""

from __future__ import annotations

from ._context import current
from ._missing import MISSING
from ._noop import NOOP, NoOpSpan
from ._spans import Embedding, Generation, Span
from ._wraps import overload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])


def current_span() -> Span | NoOpSpan:
    """The span running now in this thread or task; a no-op span (never None) outside any."""
    span = current.get()
    return NOOP if span is None else span


def _bare(kind: type[Span], name: Any) -> Any:
    if callable(name):  # used bare: @span
        return kind()(name)
    raise TypeError(f"span name must be a string, got {type(name).__name__}")


def _given(**fields: Any) -> dict[str, Any] | None:
    given = {k: v for k, v in fields.items() if v is not None}
    return given or None


@overload
def span(name: F) -> F: ...
@overload
def span(
    name: str | None = None,
    *,
    input: Any = MISSING,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> Span: ...


# The overloads above are the API (keyword-only); the implementations take their parameters
# positionally too, because CPython fills missing keyword-only defaults one dict lookup at a
# time, and these run once per span.
def span(
    name: Any = None,
    input: Any = MISSING,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> Any:
    """A ``$ai_span``: ``with span("retrieve", input=q) as s:``, or ``@span`` / ``@span("name")``.

    As a decorator, the function's arguments are its input (unless ``capture_input=False`` or
    ``input=`` is given) and its return value, or a generator's items, its output.
    """
    if name is None or type(name) is str:
        return Span(name, input, {"properties": properties} if properties else None, capture_input)
    return _bare(Span, name)


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
) -> Generation: ...


def generation(
    name: Any = None,
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
    if name is None or type(name) is str:
        fields = _given(model_parameters=model_parameters, tools=tools, properties=properties)
        return Generation(name, input, fields, capture_input)._describe(model, provider, base_url)
    return _bare(Generation, name)


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
) -> Embedding: ...


def embedding(
    name: Any = None,
    model: str | None = None,
    provider: str | None = None,
    input: Any = MISSING,
    properties: Mapping[str, Any] | None = None,
    capture_input: bool | None = None,
) -> Any:
    """A ``$ai_embedding``; ``input`` is the text or list of texts embedded."""
    if name is None or type(name) is str:
        fields = {"properties": properties} if properties else None
        return Embedding(name, input, fields, capture_input)._describe(model, provider, None)
    return _bare(Embedding, name)
