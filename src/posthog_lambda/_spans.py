"""Spans, generations, embeddings and the trace they belong to.

Entering and leaving a span is the hot path (a handler may open thousands), so it only
records times and already-converted values; ids are made when first needed and the PostHog
event is built once, when the trace is handed over.

A ``Span`` is also its own context manager and decorator: ``span("x")`` returns a span that
starts when entered. Entering the same object again (or decorating a function with it) starts
a new span each time, from the same description.
"""

from __future__ import annotations

import time
from _thread import allocate_lock

from posthog_lambda_contract import ids as _ids
from posthog_lambda_contract.events import (
    ANONYMOUS,
    COMMON,
    DISTINCT_ID,
    GROUPS,
    MAX_EVENT_BYTES,
    PRIVACY,
    SESSION_ID,
    TRACE_ID,
    make_event,
)
from posthog_lambda_contract.records import FIELDS, HAS_INPUT, HAS_OUTPUT, INPUT, MASK

from . import _config
from ._context import current, deactivate
from ._jsonable import SCALARS, to_jsonable
from ._log import logger, record_drop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextvars import Token
    from types import TracebackType
    from typing import Any, ClassVar, Self, TypeAlias, TypeVar

    from ._config import Config
    from ._types import Event

    F = TypeVar("F", bound=Callable[..., Any])
    Pending = tuple["dict[str, Any] | None", "bool | None"]
    Item: TypeAlias = "Span | RawEvent"
    """What a trace's buffer holds."""


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""Stands for "not given", since None is a legitimate input or output."""

_perf = time.perf_counter
_wall = time.time

HANDOFF_AT = 64
"""Finished spans a streaming trace collects before handing them over mid-invocation."""
HANDOFF_INTERVAL_S = 0.2
"""...or the longest a finished span waits before being handed over mid-invocation. An
invocation still running this long after it began is also announced to the extension then
(START, with the spans running at that moment), so that a timeout or a crash from then on
can be reported as a failed trace; shorter invocations never pay for announcing themselves."""


class Trace:
    """What all events of one trace share, and the buffer they wait in until the trace ends.

    ``detached``: only describes events that wait in another trace's buffer (never handed off
    on its own, so never watched by the hand-off ticker)."""

    __slots__ = (
        "_announce_at",
        "_announced",
        "_closed",
        "_due",
        "_handoff_at",
        "_header",
        "_items",
        "_lock",
        "_started",
        "_taken",
        "_wall0",
        "anonymous",
        "common",
        "config",
        "deadline_ms",
        "distinct_id",
        "groups",
        "privacy_mode",
        "record_input",
        "record_output",
        "redact",
        "request_id",
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
        detached: bool = False,
    ) -> None:
        self.config = config
        self.trace_id = trace_id or _ids.uuid7()
        self.distinct_id = distinct_id or config.default_distinct_id or self.trace_id
        # PostHog's own SDKs: without a known user, the trace id stands in and no person
        # profile is made, rather than one fake person that merges everyone.
        self.anonymous = not (distinct_id or config.default_distinct_id)
        self.session_id = session_id
        self.privacy_mode = config.privacy_mode if privacy_mode is None else privacy_mode
        # Privacy mode means inputs and outputs are never even captured.
        capture_input = config.capture_input if capture_input is None else capture_input
        capture_output = config.capture_output if capture_output is None else capture_output
        self.record_input = capture_input and not self.privacy_mode
        self.record_output = capture_output and not self.privacy_mode
        self.redact = config.redact_keys
        self.groups = groups
        self.common = common
        self._items: list[Span | RawEvent] = []
        self._taken: list[Span | RawEvent] = []
        self._header: dict[str, Any] | None = None
        self._started: list[Span] = []
        """Spans started, some maybe ended: what a hand-off looks through for running ones."""
        self._announced = 0
        """How many of ``_started`` were running when last announced (0: not announced yet)."""
        self._closed = False
        self._lock = allocate_lock()
        # One wall-clock reading per trace; spans take their wall time from perf_counter.
        self._wall0 = _wall() - _perf()
        self.request_id: str | None = None
        """The Lambda request this trace belongs to, when a traced handler started it."""
        self.deadline_ms = 0
        """When that request times out (Unix ms)."""
        # A sink that streams gets finished spans while the handler runs, so that a timeout
        # or a crash later in the invocation cannot take them with it.
        from ._sinks import streams

        if not detached and streams():
            from ._handoff import watch

            self._handoff_at = HANDOFF_AT
            self._due = self._announce_at = _perf() + HANDOFF_INTERVAL_S
            watch(self)
        else:
            self._handoff_at = 1 << 62
            self._due = self._announce_at = float("inf")

    def header(self) -> dict[str, Any]:
        """What every event of this trace shares (``_events``' header keys), made once."""
        header = self._header
        if header is None:
            header = self._header = {
                TRACE_ID: self.trace_id,
                DISTINCT_ID: self.distinct_id,
                ANONYMOUS: self.anonymous,
                SESSION_ID: self.session_id,
                GROUPS: self.groups,
                PRIVACY: self.privacy_mode,
                COMMON: self.common,
                MAX_EVENT_BYTES: self.config.max_event_bytes,
            }
        return header

    def wall_at(self, perf: float) -> float:
        """The wall-clock time (Unix seconds) of a perf_counter() reading."""
        return self._wall0 + perf

    def capture(self, value: Any) -> Any:
        return to_jsonable(value, self.redact)

    def add(self, item: Span | RawEvent) -> None:
        # No lock on this path: under the GIL an append is atomic, and close() takes an
        # atomic snapshot. Only an add that sees the trace closed after appending has to find
        # out, under the lock, whether the snapshot got its item (settle).
        if not self._closed:
            self._items.append(item)
            if not self._closed:
                return
        self.settle(item)

    def settle(self, item: Span | RawEvent) -> None:
        """``item`` was added while or after the trace closed: make sure it is sent once."""
        with self._lock:
            if any(taken is item for taken in self._taken):
                return
        # Ended after its trace was handed over (a thread that outlived the handler): send
        # it on its own rather than lose it.
        from ._sinks import deliver

        logger.debug("%s ended after its trace %s was flushed; sending it alone", item.kind, self.trace_id)
        deliver([item.to_event()])

    @property
    def closed(self) -> bool:
        return self._closed

    def due(self, now: float) -> bool:
        """Whether the ticker should hand over now: finished spans or an announcement wait."""
        if now < self._due:
            return False
        # Finished spans to hand over, or (in a handler's trace) spans started since the last
        # announcement, or the invocation itself not announced yet.
        return bool(self._items) or (self.request_id is not None and len(self._started) != self._announced)

    def hand_off(self) -> None:
        """Send what has finished so far, without closing the trace; in a handler's trace,
        also announce the invocation and the spans still running (once each)."""
        with self._lock:
            if self._closed:
                return
            count = len(self._items)
            batch = self._items[:count]
            # Atomic under the GIL: spans appended meanwhile stay for the next hand-off.
            del self._items[:count]
            now = _perf()
            self._due = now + HANDOFF_INTERVAL_S
            running = None
            if self.request_id is None:
                del self._started[:]  # only a handler's invocation is announced
            elif now >= self._announce_at:
                running = self._running()
        from ._sinks import deliver_trace

        deliver_trace(self, batch, running=running)

    def _running(self) -> Running:
        """What the extension needs to report this invocation as failed if it never ends: the
        ``$ai_trace`` as it would be sent (first time only) and each span running now, not
        yet announced, as its event would be; the extension fills in the error and latency."""
        count = len(self._started)
        started = self._started[:count]
        del self._started[:count]
        running = [span for span in started if span._latency is None]
        self._started.extend(running)  # ended spans need no more looking at
        trace_event = None
        opened: list[Event] = []
        for span in running:
            if span._announced:
                continue
            span._announced = True
            span.span_id  # noqa: B018  # made now: its event, when it ends, must carry the same id
            event = span.to_event()
            if span._owns_trace:
                trace_event = event
            else:
                opened.append(event)
        first = not self._announced
        self._announced = len(running) or -1
        return Running(self.request_id or "", self.trace_id, self.deadline_ms, first, trace_event, opened)

    def close(self) -> list[Span | RawEvent]:
        with self._lock:
            self._closed = True
            self._taken = list(self._items)
            self._items = []
            self._started = []
        if self._due != float("inf"):
            from ._handoff import unwatch

            unwatch(self)
        return self._taken


class Running:
    """A running invocation's announcement (see ``Trace.hand_off``)."""

    __slots__ = ("deadline_ms", "first", "opened", "request_id", "trace_event", "trace_id")

    def __init__(
        self,
        request_id: str,
        trace_id: str,
        deadline_ms: int,
        first: bool,
        trace_event: Event | None,
        opened: list[Event],
    ) -> None:
        self.request_id = request_id
        self.trace_id = trace_id
        self.deadline_ms = deadline_ms
        self.first = first
        self.trace_event = trace_event
        self.opened = opened


class RawEvent:
    """An event that is not a span (feedback, metric, exception) waiting in a trace's buffer."""

    __slots__ = ("kind", "properties", "trace", "wall")

    def __init__(self, kind: str, trace: Trace, properties: dict[str, Any]) -> None:
        self.kind = kind
        self.trace = trace
        self.properties = properties
        self.wall = _wall()

    def to_event(self) -> Event:
        return make_event(self.kind, self.trace.header(), self.properties, None, self.wall)


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
    _announced: bool = False
    """Told to the extension as running (see ``Trace.hand_off``)."""

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
                if parent is not None and not parent._trace._closed:
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
            trace._started.append(self)
            value = self._input
            if value is not MISSING:
                if not trace.record_input:
                    self._input = MISSING
                elif type(value) not in SCALARS:
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
            trace = self._trace
            # Trace.add's lock-free path, written out: this runs once per span.
            if not trace._closed:
                items = trace._items
                items.append(self)
                if not trace._closed:
                    if self._owns_trace:
                        from ._sinks import deliver_trace

                        request = trace.request_id
                        ended = (request, trace.trace_id) if request else None
                        deliver_trace(trace, trace.close(), ended)
                    elif len(items) >= trace._handoff_at or now >= trace._due:
                        trace.hand_off()
                    return
            trace.settle(self)
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
        from ._decorate import arguments, instrument

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

    @property
    def trace(self) -> Trace:
        return self._trace

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
                self._output = output if type(output) in SCALARS else to_jsonable(output, trace.redact)
            if input is not MISSING and trace.record_input:
                self._input = to_jsonable(input, trace.redact)
            if properties:
                converted = trace.capture(dict(properties))
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

    def set_input(self, value: Any) -> None:
        """Record the input of a running span (same as ``update(input=...)``)."""
        self.update(input=value)

    def set_output(self, value: Any) -> None:
        """Record the output of a running span (same as ``update(output=...)``)."""
        self.update(output=value)

    # -- turning into an event -------------------------------------------------------------

    def record(self) -> list[Any]:
        """The finished span as a compact record (``_records``): what leaves the handler."""
        start = self._start or 0.0
        latency = self._latency or 0.0
        # Positions as _records defines them; written out, as this runs once per span.
        record: list[Any] = [
            self.kind,
            self.name,
            self.parent_id,
            int(self._trace.wall_at(start + latency) * 1e6),
            int(latency * 1e9),
            self._id,
            self._error,
            self._properties,
            None,
            0,
        ]
        value = self._input
        if value is not MISSING:
            record[MASK] = HAS_INPUT
            record.append(value)
        value = self._output
        if value is not MISSING:
            if len(record) == INPUT:
                record.append(None)
            record[MASK] |= HAS_OUTPUT
            record.append(value)
        return record

    def to_event(self) -> Event:
        from posthog_lambda_contract.records import expand

        return expand(self._trace.header(), self.record())


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

    def describe(self, model: str | None, provider: str | None, base_url: str | None) -> Self:
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
                self._set("$ai_tools", self._trace.capture(tools))
        except Exception:
            logger.exception("generation update failed; the generation keeps what it had")

    def _set_model_parameters(self, params: Mapping[str, Any]) -> None:
        converted = self._trace.capture(dict(params))
        self._set("$ai_model_parameters", converted)
        self._set("$ai_temperature", converted.get("temperature"))
        for key in _MAX_TOKEN_KEYS:
            if converted.get(key) is not None:
                self._set("$ai_max_tokens", converted[key])
                break
        if "stream" in converted and (self._fields is None or "$ai_stream" not in self._fields):
            self._set("$ai_stream", bool(converted["stream"]))

    def record(self) -> list[Any]:
        record = super().record()
        if not record[MASK] & HAS_OUTPUT and self._chunks:
            if len(record) == INPUT:
                record.append(None)
            record[MASK] |= HAS_OUTPUT
            record.append("".join(self._chunks))
        if self._first_token is not None or self._fields:
            fields = dict(self._fields) if self._fields else {}
            if self._first_token is not None:
                fields["$ai_time_to_first_token"] = self._first_token
            record[FIELDS] = fields
        return record


class Embedding(Generation):
    """One call to an embedding model, emitted as ``$ai_embedding``."""

    kind: ClassVar[str] = "$ai_embedding"
    default_name: ClassVar[str] = "embedding"
    __slots__ = ()


class TraceSpan(Span):
    """The root of a handler's trace: emitted as ``$ai_trace``; its id is the trace id."""

    kind: ClassVar[str] = "$ai_trace"
    default_name: ClassVar[str] = "trace"
    __slots__ = ("lambda_properties",)

    def __init__(self, name: str, trace: Trace, event: Any) -> None:
        super().__init__(name, event)
        self.lambda_properties: dict[str, Any] | None = None
        self._trace = trace
        self._id = trace.trace_id
        self._owns_trace = True
        self.parent_id = ""

    def _record_error(self, error: BaseException) -> None:
        from ._exceptions import exception_properties

        super()._record_error(error)
        self._trace.add(RawEvent("$exception", self._trace, exception_properties(error, self._trace)))

    def record(self) -> list[Any]:
        record = super().record()
        if self.lambda_properties:
            record[FIELDS] = self.lambda_properties
        return record
