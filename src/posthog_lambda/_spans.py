"""Spans, generations, embeddings and the trace they belong to.

Entering and leaving a span is the hot path (a handler may open thousands), so it only
records times, ids and already-converted values; building the PostHog event happens once, when
the trace is handed to the sink.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from . import _ids
from ._config import Config
from ._jsonable import to_jsonable
from ._log import logger, record_drop

if TYPE_CHECKING:
    from ._sinks import Event


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""Stands for "not given", since None is a legitimate input or output."""


class Trace:
    """What all events of one trace share, and the buffer they wait in until the trace ends."""

    __slots__ = (
        "_closed",
        "_items",
        "_lock",
        "anonymous",
        "capture_input",
        "capture_output",
        "common",
        "config",
        "distinct_id",
        "groups",
        "privacy_mode",
        "redact",
        "session_id",
        "trace_id",
    )

    def __init__(
        self,
        config: Config,
        *,
        trace_id: str | None = None,
        distinct_id: str | None = None,
        session_id: str | None = None,
        privacy_mode: bool | None = None,
        capture_input: bool | None = None,
        capture_output: bool | None = None,
        groups: dict[str, Any] | None = None,
        common: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.trace_id = trace_id or _ids.uuid7()
        self.distinct_id = distinct_id or config.default_distinct_id or self.trace_id
        # PostHog's own SDKs: without a known user, the trace id stands in and no person
        # profile is made, rather than one fake person that merges everyone.
        self.anonymous = not (distinct_id or config.default_distinct_id)
        self.session_id = session_id
        self.privacy_mode = config.privacy_mode if privacy_mode is None else privacy_mode
        self.capture_input = config.capture_input if capture_input is None else capture_input
        self.capture_output = config.capture_output if capture_output is None else capture_output
        self.redact = config.redact_keys
        self.groups = groups
        self.common = common
        self._items: list[Span | RawEvent] = []
        self._closed = False
        self._lock = threading.Lock()

    def capture(self, value: Any) -> Any:
        return to_jsonable(value, self.redact)

    def add(self, item: Span | RawEvent) -> None:
        with self._lock:
            if not self._closed:
                self._items.append(item)
                return
        # Ended after its trace was handed over (a thread that outlived the handler): send
        # it on its own rather than lose it.
        from ._sinks import deliver

        logger.debug("%s ended after its trace %s was flushed; sending it alone", item.kind, self.trace_id)
        deliver([item.to_event()])

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> list[Span | RawEvent]:
        with self._lock:
            self._closed = True
            items, self._items = self._items, []
        return items


class RawEvent:
    """An event that is not a span (feedback, metric, exception) waiting in a trace's buffer."""

    __slots__ = ("kind", "properties", "trace", "wall")

    def __init__(self, kind: str, trace: Trace, properties: dict[str, Any]) -> None:
        self.kind = kind
        self.trace = trace
        self.properties = properties
        self.wall = time.time()

    def to_event(self) -> Event:
        from ._events import assemble

        return assemble(self.kind, self.trace, self.properties, None, self.wall)


_perf = time.perf_counter
_wall = time.time


class Span:
    """A unit of work in a trace, emitted as ``$ai_span``."""

    kind: ClassVar[str] = "$ai_span"
    __slots__ = (
        "_error",
        "_input",
        "_latency",
        "_output",
        "_owns_trace",
        "_properties",
        "_start",
        "_start_wall",
        "_trace",
        "name",
        "parent_id",
        "span_id",
    )

    def __init__(self, trace: Trace, name: str, parent_id: str, owns_trace: bool = False) -> None:
        self._trace = trace
        self.name = name
        self.span_id = _ids.uuid4()
        self.parent_id = parent_id
        self._input: Any = MISSING
        self._output: Any = MISSING
        self._properties: dict[str, Any] | None = None
        self._error: str | None = None
        self._latency: float | None = None
        self._owns_trace = owns_trace
        self._start_wall = _wall()
        self._start = _perf()

    @property
    def trace_id(self) -> str:
        return self._trace.trace_id

    @property
    def trace(self) -> Trace:
        return self._trace

    def is_recording(self) -> bool:
        """True until the span ends; a no-op span never records."""
        return self._latency is None

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.span_id} trace={self.trace_id}>"

    def update(
        self,
        *,
        input: Any = MISSING,
        output: Any = MISSING,
        properties: Mapping[str, Any] | None = None,
        error: BaseException | str | None = None,
        name: str | None = None,
    ) -> None:
        """Record input, output, custom properties, an error or a new name. Never raises."""
        try:
            self._update_common(input, output, properties, error, name)
        except Exception:
            logger.exception("span update failed; the span keeps what it had")

    def _update_common(
        self,
        input: Any,
        output: Any,
        properties: Mapping[str, Any] | None,
        error: BaseException | str | None,
        name: str | None,
    ) -> None:
        if self._latency is not None:
            logger.debug("update() on ended span %r ignored", self.name)
            return
        if input is not MISSING:
            self.set_input(input)
        if output is not MISSING:
            self.set_output(output)
        if properties:
            converted = self._trace.capture(dict(properties))
            if self._properties is None:
                self._properties = converted
            else:
                self._properties.update(converted)
        if error is not None:
            self._error = describe_error(error)
        if name:
            self.name = str(name)

    def set_input(self, value: Any) -> None:
        trace = self._trace
        if trace.capture_input and not trace.privacy_mode:
            self._input = trace.capture(value)

    def set_output(self, value: Any) -> None:
        trace = self._trace
        if trace.capture_output and not trace.privacy_mode:
            self._output = trace.capture(value)

    def end(self, error: BaseException | None = None) -> None:
        """End the span now (context managers and decorators do this for you). Never raises."""
        try:
            self._end(error)
        except Exception:
            logger.exception("ending span %r failed", self.name)

    def _end(self, error: BaseException | None) -> None:
        if self._latency is not None:
            return
        self._latency = _perf() - self._start
        if error is not None and not isinstance(error, GeneratorExit):
            self._error = describe_error(error)
        self._trace.add(self)
        if self._owns_trace:
            from ._sinks import deliver

            deliver([item.to_event() for item in self._trace.close()])

    def library_properties(self) -> dict[str, Any]:
        """The ``$ai_*`` properties this span sets; they win over user properties."""
        props: dict[str, Any] = {
            "$ai_trace_id": self._trace.trace_id,
            "$ai_span_id": self.span_id,
            "$ai_parent_id": self.parent_id,
            "$ai_span_name": self.name,
            "$ai_latency": self._latency,
            "$ai_is_error": self._error is not None,
        }
        if self._error is not None:
            props["$ai_error"] = self._error
        if self._trace.session_id is not None:
            props["$ai_session_id"] = self._trace.session_id
        if self._input is not MISSING:
            props["$ai_input_state"] = self._input
        if self._output is not MISSING:
            props["$ai_output_state"] = self._output
        return props

    def end_wall(self) -> float:
        return self._start_wall + (self._latency or 0.0)

    def to_event(self) -> Event:
        from ._events import assemble

        return assemble(self.kind, self._trace, self.library_properties(), self._properties, self.end_wall())


def describe_error(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        message = str(error)
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return str(error)


def _as_messages(value: Any, role: str) -> Any:
    """PostHog renders ``[{role, content}]``; a bare string becomes one message."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [value]
    return value


# Generation.update keyword -> (PostHog property, kind of value)
_NUMBERS: dict[str, tuple[str, type]] = {
    "input_tokens": ("$ai_input_tokens", int),
    "output_tokens": ("$ai_output_tokens", int),
    "cache_read_input_tokens": ("$ai_cache_read_input_tokens", int),
    "cache_creation_input_tokens": ("$ai_cache_creation_input_tokens", int),
    "reasoning_tokens": ("$ai_reasoning_tokens", int),
    "http_status": ("$ai_http_status", int),
    "input_cost_usd": ("$ai_input_cost_usd", float),
    "output_cost_usd": ("$ai_output_cost_usd", float),
    "total_cost_usd": ("$ai_total_cost_usd", float),
}
_TEXTS: dict[str, str] = {
    "model": "$ai_model",
    "provider": "$ai_provider",
    "stop_reason": "$ai_stop_reason",
    "base_url": "$ai_base_url",
}
_MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _number(field: str, value: Any, kind: type) -> int | float | None:
    """A count or cost as PostHog can sum it; anything else is dropped, counted and logged."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value) if kind is float else int(value)
        except (TypeError, ValueError, ArithmeticError):
            record_drop("invalid_generation_field", 1, f"{field}={value!r:.80}")
            return None
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            record_drop("invalid_generation_field", 1, f"{field}={value!r:.80}")
            return None
        return int(value)
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        record_drop("invalid_generation_field", 1, f"{field}={value!r:.80}")
        return None
    return number


class Generation(Span):
    """One call to an LLM, emitted as ``$ai_generation``."""

    kind: ClassVar[str] = "$ai_generation"
    __slots__ = ("_chunks", "_fields", "_first_token")

    def __init__(self, trace: Trace, name: str, parent_id: str, owns_trace: bool = False) -> None:
        super().__init__(trace, name, parent_id, owns_trace)
        self._fields: dict[str, Any] = {}
        self._first_token: float | None = None
        self._chunks: list[str] | None = None

    def set_input(self, value: Any) -> None:
        trace = self._trace
        if trace.capture_input and not trace.privacy_mode:
            self._input = _as_messages(trace.capture(value), "user")

    def set_output(self, value: Any) -> None:
        trace = self._trace
        if trace.capture_output and not trace.privacy_mode:
            self._output = _as_messages(trace.capture(value), "assistant")

    def chunk(self, delta: Any = None) -> None:
        """Record one streamed chunk: the first sets the time to first token; text deltas are
        joined into the output unless an output is given explicitly. Never raises."""
        try:
            if self._first_token is None:
                self._first_token = _perf() - self._start
                self._fields["$ai_stream"] = True
            if isinstance(delta, str) and self._trace.capture_output and not self._trace.privacy_mode:
                if self._chunks is None:
                    self._chunks = []
                self._chunks.append(delta)
        except Exception:
            logger.exception("recording a chunk failed")

    def update(
        self,
        *,
        input: Any = MISSING,
        output: Any = MISSING,
        properties: Mapping[str, Any] | None = None,
        error: BaseException | str | None = None,
        name: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        model_parameters: Mapping[str, Any] | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_input_tokens: int | None = None,
        cache_creation_input_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        stop_reason: str | None = None,
        http_status: int | None = None,
        base_url: str | None = None,
        input_cost_usd: float | None = None,
        output_cost_usd: float | None = None,
        total_cost_usd: float | None = None,
        tools: Any = None,
    ) -> None:
        """Record what the model call used and returned. Never raises."""
        try:
            self._update_common(input, output, properties, error, name)
            if self._latency is not None:
                return
            given = locals()
            for key, (prop, kind) in _NUMBERS.items():
                if given[key] is not None:
                    number = _number(key, given[key], kind)
                    if number is not None:
                        self._fields[prop] = number
            for key, prop in _TEXTS.items():
                if given[key] is not None:
                    self._fields[prop] = str(given[key])
            if model_parameters is not None:
                self._set_model_parameters(model_parameters)
            if tools is not None:
                self._fields["$ai_tools"] = self._trace.capture(tools)
        except Exception:
            logger.exception("generation update failed; the generation keeps what it had")

    def _set_model_parameters(self, params: Mapping[str, Any]) -> None:
        converted = self._trace.capture(dict(params))
        self._fields["$ai_model_parameters"] = converted
        if "temperature" in converted:
            self._fields["$ai_temperature"] = converted["temperature"]
        for key in _MAX_TOKEN_KEYS:
            if converted.get(key) is not None:
                self._fields["$ai_max_tokens"] = converted[key]
                break
        if "stream" in converted and "$ai_stream" not in self._fields:
            self._fields["$ai_stream"] = bool(converted["stream"])

    def library_properties(self) -> dict[str, Any]:
        props = super().library_properties()
        props["$ai_generation_id"] = self.span_id
        # Generations carry their messages in $ai_input / $ai_output_choices, not *_state.
        if "$ai_input_state" in props:
            props["$ai_input"] = props.pop("$ai_input_state")
        output = props.pop("$ai_output_state", MISSING)
        if output is MISSING and self._chunks:
            output = _as_messages("".join(self._chunks), "assistant")
        if output is not MISSING:
            props["$ai_output_choices"] = output
        if self._first_token is not None:
            props["$ai_time_to_first_token"] = self._first_token
        props.update(self._fields)
        return props


class Embedding(Generation):
    """One call to an embedding model, emitted as ``$ai_embedding``."""

    kind: ClassVar[str] = "$ai_embedding"
    __slots__ = ()

    def set_input(self, value: Any) -> None:
        # Embedding input is a string or a list of strings, not chat messages.
        Span.set_input(self, value)

    def library_properties(self) -> dict[str, Any]:
        props = super().library_properties()
        del props["$ai_generation_id"]
        return props


class TraceSpan(Span):
    """The root of a handler's trace: emitted as ``$ai_trace``; its id is the trace id."""

    kind: ClassVar[str] = "$ai_trace"
    __slots__ = ("lambda_properties",)

    def __init__(self, trace: Trace, name: str) -> None:
        super().__init__(trace, name, parent_id="", owns_trace=True)
        self.span_id = trace.trace_id
        self.lambda_properties: dict[str, Any] = {}

    def _end(self, error: BaseException | None) -> None:
        if self._latency is None and error is not None and not isinstance(error, GeneratorExit):
            from ._exceptions import exception_properties

            self._trace.add(RawEvent("$exception", self._trace, exception_properties(error, self._trace)))
        super()._end(error)

    def library_properties(self) -> dict[str, Any]:
        props = super().library_properties()
        del props["$ai_span_id"], props["$ai_parent_id"]
        props.update(self.lambda_properties)
        return props
