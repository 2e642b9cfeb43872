"""distinct_id, session id, custom properties and groups, and their precedence."""

from __future__ import annotations

from typing import Any

import pytest

from posthog_lambda import configure, generation, posthog_traced, span
from tests.helpers import LambdaContext, one


def test_distinct_id_fallback_is_the_trace_id_without_a_person_profile(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with span("s"):
            pass

    handler({}, None)
    trace = one(events, "$ai_trace")
    assert trace["distinct_id"] == trace["properties"]["$ai_trace_id"]
    for event in events:
        assert event["distinct_id"] == trace["distinct_id"]
        assert event["properties"]["$process_person_profile"] is False


def test_default_distinct_id_from_environment(events: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_DEFAULT_DISTINCT_ID", "lambda-service")

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        return None

    handler({}, None)
    trace = one(events, "$ai_trace")
    assert trace["distinct_id"] == "lambda-service"
    assert "$process_person_profile" not in trace["properties"]


def test_decorator_distinct_id_wins_over_default(events: list[Any]) -> None:
    configure(default_distinct_id="service")

    @posthog_traced(distinct_id="user-1")
    def fixed(event: Any, context: Any) -> None:
        return None

    @posthog_traced(distinct_id=lambda event, context: event.get("user"))
    def from_event(event: Any, context: Any) -> None:
        return None

    fixed({}, None)
    from_event({"user": "user-2"}, None)
    from_event({}, None)  # the callable returns None: the default applies
    assert [e["distinct_id"] for e in events] == ["user-1", "user-2", "service"]


def test_session_id_callable_gets_event_and_context(events: list[Any]) -> None:
    @posthog_traced(session_id=lambda event, context: f"{event['conversation']}:{context.function_name}")
    def handler(event: Any, context: Any) -> None:
        with generation("g"):
            pass

    handler({"conversation": "c-1"}, LambdaContext())
    for event in events:
        assert event["properties"]["$ai_session_id"] == "c-1:ask"


def test_custom_properties_and_groups_on_every_event_without_overriding_library_fields(events: list[Any]) -> None:
    @posthog_traced(
        properties={"tenant": "acme", "$ai_trace_id": "forged", "$ai_latency": -1},
        groups={"company": "acme-inc"},
    )
    def handler(event: Any, context: Any) -> None:
        with span("s", properties={"$ai_span_name": "forged", "step": 1, "tenant": "override"}):
            pass

    handler({}, LambdaContext())
    trace = one(events, "$ai_trace")["properties"]
    child = one(events, "$ai_span")["properties"]
    assert trace["$ai_trace_id"] != "forged"
    assert trace["$ai_latency"] >= 0
    assert child["$ai_trace_id"] == trace["$ai_trace_id"]
    assert child["$ai_span_name"] == "s"
    assert trace["tenant"] == "acme"
    assert child["tenant"] == "override"  # the span's own property is more specific
    assert child["step"] == 1
    for event in events:
        assert event["properties"]["$groups"] == {"company": "acme-inc"}
        assert event["properties"]["lambda_request_id"] == "req-1"


def test_properties_are_snapshotted_at_decoration(events: list[Any]) -> None:
    props = {"version": "1"}

    @posthog_traced(properties=props)
    def handler(event: Any, context: Any) -> None:
        return None

    props["version"] = "2"
    handler({}, None)
    assert one(events, "$ai_trace")["properties"]["version"] == "1"
