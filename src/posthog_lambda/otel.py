"""OpenTelemetry GenAI spans to PostHog through the extension: one span processor.

    from opentelemetry.sdk.trace import TracerProvider
    from posthog_lambda.otel import PostHogLambdaSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(PostHogLambdaSpanProcessor())

Spans from OpenTelemetry's own instrumentations (``opentelemetry-instrumentation-openai-v2``),
OpenLLMetry's, OpenInference's or a framework's leave the process as posthog-lambda's own spans
do: as compact records over the extension's socket (no protobuf, no HTTP, no flush), and the
extension makes their ``$ai_generation``, ``$ai_embedding`` and ``$ai_span`` events
(``posthog_lambda_contract.genai``). Inside a ``@posthog_traced`` handler they join its trace,
under the span that was current when they started, and take its user, session, groups,
privacy mode and redaction; outside one, each OpenTelemetry trace is a trace of its own. Spans
that are not GenAI are left out unless ``all_spans=True``.

On SnapStart the SDK's ids would repeat: its id generator draws from the ``random`` module,
whose state every environment restored from the snapshot copies, so each would make the same
trace and span ids in the same order. The processor registers ``random.seed()`` (fresh bits
from the kernel) to run after each restore, as AWS advises for random generators.

Needs ``opentelemetry-sdk`` (``pip install posthog-lambda[otel]``); nothing else of
posthog-lambda imports it.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import StatusCode

from posthog_lambda_contract.environment import POSTHOG_LAMBDA_OTEL_ALL_SPANS, on_snap_start
from posthog_lambda_contract.genai import RECORDS_INPUT, RECORDS_OUTPUT, SCOPE_NAME, SPAN, is_genai

from . import _config
from ._config import env_flag
from ._context import current
from ._log import logger
from ._processor import export_records
from ._restore import HOOKS_MODULE
from ._trace import Trace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace import Span as OtelSpan

    from ._spans import Span

__all__ = ["PostHogLambdaSpanProcessor"]

_ERROR = StatusCode.ERROR


class _Open:
    """What a started span's end needs from its start: the posthog-lambda span current then,
    its OpenTelemetry parent (in this process), and whether it is exported itself."""

    __slots__ = ("exported", "host", "parent")

    def __init__(self, host: Span | None, parent: int | None, exported: bool) -> None:
        self.host = host
        self.parent = parent
        self.exported = exported


class PostHogLambdaSpanProcessor(SpanProcessor):
    """Sends finished GenAI spans to PostHog through posthog-lambda's extension.

    ``all_spans``: send every span (as ``$ai_span`` when it is not GenAI), not only GenAI ones;
    by default ``POSTHOG_LAMBDA_OTEL_ALL_SPANS`` says (false when unset).
    ``max_open``: how many started, unended spans it remembers (for nesting); past that the
    oldest is forgotten, and a child of it is nested under the posthog-lambda span instead.
    """

    def __init__(self, *, all_spans: bool | None = None, max_open: int = 10_000) -> None:
        self.all_spans = env_flag(POSTHOG_LAMBDA_OTEL_ALL_SPANS, False) if all_spans is None else all_spans
        self.max_open = max_open
        self._open: dict[int, _Open] = {}
        _reseed_after_restore()

    def on_start(self, span: OtelSpan, parent_context: Context | None = None) -> None:
        try:
            parent = span.parent
            exported = self.all_spans or is_genai(span.attributes or {})
            opened = self._open
            opened[span.context.span_id] = _Open(
                current.get(), parent.span_id if parent is not None and not parent.is_remote else None, exported
            )
            if len(opened) > self.max_open:
                opened.pop(next(iter(opened)), None)
        except Exception:
            logger.exception("posthog_lambda.otel: remembering span %r failed", getattr(span, "name", None))

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._end(span)
        except Exception:
            logger.exception("posthog_lambda.otel: sending span %r failed", getattr(span, "name", None))

    def _end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        opened = self._open.pop(context.span_id, None)
        attributes = _copied(span.attributes)
        if not (self.all_spans or is_genai(attributes)):
            return
        host = opened.host if opened is not None else current.get()
        parent_id = self._parent(opened, host)
        if host is not None:
            trace = host._trace
            if parent_id is None:
                parent_id = host._id or host.span_id
        else:
            config = _config.current or _config.get_config()
            if not config.enabled:
                return
            # Its own trace, under OpenTelemetry's trace id, with the configured user and settings.
            trace = Trace(config, trace_id=format(context.trace_id, "032x"), detached=True)
        record = _record(span, attributes, context.span_id, parent_id, trace.record_input, trace.record_output)
        if host is not None:
            trace.batch.add(record)
        else:
            export_records(trace.header(), [record])

    def _parent(self, opened: _Open | None, host: Span | None) -> str | None:
        """The nearest exported OpenTelemetry ancestor still open, if no posthog-lambda span was
        entered between it and this span (then that one is nearer)."""
        if opened is None:
            return None
        ancestor = opened.parent
        while ancestor is not None:
            found = self._open.get(ancestor)
            if found is None:
                return None
            if found.exported:
                return format(ancestor, "016x") if found.host is host else None
            ancestor = found.parent
        return None

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is held here: spans leave with their trace, or at once outside one."""
        return True


_reseeding = False


def _reseed_after_restore() -> None:
    """On SnapStart, have ``random`` (the SDK's id generator's source) reseeded after each restore;
    once per process."""
    global _reseeding
    if _reseeding or not on_snap_start(os.environ):
        return
    _reseeding = True
    try:
        import random
        from importlib import import_module

        import_module(HOOKS_MODULE).register_after_restore(random.seed)
    except Exception as exc:
        logger.debug("posthog_lambda.otel: cannot reseed random after a restore (%s)", exc)


_resource: tuple[Any, dict[str, Any]] = (None, {})
"""The last resource seen and its ``posthog.*`` attributes (a provider has one resource)."""


def _identity(resource: Any) -> dict[str, Any]:
    """``resource``'s ``posthog.*`` attributes (a distinct id, a session), which each span takes."""
    global _resource
    seen, found = _resource
    if resource is not seen:
        attributes = resource.attributes if resource is not None else {}
        found = {key: value for key, value in attributes.items() if key.startswith("posthog.")}
        _resource = (resource, found)
    return found


def _copied(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A finished span's attributes as a dict of their own: the SDK's mapping copies itself at C
    speed (``dict()`` would go through its lock per key)."""
    if not attributes:
        return {}
    copy = getattr(attributes, "copy", None)
    copied = copy() if copy is not None else None
    return copied if type(copied) is dict else dict(attributes)


def _record(
    span: ReadableSpan, attributes: dict[str, Any], span_id: int, parent_id: str | None, inputs: bool, outputs: bool
) -> tuple[Any, ...]:
    start_ns = span.start_time or 0
    end_ns = span.end_time or start_ns
    status = span.status
    error = (status.description or "") if status is not None and status.status_code is _ERROR else None
    for key, value in _identity(span.resource).items():
        attributes.setdefault(key, value)
    scope = span.instrumentation_scope
    if scope is not None and scope.name:
        # Which instrumentation made it names its framework (genai.framework), as OTLP's scope does.
        attributes.setdefault(SCOPE_NAME, scope.name)
    events = []
    chunked = False
    for event in span.events:
        name = event.name
        if name.endswith(".chunk"):
            # Only the first streamed chunk says anything (time to first token).
            if chunked:
                continue
            chunked = True
        events.append((name, event.timestamp // 1000, dict(event.attributes) if event.attributes else None))
    return (
        SPAN,
        span.name,
        parent_id,
        end_ns // 1000,
        end_ns - start_ns,
        format(span_id, "016x"),
        error,
        (RECORDS_INPUT if inputs else 0) | (RECORDS_OUTPUT if outputs else 0),
        attributes,
        tuple(events),
    )
