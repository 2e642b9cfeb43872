"""A finished span as a compact record, and the PostHog event it stands for.

Making an event (two random ids, a timestamp, a dozen properties with a trace id repeated in
each) and serializing it costs several times what the span itself did, and in a traced handler
it happens as the handler returns, on the response path. So spans leave the handler's process
as records (short keys, only what is set, no id the extension can make itself) with one header
per trace, and the extension turns them into events with ``expand``, the same function the
library uses for every other exporter: both sides make the same events.

A record is immutable once made (a tuple; JSON makes it a list on the way): what an exporter
receives can never be changed by the span or the user afterwards.
"""

from __future__ import annotations

from . import ids
from .events import TRACE_ID, make_event, redact_set
from .jsonable import unmarshalled
from .schema import LAMBDA_ROOT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from .schema import Event

# A record is a tuple, by position (JSON writes a list of numbers much faster than an object
# of floats): kind, name, parent id, end (Unix microseconds), latency (nanoseconds), then
# optional items, None when absent: the span's id (when something already used it: a child,
# the user; else the reader makes one), error, user properties, ``$ai_*`` fields the library
# sets beyond the common ones (model, tokens, Lambda figures...), and input and output, each
# present only when the mask says so (None is a legitimate input or output), each as a value or,
# when the mask says so, as the bytes ``jsonable.captured`` marshalled.
KIND, NAME, PARENT, END_US, LATENCY_NS, ID, ERROR, PROPERTIES, FIELDS, MASK, INPUT, OUTPUT = range(12)
HAS_INPUT = 1
HAS_OUTPUT = 2
INPUT_MARSHALLED = 4
"""With HAS_INPUT: the input is the bytes ``jsonable.captured`` marshalled, turned into JSON-safe,
redacted data (the header's ``REDACT``) when the record is expanded."""
OUTPUT_MARSHALLED = 8
OTEL_SPAN = "otel"
"""The kind of an OpenTelemetry span's record (``genai.SPAN``, which cannot import this module:
it is imported by it), expanded by ``genai``; what a reader tells from a handler's span."""
RUNNING = -1
"""LATENCY_NS of a span announced while it runs (START, OPEN): its END_US is when it started."""


def _messages(value: Any, role: str) -> Any:
    """PostHog renders ``[{role, content}]``; a bare string becomes one message."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [value]
    return value


def _value(header: dict[str, Any], slot: Any, marshalled: int) -> Any:
    if not marshalled:
        return slot
    if not isinstance(slot, bytes):
        raise TypeError(f"a marshalled value that is not bytes: {type(slot).__name__}")
    return unmarshalled(slot, redact_set(header))


def expand(header: dict[str, Any], record: Sequence[Any]) -> Event:
    """The event ``record`` stands for. Precedence, lowest first: the trace's shared properties,
    the span's custom properties, what the library sets (a user's property never overwrites a
    ``$ai_*`` field). Raises KeyError, IndexError, TypeError or ValueError for a malformed one."""
    if record[KIND] == OTEL_SPAN:  # genai's module loads when the first such record comes
        from . import genai

        return genai.expand(header, record)
    kind, name, parent, end_us, latency_ns, span_id, error, user, fields, mask = record[:10]
    if not isinstance(kind, str) or not isinstance(end_us, int) or not isinstance(latency_ns, int):
        raise TypeError(f"not a span record: {record!r:.80}")
    trace_id: str = header[TRACE_ID]
    library: dict[str, Any] = {"$ai_trace_id": trace_id}
    if kind == "$ai_trace" and parent:
        # The root of an invocation that continues another function's trace: a span of it.
        kind = "$ai_span"
        library[LAMBDA_ROOT] = True
    if kind != "$ai_trace":
        span_id = span_id or ids.uuid4()
        library["$ai_span_id"] = span_id
        library["$ai_parent_id"] = parent
    library["$ai_span_name"] = name
    library["$ai_latency"] = latency_ns / 1e9
    library["$ai_is_error"] = error is not None
    if error is not None:
        library["$ai_error"] = error
    if kind == "$ai_generation" or kind == "$ai_embedding":
        if kind == "$ai_generation":
            library["$ai_generation_id"] = span_id
        if mask & HAS_INPUT:
            # Embedding input is a string or a list of strings, not chat messages.
            value = _value(header, record[INPUT], mask & INPUT_MARSHALLED)
            library["$ai_input"] = _messages(value, "user") if kind == "$ai_generation" else value
        if mask & HAS_OUTPUT:
            output = _value(header, record[OUTPUT], mask & OUTPUT_MARSHALLED)
            library["$ai_output_choices"] = _messages(output, "assistant")
    else:
        if mask & HAS_INPUT:
            library["$ai_input_state"] = _value(header, record[INPUT], mask & INPUT_MARSHALLED)
        if mask & HAS_OUTPUT:
            library["$ai_output_state"] = _value(header, record[OUTPUT], mask & OUTPUT_MARSHALLED)
    if fields:
        library.update(fields)
        if kind == "$ai_generation" and ("$ai_input_tokens" in fields or "$ai_output_tokens" in fields):
            library.setdefault("$ai_tokens_source", "passthrough")  # the user's counts, not an SDK's
    return make_event(kind, header, library, user, end_us / 1e6)


def cut_short(record: Sequence[Any], ended: float, error: str, fields: dict[str, Any]) -> tuple[Any, ...]:
    """A running span's record (``RUNNING``) completed as failed: ended at ``ended`` (Unix
    seconds), ``error`` its error, ``fields`` added to what the library set."""
    started_us = record[END_US]
    if not isinstance(started_us, int):
        raise TypeError(f"not a span record: {record!r:.80}")
    ended_us = max(started_us, int(ended * 1e6))
    out = list(record)
    out[END_US] = ended_us
    out[LATENCY_NS] = (ended_us - started_us) * 1000
    out[ERROR] = error
    out[FIELDS] = {**(record[FIELDS] or {}), **fields}
    return tuple(out)
