"""OTLP/HTTP on localhost (``_otlp_server``, ``_otlp_decode``, ``_otlp``): what the real OTLP
exporter sends is taken, anything else is refused with a counted reason, nothing stops the
server; the spans are nested and placed in the handler's trace they ran in."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import random
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from posthog_lambda_contract import records
from posthog_lambda_contract.events import DISTINCT_ID, PRIVACY, TRACE_ID
from posthog_lambda_contract.genai import SCOPE_NAME
from posthog_lambda_extension._drops import Drops
from posthog_lambda_extension._intake import HANDLER_BATCHES_KEPT
from posthog_lambda_extension._otlp import Otlp
from posthog_lambda_extension._otlp_decode import MAX_SCOPE_NAME, OtlpError, decode_json, decode_protobuf
from posthog_lambda_extension._otlp_server import MAX_BODY, OtlpServer

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 3}
AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}


class Handed:
    """What the OTLP spans became: (header, records) as the intake receives them."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], list[Any]]] = []

    def __call__(self, header: dict[str, Any], span_records: list[Any]) -> None:
        self.calls.append((header, span_records))

    def events(self) -> list[dict[str, Any]]:
        return [records.expand(header, record) for header, batch in self.calls for record in batch]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def handed() -> Handed:
    return Handed()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def handlers() -> deque[tuple[dict[str, Any], list[tuple[int, int, str]]]]:
    """The intake's batches of handlers' spans, as it keeps them when OTLP is taken."""
    return deque(maxlen=HANDLER_BATCHES_KEPT)


@pytest.fixture
def otlp(handed: Handed, clock: Clock, handlers: deque[Any]) -> Otlp:
    return Otlp(handed, handlers, environ={}, clock=clock)


@pytest.fixture
def drops() -> Drops:
    return Drops()


@pytest.fixture
def server(otlp: Otlp, drops: Drops) -> Iterator[OtlpServer]:
    served = OtlpServer(otlp.receive, drops, port=0)
    assert served.start()
    yield served
    served.close()


def finished(
    *spans: tuple[str, dict[str, Any]], resource: dict[str, Any] | None = None, scope: str = "test"
) -> list[ReadableSpan]:
    """Spans made by the real SDK (a tracer of instrumentation scope ``scope``), each nested in the
    one before, ended innermost first."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(resource or {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(scope)
    opened = []
    for name, attributes in spans:
        opened.append(tracer.start_as_current_span(name, attributes=attributes))
        opened[-1].__enter__()
    for context in reversed(opened):
        context.__exit__(None, None, None)
    return list(exporter.get_finished_spans())


def protobuf(spans: list[ReadableSpan]) -> bytes:
    return bytes(encode_spans(spans).SerializeToString())


def post(
    server: OtlpServer, body: bytes, content_type: str = "application/x-protobuf", **headers: str
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("POST", headers.pop("path", "/v1/traces"), body, {"Content-Type": content_type, **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- the server -------------------------------------------------------------------------------


def test_the_real_exporter_is_answered_and_its_spans_taken(server: OtlpServer, otlp: Otlp, handed: Handed) -> None:
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.port}/v1/traces")
    spans = finished(("planner", AGENT), ("chat", CHAT), ("GET /x", {"http.method": "GET"}))
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert otlp.taken == 3
    assert otlp.release() == 2  # the HTTP span is not GenAI
    by_name = {e["properties"]["$ai_span_name"]: e for e in handed.events()}
    assert set(by_name) == {"planner", "chat"}
    trace_id = format(spans[0].context.trace_id, "032x")
    assert by_name["planner"]["properties"]["$ai_parent_id"] == trace_id
    assert by_name["chat"]["properties"]["$ai_parent_id"] == by_name["planner"]["properties"]["$ai_span_id"]


def test_gzip_and_json_are_taken_too(server: OtlpServer, otlp: Otlp) -> None:
    spans = finished(("chat", CHAT))
    assert post(server, gzip.compress(protobuf(spans)), **{"Content-Encoding": "gzip"})[0] == 200
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "posthog.distinct_id", "value": {"stringValue": "user-3"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "chat",
                                "startTimeUnixNano": "1767225600000000000",
                                "endTimeUnixNano": "1767225601000000000",
                                "attributes": [
                                    {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "7"}},
                                ],
                                "status": {"code": 2, "message": "overloaded"},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    status, body = post(server, json.dumps(request).encode(), "application/json")
    assert (status, json.loads(body)) == (200, {})
    assert otlp.taken == 2
    (span,) = decode_json(json.dumps(request).encode())
    assert (span.attributes["gen_ai.usage.input_tokens"], span.attributes["posthog.distinct_id"]) == (7, "user-3")
    assert (span.error, span.end_ns - span.start_ns) == ("overloaded", 1_000_000_000)


def raw(body: bytes = b"", head: str = "POST /v1/traces HTTP/1.1", length: bool = True, **headers: str) -> bytes:
    """An HTTP request as bytes; header names from keywords (``content_type`` for Content-Type)."""
    lines = [head, *(f"{name.replace('_', '-').title()}: {value}" for name, value in headers.items())]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


JSON_TYPE = {"content_type": "application/json"}


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (raw(head="GET /v1/traces HTTP/1.1"), 405, "otlp_not_found"),
        (raw(b"{}", head="POST /v1/logs HTTP/1.1", **JSON_TYPE), 404, "otlp_not_found"),
        (raw(b"hi", content_type="text/plain"), 415, "otlp_unsupported"),
        (raw(b"{}", content_encoding="br", **JSON_TYPE), 415, "otlp_unsupported"),
        (raw(length=False, transfer_encoding="chunked"), 411, "otlp_invalid"),
        (raw(length=False, content_length=str(MAX_BODY + 1)), 413, "otlp_too_large"),
        (raw(length=False, content_length="lots"), 400, "otlp_invalid"),
        (raw(head="BREW /coffee HTCPCP/1.0"), 400, "otlp_invalid"),
        (b"POST /v1/traces HTTP/1.1\r\n" + b"X: " + b"y" * 20_000, 431, "otlp_too_large"),
        (raw(b"\x0a\x05\x01", content_type="application/x-protobuf"), 400, "otlp_invalid"),
        (raw(b"[1,2]", **JSON_TYPE), 400, "otlp_invalid"),
    ],
)
def test_what_is_not_an_otlp_request_is_refused_and_counted(
    server: OtlpServer, drops: Drops, request_bytes: bytes, status: int, reason: str
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request_bytes)
        answer = sock.recv(65536)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert drops.totals() == {reason: 1}
    # The server goes on.
    assert post(server, protobuf(finished(("chat", CHAT))))[0] == 200


def test_a_refused_request_leaves_the_connection_usable(server: OtlpServer, otlp: Otlp) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("POST", "/v1/traces", b"\xff\xff\xff", {"Content-Type": "application/x-protobuf"})
    response = connection.getresponse()
    response.read()
    assert response.status == 400
    connection.request(
        "POST", "/v1/traces", protobuf(finished(("chat", CHAT))), {"Content-Type": "application/x-protobuf"}
    )
    assert connection.getresponse().status == 200
    connection.close()
    assert otlp.taken == 1


def test_a_gzip_bomb_is_refused(server: OtlpServer, drops: Drops) -> None:
    bomb = gzip.compress(b"\0" * (MAX_BODY + 1024))
    assert post(server, bomb, **{"Content-Encoding": "gzip"})[0] == 413
    assert post(server, b"not gzip at all", **{"Content-Encoding": "gzip"})[0] == 400
    assert drops.totals() == {"otlp_too_large": 1, "otlp_invalid": 1}


def test_random_bytes_never_stop_the_server(server: OtlpServer, otlp: Otlp) -> None:
    valid = protobuf(finished(("planner", AGENT), ("chat", CHAT)))
    chance = random.Random(16)
    for _ in range(300):
        mangled = bytearray(valid)
        for _ in range(chance.randint(1, 8)):
            mangled[chance.randrange(len(mangled))] = chance.randrange(256)
        status, _ = post(server, bytes(mangled[: chance.randint(0, len(mangled))]))
        assert status in (200, 400)
    for _ in range(50):
        assert post(server, os.urandom(chance.randint(0, 4096)))[0] in (200, 400)
    assert post(server, valid)[0] == 200
    otlp.release()  # what was taken can be made into events


def test_a_port_already_held_is_one_line_not_a_crash(
    server: OtlpServer, otlp: Otlp, drops: Drops, capsys: pytest.CaptureFixture[str]
) -> None:
    second = OtlpServer(otlp.receive, drops, port=server.port)
    assert second.start() is False
    assert f"cannot listen for OTLP on 127.0.0.1:{server.port}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x80",  # truncated length
        b"\x0b",  # wire type 3
        b"\x0a\x04\x12\x02\x12\x00",  # a span without ids
        b"\xff" * 11,  # a varint too long
    ],
)
def test_decoding_refuses_what_is_not_a_request(body: bytes) -> None:
    with pytest.raises(OtlpError):
        decode_protobuf(body)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size = len(payload)
    length = bytearray()
    while True:
        length.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(length) + payload


def test_decoding_is_bounded_in_depth() -> None:
    value = field(1, b"x")  # AnyValue{string_value}
    for _ in range(40):  # AnyValue{array_value: ArrayValue{values: [value]}}
        value = field(5, field(1, value))
    attribute = field(1, b"k") + field(2, value)
    span = field(1, b"\x01" * 16) + field(2, b"\x02" * 8) + field(9, attribute)
    request = field(1, field(2, field(2, span)))
    with pytest.raises(OtlpError, match="nested deeper"):
        decode_protobuf(request)


# -- the instrumentation scope ------------------------------------------------------------------


def test_the_scope_is_carried_and_names_the_framework(otlp: Otlp, handed: Handed) -> None:
    own = {**CHAT, SCOPE_NAME: "openinference.instrumentation.crewai"}
    langchain = finished(("planner", AGENT), ("chat", own), scope="opentelemetry.instrumentation.langchain")
    openai = finished(("chat openai", CHAT), scope="opentelemetry.instrumentation.openai_v2")
    decoded = decode_protobuf(protobuf(langchain + openai))
    assert {s.name: s.attributes[SCOPE_NAME] for s in decoded} == {
        "planner": "opentelemetry.instrumentation.langchain",
        "chat": "openinference.instrumentation.crewai",  # the span's own attribute is kept
        "chat openai": "opentelemetry.instrumentation.openai_v2",
    }
    otlp.receive(protobuf(langchain + openai), "application/x-protobuf")
    otlp.release()
    found = {e["properties"]["$ai_span_name"]: e["properties"] for e in handed.events()}
    assert found["planner"]["$ai_framework"] == "langchain"
    assert found["chat"]["$ai_framework"] == "crewai"
    assert "$ai_framework" not in found["chat openai"]  # a provider's SDK is not a framework
    assert not any(SCOPE_NAME in p for p in found.values())


def json_request(scope: Any) -> bytes:
    """A JSON request of one span, under ``scope`` (left out when None)."""
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "chat"}
    scope_spans: dict[str, Any] = {"spans": [span]}
    if scope is not None:
        scope_spans["scope"] = scope
    return json.dumps({"resourceSpans": [{"scopeSpans": [scope_spans]}]}).encode()


def test_json_carries_the_scope_too() -> None:
    (span,) = decode_json(json_request({"name": "openinference.instrumentation.agno", "version": "0.1"}))
    assert span.attributes[SCOPE_NAME] == "openinference.instrumentation.agno"
    for nameless in (None, {}, {"name": ""}, {"name": None}):
        (span,) = decode_json(json_request(nameless))
        assert SCOPE_NAME not in span.attributes
    (span,) = decode_json(json_request({"name": "n" * MAX_SCOPE_NAME}))
    assert len(span.attributes[SCOPE_NAME]) == MAX_SCOPE_NAME


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        ("langchain", "not an object"),
        ({"name": 7}, "not a string"),
        ({"name": ["langchain"]}, "not a string"),
        ({"name": "n" * (MAX_SCOPE_NAME + 1)}, "longer than"),
    ],
)
def test_json_refuses_a_scope_that_is_not_one(scope: Any, reason: str) -> None:
    with pytest.raises(OtlpError, match=reason):
        decode_json(json_request(scope))


SPAN_IDS = field(1, b"\x01" * 16) + field(2, b"\x02" * 8)
"""A span of nothing but its ids, as protobuf."""


def scoped(scope: bytes, spans_first: bool = False) -> bytes:
    """A protobuf request of one span, whose ScopeSpans carries ``scope`` (its fields, as bytes)."""
    fields = [scope, field(2, SPAN_IDS)]
    return field(1, field(2, b"".join(reversed(fields) if spans_first else fields)))


def test_protobuf_reads_the_scope_wherever_it_comes() -> None:
    for spans_first in (False, True):
        (span,) = decode_protobuf(scoped(field(1, field(1, b"haystack") + field(2, b"2.9")), spans_first))
        assert span.attributes[SCOPE_NAME] == "haystack"
    (span,) = decode_protobuf(scoped(field(1, field(1, b""))))
    assert SCOPE_NAME not in span.attributes


@pytest.mark.parametrize(
    "scope",
    [
        bytes([1 << 3 | 0, 5]),  # the scope as a varint
        field(1, bytes([1 << 3 | 0, 5])),  # its name as a varint
        field(1, bytes([1 << 3 | 5]) + b"\0\0\0\0"),  # its name as a 32-bit value
    ],
)
def test_protobuf_skips_a_scope_of_the_wrong_wire_type(scope: bytes) -> None:
    # As every field the decoder reads: of another wire type, it is not that field.
    (span,) = decode_protobuf(scoped(scope))
    assert SCOPE_NAME not in span.attributes


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        (field(1, field(1, b"lang\xffchain")), "scope name is not UTF-8"),
        (field(1, field(1, b"n" * (MAX_SCOPE_NAME + 1))), "scope name longer than"),
        (field(1, b"\x0a\x80"), "truncated"),  # the scope's own fields cut short
    ],
)
def test_protobuf_refuses_a_scope_that_is_not_one(scope: bytes, reason: str) -> None:
    with pytest.raises(OtlpError, match=reason):
        decode_protobuf(scoped(scope))


def test_a_request_with_a_malformed_scope_is_refused_and_counted(server: OtlpServer, drops: Drops) -> None:
    assert post(server, scoped(field(1, field(1, b"\xff"))))[0] == 400
    assert post(server, json_request({"name": 7}), "application/json")[0] == 400
    assert drops.totals() == {"otlp_invalid": 2}


# -- placing and nesting -----------------------------------------------------------------------


def test_a_child_sent_before_its_parent_is_nested_under_it_at_the_flush(otlp: Otlp, handed: Handed) -> None:
    spans = finished(("planner", AGENT), ("plain", {"http.method": "GET"}), ("chat", CHAT))
    for span in spans:  # SimpleSpanProcessor's order: each as it ends, innermost first
        otlp.receive(protobuf([span]), "application/x-protobuf")
    otlp.release()
    by_name = {e["properties"]["$ai_span_name"]: e["properties"] for e in handed.events()}
    assert by_name["chat"]["$ai_parent_id"] == by_name["planner"]["$ai_span_id"]


def test_a_span_joins_the_innermost_handler_span_it_ran_in(otlp: Otlp, handed: Handed, handlers: deque[Any]) -> None:
    (chat,) = finished(("chat", CHAT))
    start_us, end_us = chat.start_time // 1000, chat.end_time // 1000
    host = {TRACE_ID: "handler-trace", DISTINCT_ID: "user-1", PRIVACY: True}
    handlers.append(
        (host, [(start_us - 5_000, end_us + 5_000, "span-outer"), (start_us - 1_000, end_us + 1_000, "span-inner")])
    )
    handlers.append(({TRACE_ID: "another", DISTINCT_ID: "x"}, [(end_us + 10, end_us + 20, "later")]))
    otlp.receive(protobuf([chat]), "application/x-protobuf")
    otlp.release()
    ((header, _),) = handed.calls
    assert header is host
    (event,) = handed.events()
    assert event["distinct_id"] == "user-1"
    assert event["properties"]["$ai_trace_id"] == "handler-trace"
    assert event["properties"]["$ai_parent_id"] == "span-inner"


def test_spans_of_an_invocation_under_way_wait_for_it(otlp: Otlp, handed: Handed, clock: Clock) -> None:
    otlp.receive(protobuf(finished(("before", CHAT))), "application/x-protobuf")
    clock.now += 1
    began = clock.now
    clock.now += 1
    otlp.receive(protobuf(finished(("during", CHAT))), "application/x-protobuf")
    assert otlp.release(before=began) == 1
    assert [e["properties"]["$ai_span_name"] for e in handed.events()] == ["before"]
    assert otlp.release() == 1


def test_outside_any_handler_a_trace_of_its_own_with_the_environments_settings(handed: Handed) -> None:
    otlp = Otlp(handed, environ={"POSTHOG_PRIVACY_MODE": "true", "POSTHOG_DEFAULT_DISTINCT_ID": "svc"})
    messages = '[{"role": "user", "content": "private"}]'
    (chat,) = finished(("chat", {**CHAT, "gen_ai.input.messages": messages}), resource={"service.name": "x"})
    otlp.receive(protobuf([chat]), "application/x-protobuf")
    otlp.release()
    (event,) = handed.events()
    assert event["distinct_id"] == "svc"
    assert event["properties"]["$ai_trace_id"] == format(chat.context.trace_id, "032x")
    assert "$ai_input" not in event["properties"]


def test_errors_and_resource_identity_come_through(server: OtlpServer, otlp: Otlp, handed: Handed) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"posthog.distinct_id": "user-9"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("chat", attributes=CHAT) as span:
        span.set_status(Status(StatusCode.ERROR, "rate limited"))
    assert post(server, protobuf(list(exporter.get_finished_spans())))[0] == 200
    otlp.release()
    (event,) = handed.events()
    assert event["distinct_id"] == "user-9"
    assert (event["properties"]["$ai_is_error"], event["properties"]["$ai_error"]) == (True, "rate limited")


def test_a_malformed_opentelemetry_record_from_the_socket_is_counted() -> None:
    from posthog_lambda_extension._buffer import Buffer
    from posthog_lambda_extension._intake import Intake
    from posthog_lambda_extension._invocations import Invocations

    drops = Drops()
    intake = Intake(Buffer(1 << 20, drops), Invocations(), drops)
    good = ("otel", "chat", None, 1_767_225_600_000_000, 1000, "00f067aa0ba902b7", None, 3, CHAT, ())
    intake.spans({TRACE_ID: "t", DISTINCT_ID: "u"}, [("otel", "chat", None, "soon"), good, ("otel",) * 12])
    assert drops.totals() == {"events_invalid": 2}
    assert intake.accepted == 1


def test_the_spans_of_a_trace_of_its_own_go_on_together(otlp: Otlp, handed: Handed) -> None:
    otlp.receive(protobuf(finished(("planner", AGENT), ("chat", CHAT), ("second", CHAT))), "application/x-protobuf")
    otlp.release()
    ((header, batch),) = handed.calls
    assert len(batch) == 3
    assert {e["properties"]["$ai_trace_id"] for e in handed.events()} == {header[TRACE_ID]}
