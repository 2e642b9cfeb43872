"""The built layer on SnapStart, in the local environment's SnapStart mode: one Init whose code
makes a span, one snapshot, environments restored from it by raw clones (no fork hook runs),
each invoked in turn."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

import pytest

from posthog_lambda.local import LambdaEnvironment
from posthog_lambda.local.capture_server.received import ReceivedEvent
from tests.e2e.conftest import Deployment

INVOCATIONS = 20

AGENT = textwrap.dedent(
    """
    import os
    from posthog_lambda import generation, posthog_traced, span

    # Priming during Init, as AWS recommends for SnapStart: a span before the snapshot.
    with span("warm-up", input={"priming": True}):
        pass

    @posthog_traced(name="agent")
    def handler(event, context):
        with span("step", input={"n": event["n"]}) as s:
            s.update(output={"done": True})
        with generation("answer", model="gpt-4o-mini", provider="openai",
                        input=[{"role": "user", "content": f"question {event['n']}"}]) as g:
            g.update(output=[{"role": "assistant", "content": "answer"}], input_tokens=3, output_tokens=2)
        return {"pid": os.getpid()}
    """
)
PER_INVOCATION = 3
"""$ai_trace (the handler), $ai_span (the step), $ai_generation."""
UUID4_RANDOM = (1 << 128) - 1 & ~(0xF << 76) & ~(0b11 << 62)
UUID7_RANDOM = (1 << 80) - 1 & ~(0xF << 76) & ~(0b11 << 62)


def random_part(value: str) -> int:
    """The bits of a UUIDv4 or UUIDv7 that its generator drew (not version, variant, time)."""
    n = int(value.replace("-", ""), 16)
    return n & (UUID7_RANDOM if (n >> 76) & 0xF == 7 else UUID4_RANDOM)


def ids_of(events: Iterable[ReceivedEvent]) -> set[str]:
    found = set()
    for event in events:
        props = event.event["properties"]
        found.add(str(event.uuid))
        for key in ("$ai_trace_id", "$ai_span_id", "$ai_parent_id"):
            if props.get(key):
                found.add(str(props[key]))
    return found


@pytest.fixture
def snapstart(deployment: Deployment) -> LambdaEnvironment:
    deployment.code(AGENT)
    # The first invocation after a restore also waits for the restored processes to be scheduled:
    # on a loaded machine that took more than the default 3 s once.
    return deployment._environment({}, lifecycle="snap-start", timeout_s=10.0)


def test_environments_restored_from_one_snapshot_share_no_id_and_lose_no_event(
    deployment: Deployment, snapstart: LambdaEnvironment
) -> None:
    by_env: list[set[str]] = []
    firsts: list[str] = []
    with snapstart as env:
        assert env.init().error is None
        for _ in range(2):
            results = [env.invoke({"n": n}) for n in range(INVOCATIONS)]
            assert [r.status for r in results] == ["success"] * INVOCATIONS
            assert results[0].restore is not None
            assert results[0].restore.error is None
            assert all(r.restore is None for r in results[1:])
            env.shutdown()
            by_env.append({r.request_id for r in results})
            firsts.append(results[0].request_id)
    init_events = 1  # the warm-up's $ai_span, sent before the snapshot
    expected = 2 * INVOCATIONS * PER_INVOCATION + init_events
    events = [e for e in deployment.posthog.events if e.name != "$ai_metric"]
    # Everything was sent by the shutdowns: nothing more, nothing less (reports that came
    # after their trace add $ai_metric events, as many as came late).
    assert len(events) == expected
    events = deployment.posthog.events
    traces = [e for e in events if e.name == "$ai_trace" and e.event["properties"].get("lambda_request_id")]

    def made_in(requests: set[str]) -> list[ReceivedEvent]:
        ids = {
            e.event["properties"]["$ai_trace_id"]
            for e in traces
            if e.event["properties"]["lambda_request_id"] in requests
        }
        return [e for e in events if e.event["properties"].get("$ai_trace_id") in ids]

    first, second = made_in(by_env[0]), made_in(by_env[1])
    assert [len([e for e in made if e.name != "$ai_metric"]) for made in (first, second)] == [
        INVOCATIONS * PER_INVOCATION
    ] * 2
    shared = ids_of(first) & ids_of(second)
    assert not shared, f"{len(shared)} ids made after the restore appear in both environments"
    bits_first = {random_part(i) for i in ids_of(first)}
    bits_second = {random_part(i) for i in ids_of(second)}
    assert not bits_first & bits_second, "random parts of ids repeat across environments"
    # The warm-up was sent before the snapshot, once: no restored environment holds a copy.
    warm_up = [e for e in events if e.event["properties"].get("$ai_span_name") == "warm-up"]
    assert len(warm_up) == 1
    assert not ids_of(warm_up) & (ids_of(first) | ids_of(second))
    assert len({e.uuid for e in events}) == len(events), "an event uuid repeats"
    for requests, first_request in zip(by_env, firsts, strict=True):
        mine = [e.event["properties"] for e in traces if e.event["properties"]["lambda_request_id"] in requests]
        assert len(mine) == INVOCATIONS
        assert all(p.get("lambda_restored") is True for p in mine)
        assert not any("lambda_init_duration_ms" in p for p in mine), "the snapshot's Init is not this one's"
        # The restore's duration, once, for the first invocation: on its trace, or (its report
        # having come after the trace was sent) as an $ai_metric of that trace.
        (first_trace,) = [p["$ai_trace_id"] for p in mine if p["lambda_request_id"] == first_request]
        on_traces = [p for p in mine if "lambda_restore_duration_ms" in p]
        as_metrics = [
            e.event["properties"]
            for e in events
            if e.name == "$ai_metric"
            and e.event["properties"].get("$ai_metric_name") == "lambda_restore_duration_ms"
            and e.event["properties"].get("$ai_trace_id") in {p["$ai_trace_id"] for p in mine}
        ]
        assert len(on_traces) + len(as_metrics) == 1
        (carrier,) = on_traces + as_metrics
        assert carrier["$ai_trace_id"] == first_trace
        value = carrier.get("lambda_restore_duration_ms", carrier.get("$ai_metric_value"))
        assert isinstance(value, int | float)
        assert value > 0
