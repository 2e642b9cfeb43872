"""OTLP spans from an app's own exporter: which trace each joins, and the records they become.

A span taken over OTLP (``_otlp_server``, ``_otlp_decode``) waits here until the extension's
next flush, because two things it needs come later. First, its OpenTelemetry parent: an
exporter that sends each span as it ends (``SimpleSpanProcessor``) sends a child before its
parent, and only GenAI spans are kept (``genai.is_genai``, unless every span is asked for), so a
child is nested under its nearest kept ancestor once that is known. Second, the handler's trace
it ran in: a ``@posthog_traced`` handler's spans come as records with the invocation's END,
after the app's exporter sent its spans (``force_flush`` before returning). A span at the top of
its OpenTelemetry trace joins the trace whose innermost span ran around it (the same clock
measures both: one sandbox), under that span, with that trace's user, session, groups, privacy
mode and redaction; its descendants follow it. A span no handler's span ran around is a trace of
its own, under its OpenTelemetry trace id, with the settings the environment gives the library.

A flush takes every span that arrived before the invocation under way began (all of them, when
none is: on-demand Lambda between invocations); a span of one still running waits for it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

from posthog_lambda_contract import environment
from posthog_lambda_contract.events import ANONYMOUS, DISTINCT_ID, MAX_EVENT_BYTES, PRIVACY, REDACT, TRACE_ID
from posthog_lambda_contract.genai import RECORDS_INPUT, RECORDS_OUTPUT, SPAN, is_genai
from posthog_lambda_contract.jsonable import DEFAULT_REDACT_KEYS, redact_key_set
from posthog_lambda_contract.limits import BATCH_EVENT_LIMIT, clamp

from ._intake import HANDLER_BATCHES_KEPT
from ._otlp_decode import decode_json, decode_protobuf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from ._otlp_decode import Span

    Spans = Callable[[dict[str, Any], list[Any]], None]
    """Where finished records go, with their trace's header (``Intake.spans``)."""

MAX_REMEMBERED = 20_000
"""Span ids remembered (their parent, whether kept) for nesting spans that arrive later."""
MAX_WAITING = 20_000
"""Spans waiting for a flush; past that the oldest go at once, as traces of their own."""
CLOCK_SLACK_US = 2_000
"""How far a span may seem to start before, or end after, the span it ran in (whose time must
still hold its middle): the library reads the wall clock once per trace and perf_counter after,
OpenTelemetry reads it each time."""
MAX_ANCESTORS = 64


class Defaults:
    """What the library would use for a trace of its own, read from the same variables."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        def flag(name: str, default: bool) -> bool:
            value = environment.parse_flag(environ.get(name, ""))
            return default if value is None or not environ.get(name, "").strip() else value

        self.privacy_mode = flag(environment.POSTHOG_PRIVACY_MODE, False)
        self.record_input = flag(environment.POSTHOG_LAMBDA_CAPTURE_INPUT, True) and not self.privacy_mode
        self.record_output = flag(environment.POSTHOG_LAMBDA_CAPTURE_OUTPUT, True) and not self.privacy_mode
        self.distinct_id = environ.get(environment.POSTHOG_DEFAULT_DISTINCT_ID, "").strip() or None
        named = environment.parse_redact_keys(environ.get(environment.POSTHOG_LAMBDA_REDACT_KEYS))
        keys = redact_key_set(DEFAULT_REDACT_KEYS if named is None else named)
        self.redact = tuple(sorted(keys)) if flag(environment.POSTHOG_LAMBDA_REDACT, True) else ()
        limit = environment.parse_int(environ.get(environment.POSTHOG_LAMBDA_MAX_EVENT_BYTES))
        self.max_event_bytes = clamp(limit) if limit is not None else BATCH_EVENT_LIMIT

    def header(self, trace_id: str) -> dict[str, Any]:
        header: dict[str, Any] = {
            TRACE_ID: trace_id,
            DISTINCT_ID: self.distinct_id or trace_id,
            ANONYMOUS: self.distinct_id is None,
            PRIVACY: self.privacy_mode,
            MAX_EVENT_BYTES: self.max_event_bytes,
        }
        if self.redact:
            header[REDACT] = self.redact
        return header

    @property
    def records(self) -> int:
        return (RECORDS_INPUT if self.record_input else 0) | (RECORDS_OUTPUT if self.record_output else 0)


class Otlp:
    """Takes OTLP requests (any thread) and hands their spans on at each flush (``release``)."""

    def __init__(
        self,
        spans: Spans,
        handlers: deque[tuple[dict[str, Any], list[tuple[int, int, str]]]] | None = None,
        *,
        all_spans: bool = False,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spans = spans
        self.all_spans = all_spans
        self._environ = environ
        self._defaults: Defaults | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: deque[tuple[float, Span]] = deque()
        self._remembered: dict[str, _Known] = {}
        self._placed: dict[str, tuple[dict[str, Any], str | None]] = {}
        """Where each top span went (its trace's header, the span it joined): its descendants
        released later follow it."""
        self._handlers = deque(maxlen=HANDLER_BATCHES_KEPT) if handlers is None else handlers
        """The intake's ``handlers``: batches of handlers' spans, with their trace's header."""
        self.taken = 0
        """Spans taken over OTLP (kept or not)."""

    @property
    def defaults(self) -> Defaults:
        if self._defaults is None:
            self._defaults = Defaults(self._environ)
        return self._defaults

    # -- from the OTLP server's thread --------------------------------------------------------

    def receive(self, body: bytes, content_type: str) -> int:
        """One request's spans, decoded (``OtlpError`` if it cannot be); 0 spans refused."""
        spans = decode_json(body) if content_type == "application/json" else decode_protobuf(body)
        now = self._clock()
        overflow: list[Span] = []
        with self._lock:
            self.taken += len(spans)
            remembered = self._remembered
            for span in spans:
                kept = self.all_spans or is_genai(span.attributes)
                remembered[span.span_id] = _known(span, kept)
                if kept:
                    self._waiting.append((now, span))
            while len(remembered) > MAX_REMEMBERED:
                remembered.pop(next(iter(remembered)))
            while len(self._waiting) > MAX_WAITING:
                overflow.append(self._waiting.popleft()[1])
        if overflow:
            self._hand_on(overflow)
        return 0

    # -- at a flush -----------------------------------------------------------------------------

    def release(self, before: float | None = None) -> int:
        """Hand on the spans that arrived before ``before`` (the clock's time; None: all of them);
        how many."""
        with self._lock:
            taken: list[Span] = []
            while self._waiting and (before is None or self._waiting[0][0] < before):
                taken.append(self._waiting.popleft()[1])
        if taken:
            self._hand_on(taken)
        return len(taken)

    def _hand_on(self, spans: list[Span]) -> None:
        defaults = self.defaults
        by_header: dict[int, tuple[dict[str, Any], list[Any]]] = {}
        for span in spans:
            parent, top = self._lineage(span)
            header, joins = self._place(top)
            record = (
                SPAN,
                span.name,
                parent if parent is not None else joins,
                span.end_ns // 1000,
                span.end_ns - span.start_ns,
                span.span_id,
                span.error,
                defaults.records,
                span.attributes,
                tuple((name, at // 1000, attrs) for name, at, attrs in span.events),
            )
            by_header.setdefault(id(header), (header, []))[1].append(record)
        for header, records in by_header.values():
            self._spans(header, records)

    def _lineage(self, span: Span) -> tuple[str | None, _Known]:
        """The nearest kept ancestor's id (None if none is known), and the outermost kept span
        of the chain (the span itself when it has no kept ancestor), which places them all."""
        with self._lock:
            top = self._remembered.get(span.span_id) or _known(span, True)
            parent = None
            ancestor = span.parent_id
            for _ in range(MAX_ANCESTORS):
                known = self._remembered.get(ancestor) if ancestor is not None else None
                if known is None:
                    break
                if known.kept:
                    top = known
                    if parent is None:
                        parent = ancestor
                ancestor = known.parent
        return parent, top

    def _place(self, top: _Known) -> tuple[dict[str, Any], str | None]:
        """The header of the trace ``top``'s chain joins and the span it goes under (None: the top
        of a trace of its own): the innermost handler's span that ran around it, if any."""
        with self._lock:
            placed = self._placed.get(top.span_id)
            if placed is not None:
                return placed
            best: tuple[int, dict[str, Any], str] | None = None
            middle = (top.start_us + top.end_us) // 2
            for header, spans in list(self._handlers):  # a copy: the intake appends meanwhile
                for span_start, span_end, span_id in spans:
                    if (
                        span_start - CLOCK_SLACK_US <= top.start_us
                        and top.end_us <= span_end + CLOCK_SLACK_US
                        and span_start <= middle <= span_end
                    ):
                        width = span_end - span_start
                        if best is None or width < best[0]:
                            best = (width, header, span_id)
            # One header per trace of its own, too: its spans go to the intake together.
            placed = (self.defaults.header(top.trace_id), None) if best is None else (best[1], best[2])
            self._placed[top.span_id] = placed
            while len(self._placed) > MAX_REMEMBERED:
                self._placed.pop(next(iter(self._placed)))
            return placed


class _Known:
    """What is remembered of a span taken over OTLP, for its descendants."""

    __slots__ = ("end_us", "kept", "parent", "span_id", "start_us", "trace_id")

    def __init__(self, span_id: str, parent: str | None, kept: bool, trace_id: str, start_us: int, end_us: int) -> None:
        self.span_id = span_id
        self.parent = parent
        self.kept = kept
        self.trace_id = trace_id
        self.start_us = start_us
        self.end_us = end_us


def _known(span: Span, kept: bool) -> _Known:
    return _Known(span.span_id, span.parent_id, kept, span.trace_id, span.start_ns // 1000, span.end_ns // 1000)
