"""capture_feedback and capture_metric."""

from __future__ import annotations

from typing import Any

import pytest

from posthog_lambda import capture_feedback, capture_metric, current_span, dropped_counts, posthog_traced
from tests.helpers import LambdaContext, by_kind, one


def test_feedback_and_metric_outside_a_handler_are_sent_at_once(events: list[Any]) -> None:
    capture_feedback("trace-1", "wrong city", properties={"rating": "down"})
    assert [e["event"] for e in events] == ["$ai_feedback"]
    capture_metric("trace-1", "faithfulness", 0.8)
    feedback, metric = events
    assert feedback["properties"]["$ai_trace_id"] == "trace-1"
    assert feedback["properties"]["$ai_feedback_text"] == "wrong city"
    assert feedback["properties"]["rating"] == "down"
    # Same anonymous distinct id as the trace it is about, so it joins that trace's events.
    assert feedback["distinct_id"] == "trace-1"
    assert feedback["properties"]["$process_person_profile"] is False
    assert metric["properties"]["$ai_metric_name"] == "faithfulness"
    assert metric["properties"]["$ai_metric_value"] == 0.8


def test_feedback_inside_a_handler_takes_the_handlers_user_and_waits_for_its_trace(events: list[Any]) -> None:
    @posthog_traced(distinct_id=lambda event, context: event["user"], groups={"company": "acme"})
    def handler(event: Any, context: Any) -> str:
        capture_feedback(event["about"], "thumbs up")
        capture_metric(current_span().trace_id, "answer_length", 5)
        assert events == []
        return "ok"

    handler({"user": "u-9", "about": "old-trace"}, None)
    feedback = one(events, "$ai_feedback")
    assert feedback["distinct_id"] == "u-9"
    assert feedback["properties"]["$ai_trace_id"] == "old-trace"
    assert feedback["properties"]["$groups"] == {"company": "acme"}
    assert "$process_person_profile" not in feedback["properties"]
    metric = one(events, "$ai_metric")
    assert metric["properties"]["$ai_trace_id"] == one(events, "$ai_trace")["properties"]["$ai_trace_id"]


def test_explicit_distinct_id_wins(events: list[Any]) -> None:
    capture_feedback("t", "ok", distinct_id="user-2")
    assert events[0]["distinct_id"] == "user-2"
    assert "$process_person_profile" not in events[0]["properties"]


@pytest.mark.parametrize("bad", ["", None, 12])
def test_feedback_without_a_trace_id_is_refused_counted_not_raised(events: list[Any], bad: Any) -> None:
    before = dropped_counts().get("invalid_trace_id", 0)
    capture_feedback(bad, "text")
    capture_metric(bad, "m", 1)
    assert by_kind(events, "$ai_feedback") == []
    assert by_kind(events, "$ai_metric") == []
    assert dropped_counts()["invalid_trace_id"] - before == 2


def test_feedback_inside_a_streaming_handler_leaves_nothing_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the extension's socket exporter, every trace is watched by the hand-off ticker until
    # it closes; the trace describing a feedback event waits in the handler's and must not be.
    from posthog_lambda import _destination, _processor

    class Streaming:
        streams = True

        def export(self, header: Any, items: Any, ended: Any = None, running: Any = None) -> None:
            pass

    monkeypatch.setattr(_destination, "exporter", Streaming)

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        for n in range(3):
            capture_feedback(f"trace-{n}", "bad")
        return "ok"

    assert handler({}, LambdaContext("r1")) == "ok"
    capture_feedback("trace-outside", "bad")  # outside any handler too
    assert _processor._watched == set()
