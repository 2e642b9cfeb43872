"""Spans, generations, embeddings and the trace they belong to.

Entering and leaving a span is the hot path (a handler may open thousands), so it only
records times and already-converted values; ids are made when first needed, and the record
that stands for its event is made when the batch hands it over.

A span knows nothing of delivery: it tells its trace's batch (``_processor``) when it starts and
when it ends, and gives its record (``_record``) when the batch asks. A ``Span`` is also its
own context manager and decorator: ``span("x")`` returns a span that
starts when entered. Entering the same object again (or decorating a function with it) starts
a new span each time, from the same description.
"""

from __future__ import annotations

import time
from marshal import dumps as _dumps

from posthog_lambda_contract import ids as _ids
from posthog_lambda_contract.jsonable import MARSHAL_VERSION, SCALARS, captured, to_jsonable
from posthog_lambda_contract.records import (
    HAS_INPUT,
    HAS_OUTPUT,
    INPUT,
    INPUT_MARSHALLED,
    MASK,
    OUTPUT_MARSHALLED,
    RUNNING,
)

from . import _config
from ._context import current, deactivate
from ._decorate import arguments, instrument
from ._drops import record_drop
from ._lambda import on_managed_instances
from ._log import logger
from ._missing import MISSING
from ._trace import Trace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextvars import Token
    from types import TracebackType
    from typing import Any, ClassVar, Self, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])
    Pending = tuple["dict[str, Any] | None", "bool | None"]

_perf = time.perf_counter


class Span:
    """A unit of work in a trace, emitted as ``$ai_span``."""

    kind: ClassVar[str] = "$ai_span"
    default_name: ClassVar[str] = "span"
    # What every span uses lives in slots, set in __init__; what few spans use is a class
    # default, stored per instance (in the __dict__) only when set.
    __slots__ = (
        "__dict__",
        "_id",
        "_input",
        "_label",
        "_latency",
        "_marshalled",
        "_output",
        "_start",
        "_token",
        "_trace",
        "name",
        "parent_id",
    )
    parent_id: str
    """Set when the span starts: the enclosing span's id, or the trace id at the top."""
    _pending: Pending | None = None
    """(update() fields, capture_input) given to span(), applied when it starts."""
    _properties: dict[str, Any] | None = None
    _error: str | None = None
    _owns_trace: bool = False
    _copies: list[Span] | None = None

    def __init__(
        self,
        name: str | None = None,
        input: Any = MISSING,
        fields: dict[str, Any] | None = None,
        capture_input: bool | None = None,
    ) -> None:
        self.name = name or self.default_name
        self._label = name
        # Kept as given until the span starts and knows its trace's privacy and redaction.
        self._input: Any = input
        if fields or capture_input is not None:
            self._pending = (fields, capture_input)
        self._trace: Trace = None  # type: ignore[assignment]  # set when it starts
        self._id: str | None = None
        self._start: float | None = None
        """perf_counter() when the span started; None before. Wall time is derived from it."""
        self._latency: float | None = None
        """Seconds; None until the span ends."""
        self._output: Any = MISSING
        self._marshalled = 0
        """INPUT_MARSHALLED and OUTPUT_MARSHALLED: which of the two are marshal's bytes."""
        self._token: Token[Span | None] | None = None

    # -- starting and ending --------------------------------------------------------------
    # The hot path: written out inline, as every call here costs a measurable share of a span.

    def __enter__(self) -> Self:
        """Start the span and make it current (it stays unstarted if tracing is disabled)."""
        try:
            if self._start is not None:
                return self._enter_again()
            trace = self._trace
            if trace is None:  # a handler's root span comes with its trace
                parent = current.get()
                if parent is not None and not parent._trace.batch.closed:
                    # Joining a running trace: whether to trace was decided when it began.
                    trace = self._trace = parent._trace
                    self.parent_id = parent._id or parent.span_id
                else:
                    config = _config.current or _config.get_config()
                    if not config.enabled:
                        return self
                    trace = self._trace = Trace(config)
                    self._owns_trace = True
                    self.parent_id = trace.trace_id
            self._start = _perf()
            trace.batch.on_start(self)
            value = self._input
            if value is not MISSING:
                if not trace.record_input:
                    self._input = MISSING
                elif type(value) not in SCALARS and not self._marshalled & INPUT_MARSHALLED:
                    # jsonable.captured, written out: the hot path.
                    try:
                        self._input = _dumps(value, MARSHAL_VERSION)
                        self._marshalled = INPUT_MARSHALLED
                    except (ValueError, TypeError, RecursionError):
                        self._input = to_jsonable(value, trace.redact)
            if self._pending is not None and self._pending[0]:
                self.update(**self._pending[0])
            self._token = current.set(self)
        except Exception:
            logger.exception("starting span %r failed; continuing untraced", self.name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End the span, recording ``exc`` as its error, and restore the span it replaced."""
        try:
            if self._copies:
                self._copies.pop().__exit__(exc_type, exc, tb)
                return
            token = self._token
            if token is not None:
                self._token = None
                try:
                    current.reset(token)
                except ValueError:
                    deactivate(token)
            start = self._start
            if start is None or self._latency is not None:
                return
            now = _perf()
            self._latency = now - start
            if exc is not None and not isinstance(exc, GeneratorExit):
                self._record_error(exc)
            self._trace.batch.on_end(self, now)
        except Exception:
            logger.exception("ending span %r failed", self.name)

    def _record_error(self, error: BaseException) -> None:
        self._error = describe_error(error)

    def _enter_again(self) -> Self:
        # Entered before: a new span with the same description.
        fresh = self._copy()
        if self._copies is None:
            self._copies = []
        self._copies.append(fresh)
        return fresh.__enter__()

    def _copy(self) -> Self:
        fresh = type(self)(self._label)
        fresh._pending = self._pending
        fresh._input = self._input  # as given, or as recorded if this span already started
        fresh._marshalled = self._marshalled & INPUT_MARSHALLED
        return fresh

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        """Decorate a function (sync, async, generator, async generator): each call is a span
        whose input is the call's arguments and whose output is its result."""
        if not callable(func):
            raise TypeError(f"{type(self).__name__.lower()}(...) decorates a function, not {type(func).__name__}")
        label = self._label or str(getattr(func, "__qualname__", None) or getattr(func, "__name__", self.name))
        make, pending = self._copy, self._pending
        record_arguments = self._input is MISSING and (pending is None or pending[1] is not False)

        def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Span:
            span = make()
            span.name = label
            if record_arguments:
                span._input = arguments(func, args, kwargs)
            return span.__enter__()

        return instrument(func, start)

    def end(self, error: BaseException | None = None) -> None:
        """End the span now, as leaving its ``with`` block would. Never raises."""
        self.__exit__(None if error is None else type(error), error, None)

    # -- what users call ---------------------------------------------------------------

    @property
    def trace_id(self) -> str:
        return self._trace.trace_id if self._start is not None else ""

    @property
    def span_id(self) -> str:
        # Made on first use: a leaf span's id is only needed when its event is built, which
        # keeps a random id off the hot path of entering and leaving it.
        span_id = self._id
        if span_id is None:
            span_id = self._id = _ids.uuid4()
        return span_id

    def is_recording(self) -> bool:
        """True from start to end; a span that never started (tracing disabled) or a no-op
        span never records."""
        return self._start is not None and self._latency is None

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} trace={self.trace_id or '-'}>"

    def update(
        self,
        output: Any = MISSING,
        input: Any = MISSING,
        properties: Mapping[str, Any] | None = None,
        error: BaseException | str | None = None,
        name: str | None = None,
    ) -> None:
        """Record output, input, custom properties, an error or a new name. Never raises.

        Pass them by keyword; the parameters are not keyword-only because CPython fills
        missing keyword-only defaults one dictionary lookup at a time, on a hot path."""
        try:
            if self._start is None or self._latency is not None:
                logger.debug("update() on span %r that is not running ignored", self.name)
                return
            trace = self._trace
            if output is not MISSING and trace.record_output:
                self._output, is_marshalled = captured(output, trace.redact)
                self._marshalled = self._marshalled & ~OUTPUT_MARSHALLED | (OUTPUT_MARSHALLED if is_marshalled else 0)
            if input is not MISSING and trace.record_input:
                self._input, is_marshalled = captured(input, trace.redact)
                self._marshalled = self._marshalled & ~INPUT_MARSHALLED | (INPUT_MARSHALLED if is_marshalled else 0)
            if properties:
                converted = trace.snapshot(dict(properties))
                if self._properties is None:
                    self._properties = converted
                else:
                    self._properties.update(converted)
            if error is not None:
                self._error = describe_error(error)
            if name:
                self.name = str(name)
        except Exception:
            logger.exception("span update failed; the span keeps what it had")

    # -- what the batch hands over -----------------------------------------------------------

    def _record(self) -> tuple[Any, ...]:
        """The finished span as a compact record (``posthog_lambda_contract.records``)."""
        start = self._start or 0.0
        latency = self._latency or 0.0
        return self._build(int(self._trace.wall_at(start + latency) * 1e6), int(latency * 1e9))

    def _running_record(self) -> tuple[Any, ...]:
        """The running span's record, for an announcement: ended when it started, latency
        ``RUNNING``, and its id (made now: its record, when it ends, carries the same)."""
        self.span_id  # noqa: B018
        return self._build(int(self._trace.wall_at(self._start or 0.0) * 1e6), RUNNING)

    def _build(self, end_us: int, latency_ns: int) -> tuple[Any, ...]:
        # Positions as the contract's records define them; written out, as this runs once per span.
        record: list[Any] = [
            self.kind,
            self.name,
            self.parent_id,
            end_us,
            latency_ns,
            self._id,
            self._error,
            self._properties,
            self._library_fields(),
            0,
        ]
        value = self._input
        if value is not MISSING:
            record[MASK] = HAS_INPUT | (self._marshalled & INPUT_MARSHALLED)
            record.append(value)
        value = self._output_value()
        if value is not MISSING:
            if len(record) == INPUT:
                record.append(None)
            record[MASK] |= HAS_OUTPUT | (self._marshalled & OUTPUT_MARSHALLED)
            record.append(value)
        return tuple(record)

    def _library_fields(self) -> dict[str, Any] | None:
        """``$ai_*`` fields the library sets beyond the common ones."""
        return None

    def _output_value(self) -> Any:
        return self._output


def describe_error(error: BaseException | str) -> str:
    """``Type: message`` for an exception (its own __str__ may raise: then the type alone)."""
    if isinstance(error, BaseException):
        try:
            message = str(error)
        except Exception:
            message = ""
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return str(error)


_MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _count(field: str, value: Any) -> int | None:
    """A token count or status code PostHog can sum; anything else is dropped, counted, logged."""
    if type(value) is int:
        return value
    try:
        number = float(value)
        if not isinstance(value, bool) and number.is_integer():
            return int(number)
    except (TypeError, ValueError, ArithmeticError):
        pass
    record_drop("invalid_generation_field", 1, f"{field}={value!r:.80}")
    return None


def _usd(field: str, value: Any) -> float | None:
    """A cost in USD as a finite float; anything else is dropped, counted and logged."""
    try:
        number = float(value)
        if not isinstance(value, bool) and number - number == 0:  # finite
            return number
    except (TypeError, ValueError, ArithmeticError):
        pass
    record_drop("invalid_generation_field", 1, f"{field}={value!r:.80}")
    return None


class Generation(Span):
    """One call to an LLM, emitted as ``$ai_generation``."""

    kind: ClassVar[str] = "$ai_generation"
    default_name: ClassVar[str] = "generation"
    __slots__ = ("_chunks", "_fields", "_first_token", "_known")

    def __init__(
        self,
        name: str | None = None,
        input: Any = MISSING,
        fields: dict[str, Any] | None = None,
        capture_input: bool | None = None,
    ) -> None:
        super().__init__(name, input, fields, capture_input)
        self._fields: dict[str, Any] | None = None
        self._known: dict[str, Any] | None = None
        """Model, provider, URL given to generation(): copied into the fields of each run."""
        self._first_token: float | None = None
        self._chunks: list[str] | None = None

    def _describe(self, model: str | None, provider: str | None, base_url: str | None) -> Self:
        """Set what generation() was told about the call: plain text, so it is set now rather
        than through update() when the generation starts."""
        known = {}
        if model is not None:
            known["$ai_model"] = str(model)
        if provider is not None:
            known["$ai_provider"] = str(provider)
        if base_url is not None:
            known["$ai_base_url"] = str(base_url)
        if known:
            self._known = known
            self._fields = dict(known)
        return self

    def _copy(self) -> Self:
        fresh = super()._copy()
        if self._known:
            fresh._known = self._known
            fresh._fields = dict(self._known)
        return fresh

    def _set(self, prop: str, value: Any) -> None:
        if value is None:
            return
        if self._fields is None:
            self._fields = {}
        self._fields[prop] = value

    def chunk(self, delta: Any = None) -> None:
        """Record one streamed chunk: the first sets the time to first token; text deltas are
        joined into the output unless an output is given explicitly. Never raises."""
        try:
            if self._start is None or self._latency is not None:
                return
            if self._first_token is None:
                self._first_token = _perf() - self._start
                self._set("$ai_stream", True)
            if isinstance(delta, str) and self._trace.record_output:
                if self._chunks is None:
                    self._chunks = []
                self._chunks.append(delta)
        except Exception:
            logger.exception("recording a chunk failed")

    def update(
        self,
        output: Any = MISSING,
        input: Any = MISSING,
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
        """Record what the model call used and returned (pass everything by keyword). Never raises."""
        if self._start is None or self._latency is not None:
            logger.debug("update() on generation %r that is not running ignored", self.name)
            return
        super().update(output, input, properties, error, name)
        try:
            if model is not None:
                self._set("$ai_model", str(model))
            if provider is not None:
                self._set("$ai_provider", str(provider))
            if input_tokens is not None:
                self._set("$ai_input_tokens", _count("input_tokens", input_tokens))
            if output_tokens is not None:
                self._set("$ai_output_tokens", _count("output_tokens", output_tokens))
            if cache_read_input_tokens is not None:
                self._set("$ai_cache_read_input_tokens", _count("cache_read_input_tokens", cache_read_input_tokens))
            if cache_creation_input_tokens is not None:
                count = _count("cache_creation_input_tokens", cache_creation_input_tokens)
                self._set("$ai_cache_creation_input_tokens", count)
            if reasoning_tokens is not None:
                self._set("$ai_reasoning_tokens", _count("reasoning_tokens", reasoning_tokens))
            if http_status is not None:
                self._set("$ai_http_status", _count("http_status", http_status))
            if input_cost_usd is not None:
                self._set("$ai_input_cost_usd", _usd("input_cost_usd", input_cost_usd))
            if output_cost_usd is not None:
                self._set("$ai_output_cost_usd", _usd("output_cost_usd", output_cost_usd))
            if total_cost_usd is not None:
                self._set("$ai_total_cost_usd", _usd("total_cost_usd", total_cost_usd))
            if stop_reason is not None:
                self._set("$ai_stop_reason", str(stop_reason))
            if base_url is not None:
                self._set("$ai_base_url", str(base_url))
            if model_parameters is not None:
                self._set_model_parameters(model_parameters)
            if tools is not None:
                self._set("$ai_tools", self._trace.snapshot(tools))
        except Exception:
            logger.exception("generation update failed; the generation keeps what it had")

    def _set_model_parameters(self, params: Mapping[str, Any]) -> None:
        converted = self._trace.snapshot(dict(params))
        self._set("$ai_model_parameters", converted)
        self._set("$ai_temperature", converted.get("temperature"))
        for key in _MAX_TOKEN_KEYS:
            if converted.get(key) is not None:
                self._set("$ai_max_tokens", converted[key])
                break
        if "stream" in converted and (self._fields is None or "$ai_stream" not in self._fields):
            self._set("$ai_stream", bool(converted["stream"]))

    def _output_value(self) -> Any:
        if self._output is MISSING and self._chunks:
            return "".join(self._chunks)
        return self._output

    def _library_fields(self) -> dict[str, Any] | None:
        if self._first_token is None and not self._fields:
            return None
        fields = dict(self._fields) if self._fields else {}
        if self._first_token is not None:
            fields["$ai_time_to_first_token"] = self._first_token
        return fields


class Embedding(Generation):
    """One call to an embedding model, emitted as ``$ai_embedding``."""

    kind: ClassVar[str] = "$ai_embedding"
    default_name: ClassVar[str] = "embedding"
    __slots__ = ()


class TraceSpan(Span):
    """The root of a handler's invocation: emitted as ``$ai_trace``, its id the trace id; or, in a
    trace continued from another function, with ``parent`` (the span it nests under, or the trace
    id for a top-level one): a span of its own id, which the record's parent makes an ``$ai_span``
    (``records.expand``) while everything that treats an invocation's root alike still can."""

    kind: ClassVar[str] = "$ai_trace"
    default_name: ClassVar[str] = "trace"
    __slots__ = ("lambda_properties",)

    def __init__(self, name: str, trace: Trace, event: Any, parent: str | None = None) -> None:
        super().__init__(name, event)
        self.lambda_properties: dict[str, Any] | None = None
        self._trace = trace
        self._id = _ids.uuid4() if parent else trace.trace_id
        self._owns_trace = True
        self.parent_id = parent or ""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if on_managed_instances() and self.lambda_properties is not None and self._latency is None:
            try:
                self._check_deadline()
            except Exception:
                logger.exception("checking trace %r against its deadline failed", self.name)
        super().__exit__(exc_type, exc, tb)

    def _check_deadline(self) -> None:
        # Lambda Managed Instances does not stop a handler at its timeout: the invocation has
        # failed, the process lives on, and the handler may return long after. Its trace must say
        # so, as the extension's does for an invocation cut short. (Elsewhere Lambda ends the
        # process at the deadline: the check is made only where it can be true.)
        deadline_ms = self._trace.deadline_ms
        now = time.time()
        if not deadline_ms or now * 1000 <= deadline_ms or self._start is None:
            return
        assert self.lambda_properties is not None
        started = now - (_perf() - self._start)
        self.lambda_properties["lambda_status"] = "timeout"
        if self._error is None:
            self._error = (
                "Lambda status timeout: the invocation did not finish within its "
                f"{round(deadline_ms / 1000 - started, 1):g} s timeout"
            )

    def _record_error(self, error: BaseException) -> None:
        from ._exceptions import exception_properties

        super()._record_error(error)
        trace = self._trace
        trace.batch.add(trace.event("$exception", exception_properties(error, trace.trace_id)))

    def _library_fields(self) -> dict[str, Any] | None:
        return self.lambda_properties or None
