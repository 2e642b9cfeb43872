"""Privacy mode removes inputs and outputs from every event kind; redaction of secrets."""

from __future__ import annotations

from typing import Any

import pytest

from posthog_lambda import (
    capture_feedback,
    capture_metric,
    configure,
    embedding,
    generation,
    posthog_traced,
    span,
)
from posthog_lambda_contract.jsonable import REDACTED
from tests.helpers import one

PRIVATE = ("$ai_input", "$ai_output_choices", "$ai_input_state", "$ai_output_state")


def _all_kinds(**decorator: Any) -> Any:
    @posthog_traced(**decorator)
    def handler(event: Any, context: Any) -> str:
        with span("retrieve", input="user question") as s:
            s.update(output=["private doc"])
        with generation("answer", model="gpt-4o", provider="openai", input="user question") as g:
            g.chunk("private ")
            g.update(output="private answer", input_tokens=10, output_tokens=2, total_cost_usd=0.01)
        with embedding("embed", model="e", input="user question") as e:
            e.update(input_tokens=3)
        capture_feedback("t-1", "great")
        capture_metric("t-1", "score", 1)
        return "private result"

    return handler


def _assert_private(events: list[Any]) -> None:
    kinds = {e["event"] for e in events}
    assert kinds == {"$ai_trace", "$ai_span", "$ai_generation", "$ai_embedding", "$ai_feedback", "$ai_metric"}
    for event in events:
        leaked = [k for k in PRIVATE if k in event["properties"]]
        assert leaked == [], f"{event['event']} kept {leaked}"
        assert "private" not in str(event)
    gen = one(events, "$ai_generation")["properties"]
    assert (gen["$ai_model"], gen["$ai_input_tokens"], gen["$ai_output_tokens"]) == ("gpt-4o", 10, 2)
    assert gen["$ai_total_cost_usd"] == 0.01
    assert "$ai_latency" in gen
    assert "$ai_time_to_first_token" in gen
    assert one(events, "$ai_trace")["properties"]["$ai_latency"] >= 0


def test_privacy_mode_from_environment(events: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_PRIVACY_MODE", "true")
    _all_kinds()({"question": "private"}, None)
    _assert_private(events)


def test_privacy_mode_from_configure(events: list[Any]) -> None:
    configure(privacy_mode=True)
    _all_kinds()({"question": "private"}, None)
    _assert_private(events)


def test_privacy_mode_per_decorator(events: list[Any]) -> None:
    _all_kinds(privacy_mode=True)({"question": "private"}, None)
    _assert_private(events)


def test_decorator_can_turn_privacy_off_where_configured_on(events: list[Any]) -> None:
    configure(privacy_mode=True)
    _all_kinds(privacy_mode=False)({"question": "q"}, None)
    assert one(events, "$ai_trace")["properties"]["$ai_output_state"] == "private result"


def test_privacy_mode_outside_a_handler(events: list[Any]) -> None:
    configure(privacy_mode=True)
    with generation("solo", input="private") as g:
        g.update(output="private")
    assert "private" not in str(events)


def test_user_property_named_like_a_private_field_is_removed_too(events: list[Any]) -> None:
    configure(privacy_mode=True)
    with span("s", properties={"$ai_input": "private"}):
        pass
    assert "$ai_input" not in one(events, "$ai_span")["properties"]


API_GATEWAY_V1 = {
    "resource": "/chat",
    "httpMethod": "POST",
    "headers": {
        "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "Cookie": "session=abc",
        "X-Api-Key": "k-123",
        "Content-Type": "application/json",
    },
    "multiValueHeaders": {"authorization": ["Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig"]},
    "queryStringParameters": {"token": "t-1", "q": "paris"},
    "requestContext": {"identity": {"sourceIp": "203.0.113.9"}},
    "body": '{"message": "hi"}',
}
API_GATEWAY_V2 = {
    "version": "2.0",
    "headers": {"authorization": "Bearer v2-secret", "x-amz-security-token": "sts"},
    "cookies": ["session=abc", "theme=dark"],
    "body": "hi",
}


def test_api_gateway_event_secrets_redacted(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> Any:
        return {"statusCode": 200, "headers": {"Set-Cookie": "session=new"}, "body": "ok"}

    handler(API_GATEWAY_V1, None)
    handler(API_GATEWAY_V2, None)
    first, second = (e["properties"] for e in events if e["event"] == "$ai_trace")
    v1 = first["$ai_input_state"]
    assert v1["headers"]["Authorization"] == REDACTED
    assert v1["headers"]["Cookie"] == REDACTED
    assert v1["headers"]["X-Api-Key"] == REDACTED
    assert v1["headers"]["Content-Type"] == "application/json"
    assert v1["multiValueHeaders"]["authorization"] == REDACTED
    assert v1["queryStringParameters"] == {"token": REDACTED, "q": "paris"}
    assert v1["body"] == '{"message": "hi"}'
    assert first["$ai_output_state"]["headers"]["Set-Cookie"] == REDACTED
    v2 = second["$ai_input_state"]
    assert v2["headers"] == {"authorization": REDACTED, "x-amz-security-token": REDACTED}
    assert v2["cookies"] == REDACTED
    assert "eyJhbGci" not in str(events)
    assert "v2-secret" not in str(events)
    # The caller's own event is untouched.
    assert API_GATEWAY_V1["headers"]["Authorization"].startswith("Bearer")  # type: ignore[index]


def test_redaction_is_nested_case_insensitive_and_covers_all_captured_data(events: list[Any]) -> None:
    with span("s", input={"config": {"DB": {"Password": "hunter2", "client_secret": "cs"}}}) as s:
        s.update(output=[{"apiKey": "sk-live"}], properties={"access_token": "at", "ok": 1})
    props = one(events, "$ai_span")["properties"]
    assert props["$ai_input_state"]["config"]["DB"] == {"Password": REDACTED, "client_secret": REDACTED}
    assert props["$ai_output_state"] == [{"apiKey": REDACTED}]
    assert props["access_token"] == REDACTED
    assert props["ok"] == 1
    # Token counts are not secrets: only exact key names are redacted.
    with generation("g", model_parameters={"max_tokens": 5}) as g:
        g.update(input_tokens=3)
    assert one(events, "$ai_generation")["properties"]["$ai_max_tokens"] == 5


def test_redact_keys_configurable_and_redaction_can_be_off(events: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_LAMBDA_REDACT_KEYS", "ssn, Card-Number")
    with span("env", input={"ssn": "1", "card_number": "4111", "password": "p"}):
        pass
    assert one(events, "$ai_span", "env")["properties"]["$ai_input_state"] == {
        "ssn": REDACTED,
        "card_number": REDACTED,
        "password": "p",
    }
    configure(redact=False)
    with span("off", input={"ssn": "1"}):
        pass
    assert one(events, "$ai_span", "off")["properties"]["$ai_input_state"] == {"ssn": "1"}
    configure(redact=True, redact_keys=["email"])
    with span("configured", input={"email": "a@b.c", "ssn": "1"}):
        pass
    assert one(events, "$ai_span", "configured")["properties"]["$ai_input_state"] == {"email": REDACTED, "ssn": "1"}
