"""An OTLP/HTTP traces request (``ExportTraceServiceRequest``), protobuf or JSON, as spans.

Decoded here in pure Python, from the protobuf wire format directly (the few fields of
``opentelemetry/proto/trace/v1/trace.proto`` a span's event needs) rather than with the
``protobuf`` package: nothing compiled, so the layer stays one zip for every CPU architecture,
and nothing loaded before the first request, so the extension's start-up pays nothing for it.

Each span comes out as a ``Span``. The resource's ``posthog.*`` attributes and its
instrumentation scope's name (as ``otel.scope.name``, ``genai.SCOPE_NAME``) are added to each of
its spans' attributes (where the span has none of its own).

Anything that is not a well-formed request raises ``OtlpError``, whose message says why.
"""

from __future__ import annotations

import struct

from posthog_lambda_contract.genai import SCOPE_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATUS_ERROR = 2
MAX_DEPTH = 16
"""Key-value lists and arrays nest this deep at most (attributes are flat in practice)."""
MAX_SCOPE_NAME = 1024
"""An instrumentation scope's name is this long at most (a module's name in practice): each of
its spans carries it, and reads it for its framework."""

_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")


class OtlpError(ValueError):
    """A request that cannot be read; the message says why."""


class Span:
    """One span of a request."""

    __slots__ = ("attributes", "end_ns", "error", "events", "name", "parent_id", "span_id", "start_ns", "trace_id")

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_id: str | None,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, Any],
        events: list[tuple[str, int, dict[str, Any] | None]],
        error: str | None,
    ) -> None:
        self.trace_id = trace_id
        """Lowercase hex, as are the span's and its parent's."""
        self.span_id = span_id
        self.parent_id = parent_id
        """None at the top of its trace (in this process or not)."""
        self.name = name
        self.start_ns = start_ns
        """Unix ns, as ``end_ns``."""
        self.end_ns = end_ns
        self.attributes = attributes
        """Strings, booleans, numbers, tuples of them, dicts for key-value lists."""
        self.events = events
        """``(name, Unix ns, attributes or None)`` each."""
        self.error = error
        """None, or the status message ("" when it gave none) of a span whose status is an error."""


# -- the protobuf wire format ------------------------------------------------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise OtlpError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise OtlpError("varint longer than 10 bytes")


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of one message: a varint or fixed value
    as an int, a length-delimited one as bytes."""
    out: list[tuple[int, int, Any]] = []
    at = 0
    end = len(data)
    while at < end:
        # Keys and lengths are nearly always one byte: read those inline (decoding is all Python).
        key = data[at]
        if key < 0x80:
            at += 1
        else:
            key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OtlpError("field number 0")
        value: Any
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length = data[at] if at < end else 0x80
            if length < 0x80:
                at += 1
            else:
                length, at = _varint(data, at)
            if at + length > end:
                raise OtlpError("length-delimited field runs past its message")
            value = data[at : at + length]
            at += length
        elif wire == 1:
            if at + 8 > end:
                raise OtlpError("truncated 64-bit field")
            value = _FIXED64.unpack_from(data, at)[0]
            at += 8
        elif wire == 5:
            if at + 4 > end:
                raise OtlpError("truncated 32-bit field")
            value = _FIXED32.unpack_from(data, at)[0]
            at += 4
        else:
            raise OtlpError(f"wire type {wire} is not used by OTLP")
        out.append((number, wire, value))
    return out


def _text(value: Any, what: str) -> str:
    if not isinstance(value, bytes):
        raise OtlpError(f"{what} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise OtlpError(f"{what} is not UTF-8") from None


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _any_value(data: bytes, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise OtlpError(f"attribute values nested deeper than {MAX_DEPTH}")
    value: Any = None
    for number, wire, raw in _fields(data):
        if number == 1 and wire == 2:
            value = _text(raw, "a string value")
        elif number == 2 and wire == 0:
            value = bool(raw)
        elif number == 3 and wire == 0:
            value = _signed(raw)
        elif number == 4 and wire == 1:
            value = _DOUBLE.unpack(_FIXED64.pack(raw))[0]
        elif number == 5 and wire == 2:
            value = tuple(_any_value(item, depth + 1) for n, w, item in _fields(raw) if n == 1 and w == 2)
        elif number == 6 and wire == 2:
            value = _attributes([item for n, w, item in _fields(raw) if n == 1 and w == 2], depth + 1)
        elif number == 7 and wire == 2:
            value = raw.hex()
    return value


def _attributes(items: list[bytes], depth: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        key = None
        value: Any = None
        for number, wire, raw in _fields(item):
            if number == 1 and wire == 2:
                key = _text(raw, "an attribute key")
            elif number == 2 and wire == 2:
                value = _any_value(raw, depth)
        if key is not None:
            found[key] = value
    return found


def _hex_id(raw: Any, size: int, what: str) -> str | None:
    if not isinstance(raw, bytes):
        raise OtlpError(f"{what} is not bytes")
    if not raw:
        return None
    if len(raw) != size or not any(raw):
        raise OtlpError(f"{what} is not {size} bytes, not all zero")
    return raw.hex()


def _scope_name(name: str) -> str | None:
    if len(name) > MAX_SCOPE_NAME:
        raise OtlpError(f"an instrumentation scope name longer than {MAX_SCOPE_NAME} characters")
    return name or None


def _span(data: bytes, resource: dict[str, Any], scope: str | None) -> Span:
    trace_id = span_id = parent_id = None
    name = ""
    start_ns = end_ns = 0
    attribute_items: list[bytes] = []
    events: list[tuple[str, int, dict[str, Any] | None]] = []
    error: str | None = None
    for number, wire, raw in _fields(data):
        if number == 1 and wire == 2:
            trace_id = _hex_id(raw, 16, "a trace id")
        elif number == 2 and wire == 2:
            span_id = _hex_id(raw, 8, "a span id")
        elif number == 4 and wire == 2:
            parent_id = _hex_id(raw, 8, "a parent span id")
        elif number == 5 and wire == 2:
            name = _text(raw, "a span name")
        elif number == 7 and wire == 1:
            start_ns = raw
        elif number == 8 and wire == 1:
            end_ns = raw
        elif number == 9 and wire == 2:
            attribute_items.append(raw)
        elif number == 11 and wire == 2:
            events.append(_event(raw))
        elif number == 15 and wire == 2:
            message = ""
            code = 0
            for n, w, value in _fields(raw):
                if n == 2 and w == 2:
                    message = _text(value, "a status message")
                elif n == 3 and w == 0:
                    code = value
            error = message if code == STATUS_ERROR else None
    if trace_id is None or span_id is None:
        raise OtlpError("a span without its trace id or span id")
    attributes = _attributes(attribute_items)
    span = Span(trace_id, span_id, parent_id, name, start_ns, end_ns, attributes, events, error)
    return _finished(span, resource, scope)


def _event(data: bytes) -> tuple[str, int, dict[str, Any] | None]:
    name = ""
    time_ns = 0
    items: list[bytes] = []
    for number, wire, raw in _fields(data):
        if number == 1 and wire == 1:
            time_ns = raw
        elif number == 2 and wire == 2:
            name = _text(raw, "an event name")
        elif number == 3 and wire == 2:
            items.append(raw)
    return (name, time_ns, _attributes(items) if items else None)


def _finished(span: Span, resource: dict[str, Any], scope: str | None) -> Span:
    """``span``, checked, with its resource's ``posthog.*`` attributes and its scope's name where
    it has none of its own."""
    if span.end_ns < span.start_ns:
        raise OtlpError(f"span {span.span_id} ends before it starts")
    for key, value in resource.items():
        if key.startswith("posthog."):
            span.attributes.setdefault(key, value)
    if scope is not None:
        span.attributes.setdefault(SCOPE_NAME, scope)
    return span


def decode_protobuf(body: bytes) -> list[Span]:
    """The spans of a protobuf-encoded ``ExportTraceServiceRequest``."""
    spans: list[Span] = []
    for number, wire, resource_spans in _fields(body):
        if number != 1 or wire != 2:
            continue
        resource: dict[str, Any] = {}
        scopes: list[bytes] = []
        for n, w, raw in _fields(resource_spans):
            if n == 1 and w == 2:
                resource = _attributes([item for k, kw, item in _fields(raw) if k == 1 and kw == 2])
            elif n == 2 and w == 2:
                scopes.append(raw)
        for scope in scopes:
            # The scope (field 1) may come after its spans: read it first.
            name: str | None = None
            items: list[bytes] = []
            for n, w, raw in _fields(scope):
                if n == 1 and w == 2:
                    for k, kw, value in _fields(raw):
                        if k == 1 and kw == 2:
                            name = _scope_name(_text(value, "an instrumentation scope name"))
                elif n == 2 and w == 2:
                    items.append(raw)
            spans.extend(_span(raw, resource, name) for raw in items)
    return spans


# -- the JSON encoding (OTLP/HTTP with Content-Type: application/json) ---------------------------


def _json_int(value: Any, what: str) -> int:
    # int64 and fixed64 travel as decimal strings in OTLP/JSON (numbers are accepted too).
    if isinstance(value, bool):
        raise OtlpError(f"{what} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise OtlpError(f"{what} is not an integer")


def _json_id(value: Any, size: int, what: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise OtlpError(f"{what} is not a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise OtlpError(f"{what} is not hex") from None
    return _hex_id(raw, size, what)


def _json_value(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise OtlpError(f"attribute values nested deeper than {MAX_DEPTH}")
    if not isinstance(value, dict):
        raise OtlpError("an attribute value is not an object")
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return _json_int(value["intValue"], "an int value")
    if "doubleValue" in value:
        number = value["doubleValue"]
        if isinstance(number, bool) or not isinstance(number, int | float | str):
            raise OtlpError("a double value is not a number")
        try:
            return float(number)
        except ValueError:
            raise OtlpError("a double value is not a number") from None
    if "arrayValue" in value:
        items = (value["arrayValue"] or {}).get("values") or []
        return tuple(_json_value(item, depth + 1) for item in _json_list(items, "array values"))
    if "kvlistValue" in value:
        return _json_attributes((value["kvlistValue"] or {}).get("values"), depth + 1)
    if "bytesValue" in value:
        return str(value["bytesValue"])
    return None


def _json_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtlpError(f"{what} is not a list")
    return value


def _json_attributes(items: Any, depth: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in _json_list(items, "attributes"):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise OtlpError("an attribute without a string key")
        found[item["key"]] = _json_value(item.get("value") or {}, depth)
    return found


def decode_json(body: bytes) -> list[Span]:
    """The spans of a JSON-encoded ``ExportTraceServiceRequest``."""
    import json

    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise OtlpError(f"not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise OtlpError("not a JSON object")
    spans: list[Span] = []
    for resource_spans in _json_list(request.get("resourceSpans"), "resourceSpans"):
        if not isinstance(resource_spans, dict):
            raise OtlpError("a resourceSpans item is not an object")
        resource = _json_attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in _json_list(resource_spans.get("scopeSpans"), "scopeSpans"):
            if not isinstance(scope_spans, dict):
                raise OtlpError("a scopeSpans item is not an object")
            scope = scope_spans.get("scope") or {}
            if not isinstance(scope, dict):
                raise OtlpError("an instrumentation scope is not an object")
            name = scope.get("name")
            if name is not None and not isinstance(name, str):
                raise OtlpError("an instrumentation scope name is not a string")
            name = _scope_name(name) if name is not None else None
            for span in _json_list(scope_spans.get("spans"), "spans"):
                if not isinstance(span, dict):
                    raise OtlpError("a span is not an object")
                spans.append(_json_span(span, resource, name))
    return spans


def _json_span(span: dict[str, Any], resource: dict[str, Any], scope: str | None) -> Span:
    trace_id = _json_id(span.get("traceId"), 16, "a trace id")
    span_id = _json_id(span.get("spanId"), 8, "a span id")
    if trace_id is None or span_id is None:
        raise OtlpError("a span without its trace id or span id")
    events: list[tuple[str, int, dict[str, Any] | None]] = []
    for event in _json_list(span.get("events"), "events"):
        if not isinstance(event, dict):
            raise OtlpError("a span event is not an object")
        attributes = _json_attributes(event.get("attributes"))
        events.append(
            (str(event.get("name") or ""), _json_int(event.get("timeUnixNano", 0), "an event time"), attributes or None)
        )
    status = span.get("status") or {}
    if not isinstance(status, dict):
        raise OtlpError("a span status is not an object")
    error = str(status.get("message") or "") if status.get("code") in (STATUS_ERROR, "STATUS_CODE_ERROR") else None
    decoded = Span(
        trace_id,
        span_id,
        _json_id(span.get("parentSpanId"), 8, "a parent span id"),
        str(span.get("name") or ""),
        _json_int(span.get("startTimeUnixNano", 0), "a start time"),
        _json_int(span.get("endTimeUnixNano", 0), "an end time"),
        _json_attributes(span.get("attributes")),
        events,
        error,
    )
    return _finished(decoded, resource, scope)
