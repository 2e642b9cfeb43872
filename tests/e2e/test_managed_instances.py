"""The built layer on Lambda Managed Instances, in the local environment's LMI mode: awslambdaric
forks its workers, invocations run at once, INVOKE registration is refused, nothing is frozen,
and a timeout or a worker's death fails only its own invocation."""

from __future__ import annotations

import datetime
import textwrap
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import LambdaEnvironment
from posthog_lambda.local.capture_server.received import ReceivedEvent
from posthog_lambda.testing import trace_tree_problems
from tests.e2e.conftest import Deployment

LMI = "lambda-managed-instances"

AGENT = textwrap.dedent(
    """
    import os, time
    from posthog_lambda import generation, posthog_traced, span

    @posthog_traced(name="agent", distinct_id=lambda event, context: f"user-{event['n'] % 7}")
    def handler(event, context):
        n = event["n"]
        for step in range(3):
            with span(f"step-{n}-{step}", input={"n": n, "step": step, "notes": event.get("pad", "")}) as s:
                time.sleep(event.get("pause", 0.0))
                s.update(output={"done": step})
        with generation(f"answer-{n}", model="gpt-4o-mini", provider="openai",
                        input=[{"role": "user", "content": f"question {n} {event.get('pad', '')}"}]) as g:
            if event.get("how") == "exit":
                time.sleep(0.8)  # long enough to be announced, with the spans before handed over
                os._exit(3)
            if event.get("how") == "hang":
                time.sleep(event["hang"])
            g.update(output=[{"role": "assistant", "content": f"answer {n}"}],
                     input_tokens=12, output_tokens=5)
        if event.get("raise"):
            raise RuntimeError(f"invocation {n} failed")
        return {"n": n, "pid": os.getpid()}
    """
)


@pytest.fixture
def managed(deployment: Deployment) -> Deployment:
    deployment.code(AGENT)
    return deployment


def invoke_all(env: LambdaEnvironment, events: list[dict[str, Any]], in_flight: int) -> list[tuple[Any, float]]:
    """Each event invoked, ``in_flight`` at a time; one refused for want of an idle worker
    (``Runtime.Unavailable``) is sent again, as a caller retries a throttled request. Each
    result with the wall time its invocation ended."""
    results: list[tuple[Any, float] | None] = [None] * len(events)
    slots = threading.Semaphore(in_flight)
    threads = []

    def one(index: int) -> None:
        try:
            while True:
                result = env.invoke(events[index])
                if result.status != "unavailable":
                    results[index] = (result, time.time())
                    return
                time.sleep(0.005)  # a worker frees up within a few ms: a caller's short backoff
        finally:
            slots.release()

    for index in range(len(events)):
        slots.acquire()
        thread = threading.Thread(target=one, args=(index,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(60)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def traces_of(received: list[ReceivedEvent]) -> dict[str, list[ReceivedEvent]]:
    by_trace: dict[str, list[ReceivedEvent]] = defaultdict(list)
    for event in received:
        trace_id = event.properties.get("$ai_trace_id")
        if isinstance(trace_id, str):
            by_trace[trace_id].append(event)
    return by_trace


def check_trace(events: list[ReceivedEvent], failed: bool) -> int:
    """The invocation number of one complete trace, every span of it that invocation's."""
    trace = [e for e in events if e.name == "$ai_trace"]
    assert len(trace) == 1
    n = trace[0].properties["$ai_input_state"]["n"]
    names = Counter(e.properties.get("$ai_span_name") for e in events if e.name in ("$ai_span", "$ai_generation"))
    assert names == Counter([f"step-{n}-0", f"step-{n}-1", f"step-{n}-2", f"answer-{n}"])
    assert trace_tree_problems([e.event for e in events]) == []
    assert trace[0].properties["$ai_is_error"] is failed
    assert len([e for e in events if e.name == "$exception"]) == (1 if failed else 0)
    return int(n)


def received_at(event: ReceivedEvent) -> float:
    return event.received_at.replace(tzinfo=event.received_at.tzinfo or datetime.UTC).timestamp()


def test_init_succeeds_with_the_invoke_registration_refused(managed: Deployment) -> None:
    # Today's layer asked for INVOKE again and again until Init ran out: every invocation failed.
    with managed.managed_instances() as env:
        init = env.init()
        assert init.error is None
        result = env.invoke({"n": 1})
        assert result.status == "success"
        managed.posthog.wait_for_events(5, timeout=10)
        env.shutdown()
        logs = "\n".join(env.logs)
    assert "refuses INVOKE" not in logs  # it knew from AWS_LAMBDA_INITIALIZATION_TYPE, and asked for SHUTDOWN only
    trace = next(e for e in managed.posthog.events if e.name == "$ai_trace")
    assert trace.properties["lambda_cold_start"] is False
    assert trace.properties["lambda_initialization_type"] == LMI
    assert trace.properties["lambda_first_invocation_in_process"] is True


def test_concurrent_invocations_arrive_complete_once_and_within_seconds(managed: Deployment) -> None:
    posthog = managed.posthog
    first = [{"n": n, "raise": n % 9 == 0, "pause": 0.002} for n in range(100)]
    second = [{"n": n, "raise": n % 9 == 0, "pause": 0.002} for n in range(100, 200)]
    with managed.managed_instances(concurrency=4) as env:
        assert env.init().error is None
        done = invoke_all(env, first, in_flight=8)
        # Five events each, and an $exception for each that raised (n % 9 == 0: 12 of the first
        # 100, 23 of all); nothing more happens meanwhile: no INVOKE, no SHUTDOWN wakes the extension.
        posthog.wait_for_events(100 * 5 + 12, timeout=10)
        env.idle(1.5)
        done += invoke_all(env, second, in_flight=8)
        posthog.wait_for_events(200 * 5 + 23, timeout=10)
        before_shutdown = len(posthog.events)
        workers = env.worker_pids()
        env.shutdown()
    statuses = Counter(result.status for result, _ in done)
    assert statuses == {"success": 177, "error": 23}  # n % 9 == 0 raises
    assert len(posthog.events) == before_shutdown  # everything had arrived: shutdown had nothing left
    assert posthog.duplicates == 0
    uuids = [e.uuid for e in posthog.events]
    assert len(uuids) == len(set(uuids))
    traces = traces_of(posthog.events)
    assert len(traces) == 200
    numbers = sorted(check_trace(events, failed=events_failed(events)) for events in traces.values())
    assert numbers == list(range(200))
    # Within 10 s of its invocation's end, each trace's last event.
    ended = {result.request_id: at for result, at in done}
    for events in traces.values():
        trace = next(e for e in events if e.name == "$ai_trace")
        delay = max(received_at(e) for e in events) - ended[trace.properties["lambda_request_id"]]
        assert delay < 10, f"trace of invocation {trace.properties['$ai_input_state']['n']} took {delay:.1f} s"
    # Four processes, each with its own Init; none made an invocation wait for it.
    first_in_process = [
        e for e in posthog.events if e.name == "$ai_trace" and e.properties["lambda_first_invocation_in_process"]
    ]
    assert 1 <= len(first_in_process) <= len(workers) == 4
    assert not any(e.properties["lambda_cold_start"] for e in posthog.events if e.name == "$ai_trace")


def events_failed(events: list[ReceivedEvent]) -> bool:
    trace = next(e for e in events if e.name == "$ai_trace")
    return bool(trace.properties["$ai_input_state"]["n"] % 9 == 0)


def memory_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_posthog_outage_keeps_memory_bounded_and_losses_are_reported_once_it_is_back(managed: Deployment) -> None:
    posthog = managed.posthog
    buffer_bytes = 2 * 1024 * 1024
    # Large inputs and outputs, as real apps record: about 20 KB per event, 5 events per invocation.
    events = [{"n": n, "pad": "x" * 20_000} for n in range(300)]
    with managed.managed_instances(concurrency=4, POSTHOG_LAMBDA_BUFFER_BYTES=str(buffer_bytes)) as env:
        assert env.init().error is None
        posthog.fail_next(1_000_000, 503)  # down: every request answered 503
        samples: dict[int, list[int]] = defaultdict(list)
        pids = env.pids()
        extension_pid = pids["posthog-lambda"]
        for start in range(0, len(events), 50):
            invoke_all(env, events[start : start + 50], in_flight=8)
            for pid in [extension_pid, *env.worker_pids()]:
                samples[pid].append(memory_kb(pid))
        posthog.clear()  # back (nothing was accepted meanwhile)
        report = posthog.wait_for_events(1, timeout=20, predicate=lambda e: e.name == "posthog_lambda_dropped")[0]
        traces = posthog.wait_for_events(1, timeout=10, predicate=lambda e: e.name == "$ai_trace")
        env.shutdown()
    # Every process's memory stops growing: the extension's buffer holds 2 MiB whatever comes.
    for pid, kb in samples.items():
        assert max(kb[2:]) - kb[2] < 8 * 1024, f"process {pid} grew from {kb[2]} to {max(kb[2:])} kB"
    lost = sum(e.properties.get("events_buffer_full", 0) for e in posthog.events if e.name == report.name)
    delivered = len([e for e in posthog.events if e.name != "posthog_lambda_dropped"])
    assert delivered + lost == 300 * 5
    assert len(traces) >= 1
    print(f"RSS kB per process over the outage: { {pid: (kb[0], max(kb)) for pid, kb in samples.items()} }")


def test_a_worker_that_dies_sends_its_finished_spans_and_a_failed_trace_and_others_are_untouched(
    managed: Deployment,
) -> None:
    posthog = managed.posthog
    with managed.managed_instances(concurrency=4) as env:
        assert env.init().error is None
        assert env.wait_for_workers(4)  # Init is over once one waits: these three must not be refused
        results: dict[int, Any] = {}

        def run(n: int, **event: Any) -> None:
            results[n] = env.invoke({"n": n, **event})

        threads = [threading.Thread(target=run, args=(0,), kwargs={"how": "exit"})]
        threads += [threading.Thread(target=run, args=(n,), kwargs={"pause": 0.3}) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        after = env.invoke({"n": 3})
        posthog.wait_for_events(4, timeout=10, predicate=lambda e: e.name == "$ai_trace")
        env.shutdown()
    assert results[0].status == "failure"
    assert [results[n].status for n in (1, 2)] == ["success", "success"]
    assert after.status == "success"
    traces = traces_of(posthog.events)
    assert len(traces) == 4
    assert posthog.duplicates == 0
    dead = next(events for events in traces.values() if any(e.properties.get("lambda_status") for e in events))
    names = {e.properties.get("$ai_span_name") for e in dead}
    assert names == {"agent", "step-0-0", "step-0-1", "step-0-2", "answer-0"}
    trace = next(e for e in dead if e.name == "$ai_trace")
    assert trace.properties["lambda_status"] == "failure"
    assert trace.properties["$ai_is_error"] is True
    cut = next(e for e in dead if e.name == "$ai_generation")
    assert cut.properties["$ai_error"].startswith("did not end: Lambda status failure")
    for events in traces.values():
        if events is not dead:
            check_trace(events, failed=False)


def test_a_timed_out_invocation_fails_alone_and_its_trace_says_so_once(managed: Deployment) -> None:
    posthog = managed.posthog
    with managed.managed_instances(concurrency=2, timeout_s=1.0) as env:
        assert env.init().error is None
        assert env.wait_for_workers(2)
        late = env.invoke({"n": 0, "how": "hang", "hang": 1.5})  # returns to no one, half a second late
        meanwhile = env.invoke({"n": 1})
        posthog.wait_for_events(2, timeout=10, predicate=lambda e: e.name == "$ai_trace")
        # The hung handler finishes in its process, which lives on: what it sends then is late.
        wait_for(lambda: any("ended after its invocation timed out" in line for line in env.logs), 10)
        again = env.invoke({"n": 2})
        posthog.wait_for_events(3, timeout=10, predicate=lambda e: e.name == "$ai_trace")
        env.shutdown()
    assert late.status == "timeout"
    assert meanwhile.status == "success"
    assert again.status == "success"
    traces = traces_of(posthog.events)
    timed_out = next(events for events in traces.values() if any(e.properties.get("lambda_status") for e in events))
    trace = [e for e in timed_out if e.name == "$ai_trace"]
    assert len(trace) == 1
    assert trace[0].properties["lambda_status"] == "timeout"
    assert "within its 1 s timeout" in trace[0].properties["$ai_error"]
    names = Counter(e.properties.get("$ai_span_name") for e in timed_out)
    assert names == Counter(["agent", "step-0-0", "step-0-1", "step-0-2", "answer-0"])  # each once
    assert posthog.duplicates == 0


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_shutdown_sends_what_the_background_had_not_sent(managed: Deployment) -> None:
    posthog = managed.posthog
    # Flush settings that never come due: only SHUTDOWN sends.
    with managed.managed_instances(concurrency=4, POSTHOG_FLUSH_AT="100000", POSTHOG_FLUSH_INTERVAL="600000") as env:
        assert env.init().error is None
        done = invoke_all(env, [{"n": n} for n in range(20)], in_flight=4)
        assert posthog.events == []
        result = env.shutdown()
    assert {r.status for r, _ in done} == {"success"}
    assert [e.killed for e in result.extensions] == [False]
    traces = traces_of(posthog.events)
    assert sorted(check_trace(events, failed=False) for events in traces.values()) == list(range(20))


SENDER_TRACE = "01938f2e-7c4a-7d2b-9a51-3f0c2d1e4b5a"
SENDER_SPAN = "5f7e9a2c-1b3d-4e6f-8a9b-0c1d2e3f4a5b"
CARRIER = {
    "traceparent": "00-01938f2e7c4a7d2b9a513f0c2d1e4b5a-5f7e9a2c1b3d4e6f-01",
    "baggage": f"posthog.trace_id={SENDER_TRACE},posthog.span_id={SENDER_SPAN},posthog.distinct_id=user-9",
}


def test_a_timed_out_invocation_of_a_continued_trace_is_its_root_span_cut_short_once(managed: Deployment) -> None:
    # Continuing another function's trace, the invocation is an $ai_span (lambda_root): cut short
    # at the timeout like an $ai_trace, and what the hung handler sends later is late, dropped.
    posthog = managed.posthog
    with managed.managed_instances(concurrency=2, timeout_s=1.0) as env:
        assert env.init().error is None
        assert env.wait_for_workers(2)
        late = env.invoke({"n": 0, "how": "hang", "hang": 1.5, "_posthog": CARRIER})
        posthog.wait_for_events(1, timeout=10, predicate=lambda e: e.properties.get("lambda_root") is True)
        wait_for(lambda: any("ended after its invocation timed out" in line for line in env.logs), 10)
        again = env.invoke({"n": 1, "_posthog": CARRIER})
        posthog.wait_for_events(2, timeout=10, predicate=lambda e: e.properties.get("lambda_root") is True)
        env.shutdown()
    assert late.status == "timeout"
    assert again.status == "success"
    events = posthog.events
    assert {e.properties["$ai_trace_id"] for e in events if e.name != "posthog_lambda_dropped"} == {SENDER_TRACE}
    assert not [e for e in events if e.name == "$ai_trace"]
    roots = [e for e in events if e.properties.get("lambda_root") is True]
    assert len(roots) == 2
    cut = next(e for e in roots if e.properties.get("lambda_status") == "timeout")
    assert cut.name == "$ai_span"
    assert cut.properties["$ai_parent_id"] == SENDER_SPAN
    assert "within its 1 s timeout" in cut.properties["$ai_error"]
    assert cut.distinct_id == "user-0"  # the handler's own distinct_id= wins over the carrier's
    names = Counter(e.properties.get("$ai_span_name") for e in events if e.name != "posthog_lambda_dropped")
    spans = [f"step-{n}-{step}" for n in (0, 1) for step in range(3)]
    assert names == Counter(["agent", "agent", "answer-0", "answer-1", *spans])  # each once
    assert posthog.duplicates == 0
    assert trace_tree_problems([e.event for e in events if e.name != "posthog_lambda_dropped"]) == [
        # The sender's span is not among these events: it is another function's.
        f"$ai_span 'agent' points at parent {SENDER_SPAN}, not in trace {SENDER_TRACE}",
        f"$ai_span 'agent' points at parent {SENDER_SPAN}, not in trace {SENDER_TRACE}",
    ]
