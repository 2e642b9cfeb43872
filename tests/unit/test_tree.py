"""The events of a trace form the tree PostHog's trace view draws (reference: the tree rule)."""

from __future__ import annotations

import uuid
from typing import Any

from posthog_lambda import generation, posthog_traced, span
from posthog_lambda.testing import trace_tree_problems
from tests.helpers import one


def _three_levels() -> Any:
    @posthog_traced(name="chat", distinct_id="user-1")
    def handler(event: Any, context: Any) -> str:
        with span("retrieve", input=event["q"]) as s:
            s.update(output=["doc"])
            with generation("rerank", model="m"):
                pass
        with generation("answer", model="gpt-4o", provider="openai", input=event["q"]) as g:
            g.update(output="Paris", input_tokens=10, output_tokens=1)
        return "Paris"

    return handler


def test_three_level_trace_satisfies_the_tree_rule(events: list[Any]) -> None:
    _three_levels()({"q": "capital?"}, None)
    assert [e["event"] for e in events] == ["$ai_generation", "$ai_span", "$ai_generation", "$ai_trace"]
    trace_id = one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    ids = {trace_id}
    for event in events:
        props = event["properties"]
        assert props["$ai_trace_id"] == trace_id
        assert event["distinct_id"] == "user-1"
        if event["event"] != "$ai_trace":
            ids.add(props.get("$ai_generation_id") or props["$ai_span_id"])
    for event in events:
        if event["event"] == "$ai_trace":
            continue
        props = event["properties"]
        parent = props.get("$ai_parent_id") or props["$ai_trace_id"]
        assert parent in ids, f"{props['$ai_span_name']} has a dangling parent"
    # Direct children of the handler point at the trace id itself.
    assert one(events, "$ai_span", "retrieve")["properties"]["$ai_parent_id"] == trace_id
    assert one(events, "$ai_generation", "answer")["properties"]["$ai_parent_id"] == trace_id
    rerank = one(events, "$ai_generation", "rerank")["properties"]
    assert rerank["$ai_parent_id"] == one(events, "$ai_span", "retrieve")["properties"]["$ai_span_id"]
    assert trace_tree_problems(events) == []


def test_every_event_has_a_unique_valid_uuid_and_an_iso_timestamp(events: list[Any]) -> None:
    handler = _three_levels()
    handler({"q": "a"}, None)
    handler({"q": "b"}, None)
    uuids = [e["uuid"] for e in events]
    assert len(set(uuids)) == len(uuids) == 8
    for value in uuids:
        assert uuid.UUID(value).version == 7
    for event in events:
        assert set(event) == {"event", "distinct_id", "properties", "uuid", "timestamp"}
        assert event["timestamp"].endswith("+00:00")


def test_the_checker_itself_finds_a_dangling_parent(events: list[Any]) -> None:
    _three_levels()({"q": "x"}, None)
    broken = [dict(e, properties=dict(e["properties"])) for e in events]
    broken[0]["properties"]["$ai_parent_id"] = "nowhere"
    del broken[1]["properties"]["$ai_trace_id"]
    problems = trace_tree_problems(broken)
    assert len(problems) == 2
    assert "nowhere" in problems[1]
    assert "no $ai_trace_id" in problems[0]
