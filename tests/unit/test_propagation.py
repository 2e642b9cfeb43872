"""Carrying a trace from one function to the next: ``inject`` writes W3C traceparent and baggage,
``@posthog_traced`` finds them wherever a Lambda event or context carries them and continues the
sender's trace; anything malformed starts a trace of its own, counted, never raised."""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from posthog_lambda import dropped_counts, inject, posthog_traced, span
from posthog_lambda._propagation import InvalidCarrier, hex_digits, parent_of, read
from posthog_lambda.testing import trace_tree_problems
from posthog_lambda_contract import limits
from tests import helpers
from tests.helpers import LambdaContext, W3CContext, by_kind, message_attributes, one

INVALID = "trace_context_invalid"
FOREIGN_TRACE = "0af7651916cd43dd8448eb211c80319c"
FOREIGN_TP = f"00-{FOREIGN_TRACE}-b7ad6b7169203331-01"
TRACEPARENT_FORMAT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")
RESULT = object()
"""What B returns: the handler's result must come back as this very object."""


class Sent(NamedTuple):
    carrier: dict[str, Any]
    span_id: str
    trace_id: str


def send(*, distinct_id: str | None = "user-42", session_id: str | None = "sess-7") -> Sent:
    """Handler A: injects inside ``with span("send")``; what it wrote and where it was."""

    @posthog_traced(name="a", distinct_id=distinct_id, session_id=session_id)
    def a(event: Any, context: Any) -> Sent:
        with span("send") as sending:
            carrier = inject()
            return Sent(dict(carrier), sending.span_id, sending.trace_id)

    return a({}, None)


def receive(events: list[Any], event: Any, context: Any = None, **options: Any) -> list[Any]:
    """Handler B, with a child and a grandchild span; the events B emitted."""
    seen: list[Any] = []

    @posthog_traced(name="b", **options)
    def b(event: Any, context: Any) -> Any:
        seen.append(event)
        with span("b-child"), span("b-grandchild"):
            pass
        return RESULT

    before = len(events)
    assert b(event, context) is RESULT
    assert len(seen) == 1
    assert seen[0] is event
    return events[before:]


def roots(events: list[Any]) -> list[Any]:
    return [e for e in events if e["event"] == "$ai_trace" or e["properties"].get("lambda_root") is True]


def assert_continues(
    events: list[Any],
    b_events: list[Any],
    sent: Sent,
    *,
    distinct_id: str = "user-42",
    session_id: str | None = "sess-7",
) -> None:
    assert by_kind(b_events, "$ai_trace") == []
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {sent.trace_id}
    [root] = roots(b_events)
    props = root["properties"]
    assert root["event"] == "$ai_span"
    assert props["lambda_root"] is True
    assert props["$ai_span_name"] == "b"
    assert props["$ai_parent_id"] == sent.span_id
    assert props["$ai_span_id"] not in (sent.span_id, sent.trace_id)
    child = one(b_events, "$ai_span", "b-child")["properties"]
    grandchild = one(b_events, "$ai_span", "b-grandchild")["properties"]
    assert child["$ai_parent_id"] == props["$ai_span_id"]
    assert grandchild["$ai_parent_id"] == child["$ai_span_id"]
    assert {e["distinct_id"] for e in b_events} == {distinct_id}
    assert {e["properties"].get("$ai_session_id") for e in b_events} == {session_id}
    # The sender's trace, as one tree with the receiver's part of it.
    assert trace_tree_problems(events) == []
    assert len(by_kind(events, "$ai_trace")) == 1
    assert [e["properties"]["$ai_span_name"] for e in roots(events)] == ["a", "b"]


def assert_fresh(b_events: list[Any], *, not_trace: str | None = None) -> dict[str, Any]:
    """B started a trace of its own: one ``$ai_trace``, everything under it."""
    trace = one(b_events, "$ai_trace")
    props = trace["properties"]
    assert "lambda_root" not in props
    assert "$ai_parent_id" not in props
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {props["$ai_trace_id"]}
    if not_trace is not None:
        assert props["$ai_trace_id"] != not_trace
    assert one(b_events, "$ai_span", "b-child")["properties"]["$ai_parent_id"] == props["$ai_trace_id"]
    assert trace_tree_problems(b_events) == []
    return dict(trace)


def members(baggage: str) -> list[tuple[str, str]]:
    return [(k.strip(), v) for k, _, v in (m.partition("=") for m in baggage.split(","))]


# -- inject ------------------------------------------------------------------------------------


def test_inject_outside_a_trace_writes_nothing() -> None:
    carrier = {"content-type": "application/json", "baggage": "userId=alice"}
    assert inject(carrier) is carrier
    assert carrier == {"content-type": "application/json", "baggage": "userId=alice"}
    fresh = inject()
    assert fresh == {}
    assert isinstance(fresh, dict)
    assert dropped_counts() == {}


def test_inject_inside_a_span_writes_traceparent_and_baggage(events: list[Any]) -> None:
    given: dict[str, str] = {"content-type": "application/json"}
    written: list[Any] = []

    @posthog_traced(distinct_id="user-42", session_id="sess-7")
    def handler(event: Any, context: Any) -> None:
        with span("outer"), span("send") as sending:
            written.append((inject(given), sending.span_id, sending.trace_id))

    handler({}, None)
    carrier, span_id, trace_id = written[0]
    assert carrier is given
    assert carrier["content-type"] == "application/json"
    assert TRACEPARENT_FORMAT.fullmatch(carrier["traceparent"])
    _, trace_hex, span_hex, _ = carrier["traceparent"].split("-")
    assert trace_hex == hex_digits(trace_id, 32) == trace_id.replace("-", "")
    assert span_hex == hex_digits(span_id, 16) == span_id.replace("-", "")[:16]
    assert members(carrier["baggage"]) == [
        ("posthog.trace_id", trace_id),
        ("posthog.span_id", span_id),
        ("posthog.distinct_id", "user-42"),
        ("posthog.session_id", "sess-7"),
    ]
    # The span id is the one the span's event carries.
    assert one(events, "$ai_span", "send")["properties"]["$ai_span_id"] == span_id


def test_inject_in_the_handler_itself_names_the_trace_as_parent(events: list[Any]) -> None:
    @posthog_traced(name="a", distinct_id="user-42", session_id="sess-7")
    def a(event: Any, context: Any) -> dict[str, Any]:
        return dict(inject())

    carrier = a({}, None)
    trace_id = one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    assert read(carrier) is not None
    b_events = receive(events, {"headers": carrier})
    assert_continues(events, b_events, Sent(carrier, trace_id, trace_id))


def test_inject_in_a_span_outside_any_handler(events: list[Any]) -> None:
    with span("standalone") as standalone:
        carrier = inject()
    assert TRACEPARENT_FORMAT.fullmatch(carrier["traceparent"])
    parent = read(carrier)
    assert parent is not None
    assert (parent.trace_id, parent.span_id) == (standalone.trace_id, standalone.span_id)


def test_anonymous_trace_sends_no_distinct_id(events: list[Any]) -> None:
    sent = send(distinct_id=None, session_id=None)
    keys = [k for k, _ in members(sent.carrier["baggage"])]
    assert keys == ["posthog.trace_id", "posthog.span_id"]
    # B is anonymous too, the way A was: its distinct id is the trace id, A's.
    b_events = receive(events, {"headers": sent.carrier})
    assert_continues(events, b_events, sent, distinct_id=sent.trace_id, session_id=None)
    assert {e["distinct_id"] for e in events} == {sent.trace_id}


def test_session_without_a_known_user(events: list[Any]) -> None:
    sent = send(distinct_id=None, session_id="sess-only")
    assert [k for k, _ in members(sent.carrier["baggage"])] == [
        "posthog.trace_id",
        "posthog.span_id",
        "posthog.session_id",
    ]


@pytest.mark.parametrize("value", [',;=% é"', "a=b=c", "100%", "tab\tnew\nline", "雪, ❄️; \\ end", "%41"])
def test_ids_survive_percent_encoding(events: list[Any], value: str) -> None:
    sent = send(distinct_id=value, session_id=value + "-s")
    baggage = sent.carrier["baggage"]
    for _, encoded in members(baggage)[2:]:
        assert encoded.isascii()
        assert not set(encoded) & set(' ",;\\\t\n')
    assert len(members(baggage)) == 4
    parent = read(sent.carrier)
    assert parent is not None
    assert parent.distinct_id == value
    assert parent.session_id == value + "-s"
    b_events = receive(events, {"headers": sent.carrier})
    assert_continues(events, b_events, sent, distinct_id=value, session_id=value + "-s")


def test_foreign_baggage_kept_and_old_posthog_members_replaced(events: list[Any]) -> None:
    given = {
        "baggage": "userId=alice, posthog.trace_id=old-trace,posthog.span_id=old-span;prop=1,"
        "posthog.distinct_id=old-user,isProduction=false;ttl=5",
        "traceparent": FOREIGN_TP,
    }
    written: list[Any] = []

    @posthog_traced(distinct_id="user-42")
    def handler(event: Any, context: Any) -> None:
        with span("send") as sending:
            inject(given)
            once = given["baggage"]
            inject(given)  # again: still one of each
            written.append((once, sending.span_id, sending.trace_id))

    handler({}, None)
    once, span_id, trace_id = written[0]
    assert given["baggage"] == once
    keys = [k for k, _ in members(given["baggage"])]
    assert sorted(keys) == sorted(
        ["posthog.trace_id", "posthog.span_id", "posthog.distinct_id", "userId", "isProduction"]
    )
    assert "userId=alice" in given["baggage"].split(",")
    assert "isProduction=false;ttl=5" in given["baggage"].split(",")
    assert "old" not in given["baggage"]
    assert given["traceparent"] != FOREIGN_TP
    parent = read(given)
    assert parent is not None
    assert (parent.trace_id, parent.span_id, parent.distinct_id) == (trace_id, span_id, "user-42")


def test_a_chain_of_three_functions_is_one_tree(events: list[Any]) -> None:
    sent = send()
    forwarded: list[Any] = []

    @posthog_traced(name="b")
    def b(event: Any, context: Any) -> None:
        with span("forward") as forwarding:
            forwarded.append(Sent(dict(inject()), forwarding.span_id, forwarding.trace_id))

    b({"headers": sent.carrier}, None)
    hop = forwarded[0]
    assert hop.trace_id == sent.trace_id
    c_events = receive(events, {"Records": [sqs_record(hop.carrier)]})
    [c_root] = roots(c_events)
    assert c_root["properties"]["$ai_parent_id"] == hop.span_id
    assert {e["properties"]["$ai_trace_id"] for e in events} == {sent.trace_id}
    assert {e["distinct_id"] for e in events} == {"user-42"}
    assert trace_tree_problems(events) == []
    assert len(by_kind(events, "$ai_trace")) == 1


def test_a_trace_id_not_made_here_still_gives_a_valid_traceparent(events: list[Any]) -> None:
    carrier = {"baggage": "posthog.trace_id=order-1234,posthog.span_id=checkout"}
    forwarded: list[Any] = []

    @posthog_traced(name="b")
    def b(event: Any, context: Any) -> None:
        with span("forward"):
            forwarded.append(dict(inject()))

    b({"_posthog": carrier}, None)
    written = forwarded[0]
    assert TRACEPARENT_FORMAT.fullmatch(written["traceparent"])
    assert written["traceparent"].split("-")[1] == hex_digits("order-1234", 32)
    assert ("posthog.trace_id", "order-1234") in members(written["baggage"])
    assert {e["properties"]["$ai_trace_id"] for e in events} == {"order-1234"}


def test_hex_digits() -> None:
    assert hex_digits("01a24312-2bb2-7f18-ae58-f0ad4066ace7", 32) == "01a243122bb27f18ae58f0ad4066ace7"
    assert hex_digits("52EB2E78-3fe0-4ef1-b9ac-32a71b3484f9", 16) == "52eb2e783fe04ef1"
    for odd in ("order-1234", "00000000-0000-0000-0000-000000000000", "", "zz" * 20):
        for digits in (16, 32):
            value = hex_digits(odd, digits)
            assert re.fullmatch(f"[0-9a-f]{{{digits}}}", value)
            assert value.strip("0")
    assert hex_digits("order-1234", 32) == hex_digits("order-1234", 32)
    assert hex_digits("order-1234", 32) != hex_digits("order-1235", 32)


# -- where a carrier sits in what Lambda hands a handler --------------------------------------


def sqs_record(carrier: dict[str, Any], body: str = "hello") -> dict[str, Any]:
    return helpers.sqs_record(message_attributes(carrier), body)


def sns_message(carrier: dict[str, Any]) -> dict[str, Any]:
    return helpers.sns_message(message_attributes(carrier), "hello")


def sns_record(carrier: dict[str, Any]) -> dict[str, Any]:
    return helpers.sns_record(message_attributes(carrier))


class ClientContextContext(LambdaContext):
    def __init__(self, custom: dict[str, Any]) -> None:
        super().__init__()
        self.client_context = SimpleNamespace(custom=custom, env={"platform": "python"}, client=None)


def _mixed_case(name: str) -> str:
    return {"traceparent": "TraceParent", "baggage": "BAGGAGE"}.get(name, name)


def api_gateway_v1(carrier: dict[str, Any]) -> tuple[Any, Any]:
    headers = {"Host": "api.example.com", "Content-Type": "application/json"}
    headers |= {_mixed_case(k): v for k, v in carrier.items()}
    return {
        "resource": "/ask",
        "path": "/ask",
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": {"stage": "prod", "requestId": "c6af9ac6"},
        "body": '{"q": 1}',
    }, LambdaContext()


def alb_multi_value_only(carrier: dict[str, Any]) -> tuple[Any, Any]:
    multi = {"host": ["alb.example.com"]} | {
        k.title() if isinstance(k, str) else k: [v, "second"] for k, v in carrier.items()
    }
    return {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/t/1"}},
        "httpMethod": "GET",
        "path": "/",
        "multiValueHeaders": multi,
        "body": "",
    }, LambdaContext()


def api_gateway_v2(carrier: dict[str, Any]) -> tuple[Any, Any]:
    return {
        "version": "2.0",
        "routeKey": "POST /ask",
        "rawPath": "/ask",
        "headers": {"content-type": "application/json", **carrier},
        "requestContext": {"http": {"method": "POST", "path": "/ask"}},
        "body": '{"q": 1}',
        "isBase64Encoded": False,
    }, LambdaContext()


def sqs(carrier: dict[str, Any]) -> tuple[Any, Any]:
    return {"Records": [sqs_record(carrier)]}, LambdaContext()


def sqs_from_sns(carrier: dict[str, Any]) -> tuple[Any, Any]:
    return {
        "Records": [sqs_record({}, body=json.dumps(sns_message(carrier), default=str, skipkeys=True))]
    }, LambdaContext()


def sns(carrier: dict[str, Any]) -> tuple[Any, Any]:
    return {"Records": [sns_record(carrier)]}, LambdaContext()


def eventbridge(carrier: dict[str, Any]) -> tuple[Any, Any]:
    return {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "Order placed",
        "source": "shop.orders",
        "account": "123456789012",
        "time": "2026-11-27T12:00:00Z",
        "region": "eu-west-1",
        "resources": [],
        "detail": {"order": 17, "_posthog": carrier},
    }, LambdaContext()


def step_functions(carrier: dict[str, Any]) -> tuple[Any, Any]:
    return {"order": 17, "_posthog": carrier}, LambdaContext()


def context_w3c(carrier: dict[str, Any]) -> tuple[Any, Any]:
    return {"order": 17}, W3CContext(carrier)


def context_client_context(carrier: dict[str, Any]) -> tuple[Any, Any]:
    return {"order": 17}, ClientContextContext({"app": "mobile", **carrier})


SHAPES: dict[str, Callable[[dict[str, Any]], tuple[Any, Any]]] = {
    "api-gateway-v1": api_gateway_v1,
    "alb-multi-value-headers": alb_multi_value_only,
    "api-gateway-v2": api_gateway_v2,
    "sqs": sqs,
    "sqs-sns-envelope": sqs_from_sns,
    "sns": sns,
    "eventbridge": eventbridge,
    "step-functions": step_functions,
    "context-w3c": context_w3c,
    "context-client-context": context_client_context,
}


@pytest.mark.parametrize("shape", SHAPES)
def test_b_continues_a_in_every_event_shape(events: list[Any], shape: str) -> None:
    sent = send()
    event, context = SHAPES[shape](sent.carrier)
    b_events = receive(events, event, context)
    assert_continues(events, b_events, sent)
    assert dropped_counts() == {}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_same_shapes_without_a_carrier_start_a_trace(events: list[Any], shape: str) -> None:
    event, context = SHAPES[shape]({})
    assert_fresh(receive(events, event, context))
    assert dropped_counts() == {}


def test_a_w3c_context_that_raises_falls_back_to_the_client_context(events: list[Any]) -> None:
    sent = send()

    class Broken(ClientContextContext):
        def w3c(self) -> dict[str, Any]:
            raise RuntimeError("no client context")

    assert_continues(events, receive(events, {}, Broken(sent.carrier)), sent)


def test_the_event_carrier_wins_over_the_context(events: list[Any]) -> None:
    first, second = send(), send()
    b_events = receive(events, {"_posthog": second.carrier}, W3CContext(first.carrier))
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {second.trace_id}


@pytest.mark.parametrize("event", [[1, 2], "a string", None, 42, b"bytes", ("t", {"_posthog": {}})])
def test_an_event_that_is_not_a_dict_is_untouched(events: list[Any], event: Any) -> None:
    assert_fresh(receive(events, event, LambdaContext()))
    assert dropped_counts() == {}


def test_an_event_that_is_not_a_dict_still_continues_the_context(events: list[Any]) -> None:
    sent = send()
    assert_continues(events, receive(events, ["not", "a", "dict"], W3CContext(sent.carrier)), sent)


@pytest.mark.parametrize(
    "event",
    [
        {"headers": None, "multiValueHeaders": None, "body": "x"},
        {"headers": "traceparent: " + FOREIGN_TP},
        {"Records": "not a list"},
        {"Records": [None, 1, "x", [], {"messageAttributes": "no"}, {"Sns": {"MessageAttributes": []}}]},
        {"Records": [sqs_record({}, body='{"TopicArn": "x", "Type": "Notification", "MessageAttributes": 5}')]},
        {"Records": [sqs_record({}, body='{"TopicArn": ' + "[" * 100_000 + "]" * 100_000 + "}")]},
        {"Records": [sqs_record({}, body='{"TopicArn": broken')]},
        {"detail": {"_posthog": {"traceparent": FOREIGN_TP}}},  # not EventBridge: no detail-type
        {"_posthog": "00-not-a-mapping"},
    ],
)
def test_odd_events_carry_nothing(events: list[Any], event: Any) -> None:
    assert_fresh(receive(events, event, LambdaContext()))
    assert dropped_counts() == {}


# -- parent= and the user's options ---------------------------------------------------------


def test_an_explicit_distinct_id_wins_over_the_carrier(events: list[Any]) -> None:
    sent = send()
    b_events = receive(events, {"_posthog": sent.carrier}, distinct_id="explicit-user")
    assert_continues(events, b_events, sent, distinct_id="explicit-user")


def test_an_explicit_session_id_wins_over_the_carrier(events: list[Any]) -> None:
    sent = send()
    b_events = receive(events, {"_posthog": sent.carrier}, session_id=lambda event, context: "own-session")
    assert_continues(events, b_events, sent, session_id="own-session")


def test_a_distinct_id_callable_giving_none_falls_back_to_the_carrier(events: list[Any]) -> None:
    sent = send()
    b_events = receive(events, {"_posthog": sent.carrier}, distinct_id=lambda event, context: None)
    assert_continues(events, b_events, sent)


def test_parent_false_ignores_the_carrier(events: list[Any]) -> None:
    sent = send()
    trace = assert_fresh(receive(events, {"_posthog": sent.carrier}, parent=False), not_trace=sent.trace_id)
    assert trace["distinct_id"] != "user-42"
    assert "$ai_session_id" not in trace["properties"]
    assert dropped_counts() == {}


def test_parent_true_reads_the_event(events: list[Any]) -> None:
    sent = send()
    assert_continues(events, receive(events, {"_posthog": sent.carrier}, parent=True), sent)


def test_parent_mapping_wins_over_the_event(events: list[Any]) -> None:
    in_event, chosen = send(), send()
    b_events = receive(events, {"_posthog": in_event.carrier}, parent=chosen.carrier)
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {chosen.trace_id}
    [root] = roots(b_events)
    assert root["properties"]["$ai_parent_id"] == chosen.span_id
    assert trace_tree_problems(events) == []


def test_parent_callable_wins_over_the_event(events: list[Any]) -> None:
    in_event, chosen = send(), send()
    calls: list[Any] = []

    def choose(event: Any, context: Any) -> dict[str, Any]:
        calls.append((event, context))
        return {"X-Custom": "1", **chosen.carrier}

    event, context = {"_posthog": in_event.carrier, "custom": 1}, LambdaContext()
    b_events = receive(events, event, context, parent=choose)
    assert calls == [(event, context)]
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {chosen.trace_id}
    [root] = roots(b_events)
    assert root["properties"]["$ai_parent_id"] == chosen.span_id


def test_parent_callable_giving_none_starts_a_trace(events: list[Any]) -> None:
    sent = send()
    assert_fresh(receive(events, {"_posthog": sent.carrier}, parent=lambda e, c: None), not_trace=sent.trace_id)
    assert dropped_counts() == {}


def test_parent_callable_that_raises_starts_a_trace(events: list[Any], library_logs: pytest.LogCaptureFixture) -> None:
    sent = send()

    def broken(event: Any, context: Any) -> dict[str, str]:
        raise KeyError("headers")

    assert_fresh(receive(events, {"_posthog": sent.carrier}, parent=broken), not_trace=sent.trace_id)
    assert "reading the trace to continue failed" in library_logs.text
    assert "KeyError" in library_logs.text


@pytest.mark.parametrize("given", ["00-" + FOREIGN_TRACE, 42, [("traceparent", FOREIGN_TP)], b"x"])
def test_parent_callable_giving_a_non_mapping_starts_a_trace_counted(events: list[Any], given: Any) -> None:
    sent = send()
    assert_fresh(receive(events, {"_posthog": sent.carrier}, parent=lambda e, c: given), not_trace=sent.trace_id)
    assert dropped_counts() == {INVALID: 1}


def test_parent_mapping_that_is_malformed_is_counted(events: list[Any]) -> None:
    sent = send()
    bad = {"traceparent": "ff-" + FOREIGN_TP[3:]}
    assert_fresh(receive(events, {"_posthog": sent.carrier}, parent=bad), not_trace=sent.trace_id)
    assert dropped_counts() == {INVALID: 1}


@pytest.mark.parametrize("bad", [42, "00-" + FOREIGN_TRACE, 1.5, b"carrier", object()])
def test_parent_of_the_wrong_type_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="parent="):
        posthog_traced(parent=bad)


# -- what a carrier may name ------------------------------------------------------------------


def test_a_foreign_traceparent_alone(events: list[Any]) -> None:
    b_events = receive(events, {"headers": {"traceparent": FOREIGN_TP}})
    assert by_kind(b_events, "$ai_trace") == []
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {FOREIGN_TRACE}
    [root] = roots(b_events)
    assert root["event"] == "$ai_span"
    assert root["properties"]["lambda_root"] is True
    assert root["properties"]["$ai_parent_id"] == FOREIGN_TRACE
    child = one(b_events, "$ai_span", "b-child")["properties"]
    assert child["$ai_parent_id"] == root["properties"]["$ai_span_id"]
    assert trace_tree_problems(b_events) == []
    assert dropped_counts() == {}


@pytest.mark.parametrize(
    "traceparent",
    [
        f"cc-{FOREIGN_TRACE}-b7ad6b7169203331-01",  # a later version, as version 00
        f"cc-{FOREIGN_TRACE}-b7ad6b7169203331-01-what-comes-later",
        f"00-{FOREIGN_TRACE}-b7ad6b7169203331-00",  # not sampled: PostHog keeps it anyway
        f"  00-{FOREIGN_TRACE}-b7ad6b7169203331-01 ",
    ],
)
def test_traceparents_the_spec_allows(events: list[Any], traceparent: str) -> None:
    b_events = receive(events, {"headers": {"traceparent": traceparent}})
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {FOREIGN_TRACE}
    assert dropped_counts() == {}


def test_posthog_members_win_over_a_traceparent_another_hop_rewrote(events: list[Any]) -> None:
    sent = send()
    rewritten = {**sent.carrier, "traceparent": FOREIGN_TP}
    assert_continues(events, receive(events, {"headers": rewritten}), sent)


def test_posthog_js_headers_alone(events: list[Any]) -> None:
    event, context = api_gateway_v1({"X-POSTHOG-DISTINCT-ID": "web-user", "X-POSTHOG-SESSION-ID": "web-session"})
    trace = assert_fresh(receive(events, event, context))
    assert trace["distinct_id"] == "web-user"
    assert trace["properties"]["$ai_session_id"] == "web-session"
    assert dropped_counts() == {}


def test_posthog_js_headers_with_a_foreign_traceparent(events: list[Any]) -> None:
    carrier = {"traceparent": FOREIGN_TP, "x-posthog-distinct-id": " web-user ", "x-posthog-session-id": "web-session"}
    b_events = receive(events, {"headers": carrier})
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {FOREIGN_TRACE}
    assert {e["distinct_id"] for e in b_events} == {"web-user"}
    assert {e["properties"]["$ai_session_id"] for e in b_events} == {"web-session"}


def test_baggage_user_wins_over_posthog_js_headers(events: list[Any]) -> None:
    sent = send()
    carrier = {**sent.carrier, "x-posthog-distinct-id": "header-user", "x-posthog-session-id": "header-session"}
    assert_continues(events, receive(events, {"headers": carrier}), sent)


def test_blank_posthog_js_headers_name_nobody(events: list[Any]) -> None:
    trace = assert_fresh(receive(events, {"headers": {"x-posthog-distinct-id": "  ", "x-posthog-session-id": ""}}))
    assert "$ai_session_id" not in trace["properties"]
    assert trace["distinct_id"] == trace["properties"]["$ai_trace_id"]


def test_read_unit() -> None:
    assert read({}) is None
    odd: dict[Any, Any] = {"content-type": "text/plain", 1: 2}
    assert read(odd) is None
    parent = read({"Traceparent": FOREIGN_TP})
    assert parent is not None
    assert (parent.trace_id, parent.span_id, parent.distinct_id) == (FOREIGN_TRACE, None, None)
    parent = read({"baggage": "x=1, posthog.span_id = s-1 ;p, posthog.trace_id=t-1"})
    assert parent is not None
    assert (parent.trace_id, parent.span_id) == ("t-1", "s-1")
    parent = read({"baggage": "posthog.distinct_id=u%2C1"})
    assert parent is not None
    assert (parent.trace_id, parent.distinct_id) == (None, "u,1")
    with pytest.raises(InvalidCarrier):
        read({"traceparent": FOREIGN_TP.upper()})


# -- hostile and malformed carriers -----------------------------------------------------------

_OURS = "posthog.trace_id=t-1,posthog.span_id=s-1"

HOSTILE: dict[str, dict[str, Any]] = {
    "version ff": {"traceparent": "ff-" + FOREIGN_TP[3:]},
    "version not hex": {"traceparent": "0g-" + FOREIGN_TP[3:]},
    "version uppercase": {"traceparent": "0A-" + FOREIGN_TP[3:]},
    "version 00 with more fields": {"traceparent": FOREIGN_TP + "-extra"},
    "later version, no dash after flags": {"traceparent": "cc-" + FOREIGN_TP[3:] + "x"},
    "trace id 31 digits": {"traceparent": f"00-{FOREIGN_TRACE[:31]}-b7ad6b7169203331-01"},
    "trace id 33 digits": {"traceparent": f"00-{FOREIGN_TRACE}0-b7ad6b7169203331-01"},
    "span id 15 digits": {"traceparent": f"00-{FOREIGN_TRACE}-b7ad6b716920333-01"},
    "flags 1 digit": {"traceparent": f"00-{FOREIGN_TRACE}-b7ad6b7169203331-1"},
    "flags not hex": {"traceparent": f"00-{FOREIGN_TRACE}-b7ad6b7169203331-0x"},
    "too short": {"traceparent": "00-abc-def-01"},
    "empty": {"traceparent": ""},
    "uppercase hex": {"traceparent": FOREIGN_TP.upper()},
    "uppercase trace id": {"traceparent": f"00-{FOREIGN_TRACE.upper()}-b7ad6b7169203331-01"},
    "uppercase span id": {"traceparent": f"00-{FOREIGN_TRACE}-B7AD6B7169203331-01"},
    "all-zero trace id": {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"},
    "all-zero span id": {"traceparent": f"00-{FOREIGN_TRACE}-{'0' * 16}-01"},
    "non-hex trace id": {"traceparent": f"00-{FOREIGN_TRACE[:-1]}z-b7ad6b7169203331-01"},
    "wrong separators": {"traceparent": FOREIGN_TP.replace("-", "_")},
    "100 KB traceparent": {"traceparent": "00-" + "a" * 100_000},
    "valid posthog baggage, bad traceparent": {"traceparent": "ff-" + FOREIGN_TP[3:], "baggage": _OURS},
    "baggage over 8192 characters": {"baggage": _OURS + ",filler=" + "x" * 8200},
    "baggage over 8192 bytes, under in characters": {"baggage": _OURS + ",filler=" + "é" * 4100},
    "baggage of 181 members": {"baggage": _OURS + "".join(f",k{i}=v" for i in range(179))},
    "bad percent escape": {"baggage": _OURS + ",posthog.distinct_id=a%zz"},
    "truncated percent escape": {"baggage": _OURS + ",posthog.distinct_id=abc%4"},
    "percent at the end": {"baggage": _OURS + ",posthog.session_id=abc%"},
    "percent-decoded invalid UTF-8": {"baggage": _OURS + ",posthog.distinct_id=%FF%FE"},
    "percent-decoded truncated UTF-8": {"baggage": _OURS + ",posthog.distinct_id=caf%C3"},
    "trace id without span id": {"baggage": "posthog.trace_id=t-1"},
    "span id without trace id": {"baggage": "posthog.span_id=s-1", "traceparent": FOREIGN_TP},
    "empty trace id": {"baggage": "posthog.trace_id=,posthog.span_id=s-1"},
    "member without a value": {"baggage": "posthog.trace_id,posthog.span_id=s-1"},
    "distinct id of 513 characters": {"baggage": _OURS + ",posthog.distinct_id=" + "u" * 513},
    "trace id of 513 characters": {"baggage": "posthog.span_id=s-1,posthog.trace_id=" + "t" * 513},
    "x-posthog-distinct-id of 513 characters": {"x-posthog-distinct-id": "u" * 513},
    "x-posthog-session-id over 8192": {"x-posthog-session-id": "s" * 9000},
    "traceparent an int": {"traceparent": 1234},
    "baggage an int": {"baggage": 5, "traceparent": FOREIGN_TP},
    "traceparent None": {"traceparent": None},
    "traceparent a dict": {"traceparent": {"value": FOREIGN_TP}},
    "distinct id header a float": {"X-PostHog-Distinct-Id": 1.5},
    "traceparent bytes": {"traceparent": FOREIGN_TP.encode()},
    "multi-value list of ints": {"traceparent": [1, 2]},
    "empty multi-value list": {"traceparent": []},
}


@pytest.mark.parametrize("deliver", ["headers", "_posthog"])
@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_carrier_starts_a_trace_counted_once(events: list[Any], name: str, deliver: str) -> None:
    carrier = HOSTILE[name]
    with pytest.raises(InvalidCarrier):
        read(carrier)
    b_events = receive(events, {deliver: carrier}, LambdaContext())
    trace = assert_fresh(b_events)
    assert trace["properties"]["$ai_trace_id"] not in ("t-1", FOREIGN_TRACE)
    assert dropped_counts() == {INVALID: 1}


def test_the_limits_themselves_are_allowed(events: list[Any]) -> None:
    carrier = {
        "baggage": ",".join([_OURS, "posthog.distinct_id=" + "u" * 512, *(f"k{i}=v" for i in range(177))]),
        "traceparent": FOREIGN_TP,
    }
    assert len(carrier["baggage"].split(",")) == 180
    assert len(carrier["baggage"]) <= 8192
    b_events = receive(events, {"headers": carrier})
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {"t-1"}
    assert {e["distinct_id"] for e in b_events} == {"u" * 512}
    assert dropped_counts() == {}


def _random_text(rng: random.Random, size: int) -> str:
    alphabet = string.printable + "é雪❄%=,;-0123456789abcdef\x00\x7f\u200b\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(size))


def _mutated(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        where = rng.randrange(len(chars) + 1)
        action = rng.choice(("replace", "delete", "insert", "upper", "duplicate"))
        if action == "replace" and where < len(chars):
            chars[where] = rng.choice(_random_text(rng, 4))
        elif action == "delete" and where < len(chars):
            del chars[where]
        elif action == "insert":
            chars.insert(where, rng.choice("-%,;= 0fF\x00é"))
        elif action == "upper":
            chars = list("".join(chars).upper())
        elif action == "duplicate":
            chars[where:where] = chars[: rng.randint(0, 60)]
    return "".join(chars)


def _random_value(rng: random.Random, valid: str) -> Any:
    pick = rng.randrange(10)
    if pick < 4:
        return _mutated(rng, valid)
    if pick == 4:
        return _random_text(rng, rng.choice((0, 1, 55, 300, 9000)))
    if pick == 5:
        return rng.randbytes(rng.randint(0, 80))
    if pick == 6:
        return rng.choice((0, -1, 2**70, 1.5, float("nan"), True, None))
    if pick == 7:
        return [_mutated(rng, valid), rng.randbytes(3)][: rng.randint(0, 2)]
    if pick == 8:
        return {"stringValue": valid}
    return valid


def _random_carrier(rng: random.Random) -> dict[Any, Any]:
    valid = {
        "traceparent": FOREIGN_TP,
        "baggage": _OURS + ",posthog.distinct_id=u%2C1,other=x;p=1",
        "x-posthog-distinct-id": "web-user",
        "x-posthog-session-id": "web-session",
    }
    carrier: dict[Any, Any] = {}
    for name, value in valid.items():
        if rng.random() < 0.6:
            key = "".join(c.upper() if rng.random() < 0.3 else c for c in name)
            carrier[key] = _random_value(rng, value)
    for _ in range(rng.randint(0, 3)):
        carrier[rng.choice((_random_text(rng, 8), 7, None, ("t",)))] = _random_value(rng, "x")
    return carrier


def test_a_few_hundred_random_carriers_never_break_the_handler(events: list[Any]) -> None:
    rng = random.Random(20261127)
    counted = continued = 0
    for _ in range(400):
        carrier = _random_carrier(rng)
        shape = rng.choice(list(SHAPES))
        event, context = SHAPES[shape](carrier)
        before = dropped_counts().get(INVALID, 0)
        b_events = receive(events, event, context)
        added = dropped_counts().get(INVALID, 0) - before
        assert added in (0, 1), (shape, carrier)
        counted += added
        [root] = roots(b_events)
        root_id = root["properties"].get("$ai_span_id") or root["properties"]["$ai_trace_id"]
        assert {e["properties"]["$ai_trace_id"] for e in b_events} == {root["properties"]["$ai_trace_id"]}
        assert one(b_events, "$ai_span", "b-child")["properties"]["$ai_parent_id"] == root_id, (shape, carrier)
        if added or root["event"] == "$ai_trace":
            assert_fresh(b_events)
        else:
            assert root["properties"]["$ai_parent_id"], (shape, carrier)
            continued += 1
    assert set(dropped_counts()) <= {INVALID}
    # The seed gives a mix: most carriers are mangled, some are not.
    assert 100 < counted < 400
    assert continued > 10


# A lone surrogate (JSON can carry "\ud800": a Step Functions input, an EventBridge detail) in a
# percent-encoded value once raised UnicodeEncodeError past parent_of: uncounted, and the good
# records of the same batch were lost with it.
def test_a_lone_surrogate_in_an_escaped_value_is_an_invalid_carrier(events: list[Any]) -> None:
    hostile = {"baggage": "posthog.trace_id=t\ud800%41,posthog.span_id=s-1"}
    with pytest.raises(InvalidCarrier):
        read(hostile)
    sent = send()
    b_events = receive(events, {"Records": [sqs_record(hostile), sqs_record(sent.carrier)]}, capture_input=False)
    assert_continues(events, b_events, sent)
    assert dropped_counts() == {INVALID: 1}


# A lone surrogate in an unescaped id was once taken as the trace id: every event of the
# invocation then failed to encode as UTF-8 and the whole trace was dropped as sink_error.
def test_a_lone_surrogate_in_an_id_does_not_lose_the_trace(events: list[Any]) -> None:
    hostile = {"baggage": "posthog.trace_id=t\ud800,posthog.span_id=s-1,posthog.distinct_id=u\udc00"}
    b_events = receive(events, {}, W3CContext(hostile))
    assert b_events, dropped_counts()
    assert_fresh(b_events)
    for event in b_events:
        # Refused, not carried: what dumps would write as U+FFFD never reached an event.
        assert "\ufffd" not in limits.dumps(event).decode("utf-8")
    assert dropped_counts() == {INVALID: 1}


# inject once wrote carriers its own reader refuses (the next function then started a trace of its
# own): a distinct id over 512 characters, and foreign baggage members that, with PostHog's four,
# went over 180 members or 8192 bytes. Now what does not fit is left out, and counted.
@pytest.mark.parametrize(
    ("distinct_id", "baggage"),
    [
        ("u" * 600, None),
        ("user-42", ",".join(f"k{i}=v" for i in range(178))),
        ("user-42", "filler=" + "x" * 8100),
    ],
    ids=["long-distinct-id", "foreign-members", "foreign-bytes"],
)
def test_what_inject_writes_read_accepts(events: list[Any], distinct_id: str, baggage: str | None) -> None:
    written: list[Any] = []

    @posthog_traced(distinct_id=distinct_id)
    def a(event: Any, context: Any) -> None:
        with span("send") as sending:
            carrier = {} if baggage is None else {"baggage": baggage}
            written.append(Sent(dict(inject(carrier)), sending.span_id, sending.trace_id))

    a({}, None)
    sent = written[0]
    parent = read(sent.carrier)
    assert parent is not None
    assert (parent.trace_id, parent.span_id) == (sent.trace_id, sent.span_id)
    assert dropped_counts().get("trace_context_not_sent", 0) >= 1  # what was left out is counted


def test_a_message_naming_only_the_user_does_not_hide_the_trace_of_the_next(events: list[Any]) -> None:
    sent = send()
    identity_only = {"x-posthog-distinct-id": "someone"}
    b_events = receive(events, {"Records": [sqs_record(identity_only), sqs_record(sent.carrier)]})
    assert_continues(events, b_events, sent)


def test_repeated_baggage_headers_are_combined(events: list[Any]) -> None:
    sent = send()
    members = sent.carrier["baggage"].split(",")
    headers = {"traceparent": [sent.carrier["traceparent"]], "baggage": [members[0], ",".join(members[1:])]}
    b_events = receive(events, {"multiValueHeaders": headers})
    assert_continues(events, b_events, sent)


# -- batches ----------------------------------------------------------------------------------


def test_a_batch_from_one_trace_continues_it_under_the_first_message(events: list[Any]) -> None:
    written: list[Sent] = []

    @posthog_traced(name="a", distinct_id="user-42", session_id="sess-7")
    def a(event: Any, context: Any) -> None:
        for name in ("send-1", "send-2"):
            with span(name) as sending:
                written.append(Sent(dict(inject()), sending.span_id, sending.trace_id))

    a({}, None)
    first, second = written
    assert first.trace_id == second.trace_id
    assert first.span_id != second.span_id
    b_events = receive(events, {"Records": [sqs_record(first.carrier), sqs_record(second.carrier)]})
    assert_continues(events, b_events, first)
    assert dropped_counts() == {}


def test_a_batch_from_several_traces_is_a_trace_of_its_own_naming_them(events: list[Any]) -> None:
    one_trace, other, again = send(), send(distinct_id="other-user"), send()
    assert one_trace.trace_id != other.trace_id
    records = [sqs_record(one_trace.carrier), sqs_record(other.carrier), sqs_record(one_trace.carrier)]
    b_events = receive(events, {"Records": records})
    trace = assert_fresh(b_events)
    assert trace["properties"]["linked_trace_ids"] == [one_trace.trace_id, other.trace_id]
    assert trace["properties"]["$ai_trace_id"] not in (one_trace.trace_id, other.trace_id, again.trace_id)
    assert "linked_trace_ids" not in one(b_events, "$ai_span", "b-child")["properties"]
    assert dropped_counts() == {}


def test_an_sns_batch_from_several_traces(events: list[Any]) -> None:
    first, second = send(), send()
    trace = assert_fresh(receive(events, {"Records": [sns_record(first.carrier), sns_record(second.carrier)]}))
    assert trace["properties"]["linked_trace_ids"] == [first.trace_id, second.trace_id]


def test_a_batch_with_a_malformed_record_continues_the_good_one(events: list[Any]) -> None:
    sent = send()
    bad = {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}
    b_events = receive(events, {"Records": [sqs_record(bad), sqs_record({}), sqs_record(sent.carrier)]})
    assert_continues(events, b_events, sent)
    assert dropped_counts() == {INVALID: 1}


def test_a_batch_of_malformed_records_counts_each(events: list[Any]) -> None:
    bad = {"traceparent": "ff-" + FOREIGN_TP[3:]}
    assert_fresh(receive(events, {"Records": [sqs_record(bad), sqs_record(bad), sqs_record({})]}))
    assert dropped_counts() == {INVALID: 2}


def test_parent_of_unit() -> None:
    assert parent_of([]) == (None, [])
    same = {"traceparent": FOREIGN_TP}
    parent, linked = parent_of([same, same])
    assert parent is not None
    assert (parent.trace_id, linked) == (FOREIGN_TRACE, [])
    other = {"baggage": _OURS}
    parent, linked = parent_of([same, other, same])
    assert (parent, linked) == (None, [FOREIGN_TRACE, "t-1"])
