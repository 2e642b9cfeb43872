"""Invocations that time out or whose process dies still show up in PostHog, as failed traces with
every span that finished and those cut short (the real extension and runtime client, the local
Lambda environment, a local PostHog)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from posthog_lambda.testing import trace_tree_problems
from tests.e2e.conftest import Deployment
from tests.e2e.test_delivery import TRACED, from_function

DYING = textwrap.dedent(
    """
    import os, time
    from posthog_lambda import generation, posthog_traced, span

    @posthog_traced(name="agent", distinct_id=lambda event, context: event.get("user"))
    def handler(event, context):
        with span("retrieve", input=event["q"]) as s:
            s.update(output=["doc"])
        with span("plan"):
            pass
        if event.get("how"):
            with span("tools"), generation("answer", model="gpt-4o", provider="openai", input=event["q"]):
                # A model call that takes long: the invocation is announced meanwhile.
                time.sleep(0.8)
                if event["how"] == "exit":
                    os._exit(3)  # the process dies: no exception, no cleanup
                time.sleep(60)  # far past the timeout
        return {"ok": True}
    """
)


def by_name(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["properties"].get("$ai_span_name") or e["event"]: e for e in events}


@pytest.mark.parametrize("how", ["timeout", "exit"])
def test_a_dying_invocation_arrives_as_a_failed_trace_and_the_next_one_is_traced(
    deployment: Deployment, how: str
) -> None:
    deployment.code(DYING)
    with deployment.environment("end", timeout_s=2.0) as env:
        failed = env.invoke({"q": "why?", "user": "u1", "how": how})
        after = env.invoke({"q": "again", "user": "u1"})  # a new Init: the environment was reset
        env.shutdown()
        logs = "\n".join(env.logs)
    assert failed.status == ("timeout" if how == "timeout" else "failure")
    assert after.status == "success"
    assert after.init is not None
    # Failed invocation: $ai_trace, retrieve, plan, tools, answer. The next: $ai_trace, retrieve, plan.
    received = deployment.posthog.wait_for_events(8, timeout=10, predicate=from_function)
    events = [r.event for r in received]
    assert len(events) == 8
    assert deployment.posthog.duplicates == 0
    assert trace_tree_problems(events) == []
    traces = [e for e in events if e["event"] == "$ai_trace"]
    assert len(traces) == 2
    dead = next(t for t in traces if t["properties"]["$ai_is_error"])
    fine = next(t for t in traces if not t["properties"]["$ai_is_error"])
    trace_id = dead["properties"]["$ai_trace_id"]
    spans = by_name([e for e in events if e["properties"]["$ai_trace_id"] == trace_id])
    assert set(spans) == {"agent", "retrieve", "plan", "tools", "answer"}

    # The trace: Lambda's status, the timeout in seconds, latency up to the end, the user.
    props = dead["properties"]
    status = "timeout" if how == "timeout" else "failure"
    assert props["lambda_status"] == status
    assert props["$ai_error"].startswith(f"Lambda status {status}: ")
    if how == "timeout":
        assert "within its 2 s timeout" in props["$ai_error"]
        assert 1.9 <= props["$ai_latency"] <= 2.1
    else:
        assert 0.8 <= props["$ai_latency"] < 2.0
    assert dead["distinct_id"] == "u1"
    assert props["$ai_span_name"] == "agent"
    assert props["lambda_request_id"] == failed.request_id
    assert props["$ai_input_state"] == {"q": "why?", "user": "u1", "how": how}

    # Spans that finished are as they were; those cut short are failed, under their parents.
    for name in ("retrieve", "plan"):
        assert spans[name]["properties"]["$ai_is_error"] is False
    assert spans["retrieve"]["properties"]["$ai_output_state"] == ["doc"]
    tools, answer = spans["tools"], spans["answer"]
    assert answer["event"] == "$ai_generation"
    assert answer["properties"]["$ai_parent_id"] == tools["properties"]["$ai_span_id"]
    assert answer["properties"]["$ai_model"] == "gpt-4o"
    assert answer["properties"]["$ai_input"] == [{"role": "user", "content": "why?"}]
    for cut in (tools, answer):
        assert cut["properties"]["$ai_is_error"] is True
        assert cut["properties"]["$ai_error"] == "did not end: " + props["$ai_error"]
        assert cut["properties"]["$ai_latency"] <= props["$ai_latency"]

    # The next invocation is an ordinary trace of its own.
    assert fine["properties"]["lambda_request_id"] == after.request_id
    assert fine["properties"]["$ai_trace_id"] != trace_id
    assert fine["properties"]["lambda_cold_start"] is True
    assert f"ended with Lambda status {status}" in logs


def test_a_quick_invocation_is_not_announced(deployment: Deployment) -> None:
    # Nothing to report if it fails later: the extension hears of it only at its end.
    deployment.code(DYING)
    with deployment.environment("end", POSTHOG_LAMBDA_DEBUG="true") as env:
        result = env.invoke({"q": "quick"})
        env.shutdown()
        logs = "\n".join(env.logs)
    assert result.status == "success"
    assert f"START {result.request_id}" not in logs
    assert f"END {result.request_id}" in logs


@pytest.mark.parametrize("telemetry_api", ["refused", "unreachable"])
def test_without_the_telemetry_api_everything_else_still_works(deployment: Deployment, telemetry_api: str) -> None:
    deployment.code(TRACED)
    with deployment.environment("end", telemetry_api=telemetry_api) as env:
        results = [env.invoke({"q": f"q{n}"}) for n in range(5)]
        env.shutdown()
        logs = "\n".join(env.logs)
    assert [r.status for r in results] == ["success"] * 5
    # The END frame still ends each invocation for the extension.
    assert all(r.post_runtime_ms is not None and r.post_runtime_ms < 1000 for r in results)
    received = deployment.posthog.wait_for_events(15, timeout=10)
    assert len(received) == 15
    assert trace_tree_problems([r.event for r in received]) == []
    if telemetry_api == "refused":
        assert "cannot subscribe to the Telemetry API" in logs
