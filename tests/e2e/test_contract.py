"""What the contract promises, through the built layer: every event that reaches PostHog, whoever
made it (the library, or the extension: failed traces, drop reports, Lambda's figures), is made by
the one event builder (a UUIDv7, one timestamp format), and ``max_event_bytes`` holds when events
go through the extension."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from tests.e2e.conftest import Deployment
from tests.extension import builder_problems

FUNCTION = textwrap.dedent(
    """
    import os, time
    from posthog_lambda import capture_feedback, capture_metric, current_span, posthog_traced, span

    @posthog_traced(
        name="agent",
        distinct_id=lambda event, context: event.get("user"),
        session_id=lambda event, context: event.get("session"),
        groups={"company": "acme"},
    )
    def handler(event, context):
        with span("retrieve", input=event.get("q")) as s:
            s.update(output="y" * event.get("output", 10))
        if event.get("feedback"):
            trace_id = current_span().trace_id
            capture_feedback(trace_id, "thumbs up")
            capture_metric(trace_id, "quality", 0.9)
        if event.get("how"):
            with span("tools"):
                time.sleep(0.8)  # long enough to be announced (START)
                if event["how"] == "exit":
                    os._exit(3)  # the process dies: no exception, no cleanup
                time.sleep(60)  # far past the timeout
        return {"ok": True}
    """
)


def everything(deployment: Deployment) -> list[dict[str, Any]]:
    return [received.event for received in deployment.posthog.events]


def assert_all_built(events: list[dict[str, Any]]) -> None:
    problems = [problem for event in events for problem in builder_problems(event)]
    assert problems == []


def size(event: dict[str, Any]) -> int:
    return len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


@pytest.mark.parametrize("how", ["timeout", "exit"])
def test_failed_traces_come_from_the_one_builder(deployment: Deployment, how: str) -> None:
    deployment.code(FUNCTION)
    with deployment.environment("end", timeout_s=2.0) as env:
        failed = env.invoke({"q": "why?", "user": "u1", "session": "chat-1", "how": how})
        env.invoke({"q": "again", "user": "u1"})
        env.shutdown()
    assert failed.status == ("timeout" if how == "timeout" else "failure")
    # The failed one: $ai_trace, retrieve, tools. The next: $ai_trace, retrieve.
    deployment.posthog.wait_for_events(5, timeout=10, predicate=lambda e: e.name != "$ai_metric")
    events = everything(deployment)
    cut = [e for e in events if "lambda_status" in e["properties"]]
    assert {e["properties"].get("$ai_span_name") for e in cut} == {"agent", "tools"}
    for event in cut:
        assert event["distinct_id"] == "u1"
        assert event["properties"]["$ai_session_id"] == "chat-1"
        assert event["properties"]["$groups"] == {"company": "acme"}
        assert event["properties"]["lambda_request_id"] == failed.request_id
    assert_all_built(events)
    assert deployment.posthog.duplicates == 0


def test_feedback_metrics_and_lambda_figures_come_from_the_one_builder(deployment: Deployment) -> None:
    deployment.code(FUNCTION)
    with deployment.environment("end") as env:
        for n in range(3):
            assert env.invoke({"q": f"q{n}", "user": "u1", "session": "chat-1", "feedback": True}).status == "success"
        env.shutdown()
    posthog = deployment.posthog
    posthog.wait_for_events(3, timeout=10, predicate=lambda e: e.name == "$ai_trace")
    events = everything(deployment)
    names = [e["event"] for e in events]
    assert names.count("$ai_feedback") == 3
    metrics = [e for e in events if e["event"] == "$ai_metric"]
    assert [m["properties"]["$ai_metric_name"] for m in metrics] == ["quality"] * 3
    # Lambda's figures are properties of each trace, which waited for its report: no event of their own.
    traces = [e for e in events if e["event"] == "$ai_trace"]
    assert all(isinstance(t["properties"].get("lambda_billed_duration_ms"), int) for t in traces)
    assert all(m["distinct_id"] == "u1" for m in metrics)
    assert_all_built(events)
    assert posthog.duplicates == 0


def test_the_drop_report_after_an_outage_comes_from_the_one_builder(deployment: Deployment) -> None:
    deployment.code(FUNCTION)
    posthog = deployment.posthog
    posthog.fail_next(100_000, status=503)  # PostHog is down...
    buffer = 1024 * 1024  # ...and the extension's buffer holds about three of these invocations
    with deployment.environment("end", timeout_s=1.0, POSTHOG_LAMBDA_BUFFER_BYTES=str(buffer)) as env:
        for n in range(8):
            assert env.invoke({"q": f"q{n}", "output": 300_000}).status == "success"
        posthog.clear()  # ...and back for the shutdown flush
        env.shutdown()
    (report,) = posthog.wait_for_events(1, timeout=10, predicate=lambda e: e.name == "posthog_lambda_dropped")
    assert report.properties["events_buffer_full"] > 0
    assert report.properties["$process_person_profile"] is False
    assert report.distinct_id == "posthog-lambda"
    assert_all_built(everything(deployment))


def test_max_event_bytes_holds_through_the_extension(deployment: Deployment) -> None:
    deployment.code(FUNCTION)
    with deployment.environment("end", POSTHOG_LAMBDA_MAX_EVENT_BYTES="20000") as env:
        assert env.invoke({"q": "q", "output": 100_000}).status == "success"
        env.shutdown()
    deployment.posthog.wait_for_events(2, timeout=10, predicate=lambda e: e.name != "$ai_metric")
    (retrieve,) = [e for e in everything(deployment) if e["properties"].get("$ai_span_name") == "retrieve"]
    assert size(retrieve) <= 20_000
    assert retrieve["properties"]["posthog_lambda_truncated"] == ["$ai_output_state"]
    assert "[truncated by posthog-lambda:" in retrieve["properties"]["$ai_output_state"]


def test_a_lone_surrogate_in_the_event_reaches_posthog_replaced(deployment: Deployment) -> None:
    # Lambda's JSON decoder makes a lone surrogate of an escaped "\udce9" in the invocation's
    # event; the extension serializes the span that captured it.
    deployment.code(FUNCTION)
    with deployment.environment("end") as env:
        assert env.invoke({"q": "caf\udce9"}).status == "success"
        env.shutdown()
    deployment.posthog.wait_for_events(2, timeout=10, predicate=lambda e: e.name != "$ai_metric")
    events = everything(deployment)
    (retrieve,) = [e for e in events if e["properties"].get("$ai_span_name") == "retrieve"]
    assert retrieve["properties"]["$ai_input_state"] == "caf\ufffd"
    assert "posthog_lambda_dropped" not in [e["event"] for e in events]
    assert_all_built(events)
