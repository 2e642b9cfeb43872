"""The Telemetry API end to end: the real extension subscribes during Init in the local Lambda
environment, ends invocations on ``platform.runtimeDone`` and puts ``platform.report``'s figures
on each trace."""

from __future__ import annotations

import math
import platform
import textwrap
from typing import Any

import pytest

from posthog_lambda.local import InvokeResult
from tests.e2e.conftest import Deployment
from tests.e2e.test_delivery import TRACED

UNDECORATED = textwrap.dedent(
    """
    import time

    def handler(event, context):
        if event.get("sleep"):
            time.sleep(event["sleep"])
        return {"ok": True}
    """
)

PRICES = {"x86_64": 0.0000166667, "arm64": 0.0000133334, "request": 0.0000002}


def test_an_undecorated_handler_does_not_make_the_extension_wait(deployment: Deployment) -> None:
    # Without runtimeDone, `end` mode waited 0.5 s after the first invocation for a START frame
    # that never comes (measured: about 500 ms post-runtime), then stopped waiting. Now the
    # invocation ends when the runtime is done: the first one costs the telemetry delivery
    # delay (25 ms, Lambda's shortest), later ones of a function that sends nothing nothing.
    deployment.code(UNDECORATED)
    with deployment.environment("end", timeout_s=5.0, POSTHOG_LAMBDA_DEBUG="true") as env:
        results = [env.invoke({"sleep": 0.6 if n == 2 else 0}) for n in range(6)]
        env.shutdown()
        logs = "\n".join(env.logs)
    assert [r.status for r in results] == ["success"] * 6
    post_runtime = [r.post_runtime_ms for r in results]
    assert all(ms is not None and ms < 300 for ms in post_runtime), post_runtime
    assert "subscribed to the Telemetry API" in logs
    assert "no START frame" not in logs


def figures_by_trace(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each trace's Lambda figures: its own lambda_* properties, then its $ai_metric events."""
    figures: dict[str, dict[str, Any]] = {}
    for event in events:
        props = event["properties"]
        if event["event"] == "$ai_trace":
            own = {k: v for k, v in props.items() if k.startswith("lambda_") and k != "lambda_request_id"}
            figures.setdefault(props["$ai_trace_id"], {}).update(own)
    for event in events:
        props = event["properties"]
        if event["event"] == "$ai_metric" and props["$ai_metric_name"].startswith("lambda_"):
            trace = figures.get(props["$ai_trace_id"])
            assert trace is not None, f"an $ai_metric linked to no trace: {event}"
            assert props["$ai_metric_name"] not in trace, "a figure sent twice"
            trace[props["$ai_metric_name"]] = props["$ai_metric_value"]
    return figures


@pytest.mark.parametrize("flush", ["end", "batch", "adaptive"])
def test_every_trace_carries_what_lambda_reported(deployment: Deployment, flush: str) -> None:
    deployment.code(TRACED)
    with deployment.environment(flush) as env:
        results = [env.invoke({"q": f"question {n}", "user": f"user-{n % 3}"}) for n in range(20)]
        env.shutdown()
    assert [r.status for r in results] == ["success"] * 20
    by_request: dict[str, InvokeResult] = {r.request_id: r for r in results}
    # The extension exits once it has sent everything, so after shutdown all is there.
    posthog = deployment.posthog
    posthog.wait_for_events(20, timeout=10, predicate=lambda e: e.name == "$ai_trace")
    events = [e.event for e in posthog.events]
    assert posthog.duplicates == 0
    traces = [e for e in events if e["event"] == "$ai_trace"]
    assert len(traces) == 20
    figures = figures_by_trace(events)
    order = [r.request_id for r in results]
    missing = [
        order.index(t["properties"]["lambda_request_id"])
        for t in traces
        if "lambda_billed_duration_ms" not in figures[t["properties"]["$ai_trace_id"]]
    ]
    assert missing == [], f"invocations (by position) whose trace has no figures: {missing}"
    arch = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
    for trace in traces:
        props = trace["properties"]
        result = by_request[props["lambda_request_id"]]
        got = figures[props["$ai_trace_id"]]
        assert got["lambda_billed_duration_ms"] == result.billed_duration_ms
        assert got["lambda_duration_ms"] == result.duration_ms
        assert got["lambda_max_memory_used_mb"] == result.max_memory_used_mb
        assert got["lambda_memory_size_mb"] == 128
        expected_cost = 128 / 1024 * result.billed_duration_ms / 1000 * PRICES[arch] + PRICES["request"]
        assert math.isclose(got["lambda_cost_usd"], expected_cost, rel_tol=1e-12)
        if result.init is not None:
            assert got["lambda_init_duration_ms"] == result.init.duration_ms
        else:
            assert "lambda_init_duration_ms" not in got
    assert results[0].init is not None
    assert [r.init is not None for r in results].count(True) == 1
    # Each trace waited for its report: the figures are its own properties, no event of their own.
    # So PostHog bills what the handler made and nothing more: its trace, span and generation.
    assert [e for e in events if e["event"] == "$ai_metric"] == []
    assert all("lambda_billed_duration_ms" in t["properties"] for t in traces)
    assert len(events) / len(results) == 3.0


def test_a_price_table_from_the_environment_sets_the_cost(deployment: Deployment) -> None:
    deployment.code(TRACED)
    prices = '{"x86_64": 0.001, "arm64": 0.001, "request": 0.5}'
    with deployment.environment("batch", POSTHOG_LAMBDA_PRICES=prices) as env:
        result = env.invoke({"q": "question"})
        env.shutdown()
    posthog = deployment.posthog
    posthog.wait_for_events(1, timeout=10, predicate=lambda e: e.name == "$ai_trace")
    events = [e.event for e in posthog.events]
    (trace,) = [e for e in events if e["event"] == "$ai_trace"]
    cost = figures_by_trace(events)[trace["properties"]["$ai_trace_id"]]["lambda_cost_usd"]
    assert math.isclose(cost, 128 / 1024 * result.billed_duration_ms / 1000 * 0.001 + 0.5, rel_tol=1e-12)
