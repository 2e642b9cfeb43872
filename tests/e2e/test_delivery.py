"""The product end to end: the real extension and runtime client, events to a local PostHog."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local.capture_server import ReceivedEvent
from posthog_lambda.testing import trace_tree_problems
from tests.e2e.conftest import Deployment

TRACED = textwrap.dedent(
    """
    import threading
    from posthog_lambda import carry_context, generation, posthog_traced, span

    @posthog_traced(distinct_id=lambda event, context: event.get("user"))
    def handler(event, context):
        with span("retrieve", input=event.get("q")) as s:
            s.update(output=["doc"])
            with generation("answer", model="gpt-4o", provider="openai", input=event.get("q")) as g:
                g.update(output="Paris", input_tokens=10, output_tokens=2)
        if event.get("raise"):
            raise ValueError("the handler failed")
        if event.get("threads"):
            def work(n):
                with span(f"thread-{n}"):
                    pass
            threads = [threading.Thread(target=carry_context(work), args=(n,)) for n in range(event["threads"])]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if event.get("big"):
            with span("big", input="x" * event["big"]):
                pass
        if event.get("sleep"):
            import time
            time.sleep(event["sleep"])
        return {"ok": True}
    """
)


def from_function(event: ReceivedEvent) -> bool:
    """Not one of the extension's Lambda figures (``$ai_metric`` events named ``lambda_*``,
    sent for traces delivered before their platform.report came)."""
    return not (event.name == "$ai_metric" and str(event.properties.get("$ai_metric_name")).startswith("lambda_"))


def received(deployment: Deployment) -> list[dict[str, Any]]:
    return [e.event for e in deployment.posthog.events if from_function(e)]


def assert_exactly_once(deployment: Deployment, expected: int) -> list[dict[str, Any]]:
    events = deployment.posthog.wait_for_events(expected, timeout=10, predicate=from_function)
    assert len([e for e in deployment.posthog.events if from_function(e)]) == expected
    assert deployment.posthog.duplicates == 0
    uuids = [e.uuid for e in events]
    assert len(set(uuids)) == expected
    assert trace_tree_problems(received(deployment)) == []
    return received(deployment)


@pytest.mark.parametrize("flush", ["end", "batch", "adaptive"])
def test_fifty_invocations_arrive_exactly_once(deployment: Deployment, flush: str) -> None:
    deployment.code(TRACED)
    with deployment.environment(flush) as env:
        results = [env.invoke({"q": f"question {n}", "user": f"user-{n % 3}"}) for n in range(50)]
        env.shutdown()
    assert [r.status for r in results] == ["success"] * 50
    events = assert_exactly_once(deployment, 150)
    traces = [e for e in events if e["event"] == "$ai_trace"]
    assert len(traces) == 50
    assert {e["distinct_id"] for e in traces} == {"user-0", "user-1", "user-2"}


@pytest.mark.parametrize(
    "fault",
    ["503", "429", "refused", "slow"],
)
def test_no_event_lost_when_posthog_misbehaves(deployment: Deployment, fault: str) -> None:
    deployment.code(TRACED)
    posthog = deployment.posthog
    with deployment.environment("end") as env:
        env.invoke({"q": "warm-up"})
        if fault == "503":
            posthog.fail_next(3, status=503)
        elif fault == "429":
            posthog.fail_next(1, status=429, retry_after=1)
        elif fault == "slow":
            posthog.slow_next(1, 0.5)
        else:
            posthog.refuse_for(1.0)
        results = [env.invoke({"q": f"q{n}"}) for n in range(3)]
        env.shutdown()
    assert [r.status for r in results] == ["success"] * 3
    assert_exactly_once(deployment, 12)


def test_a_handler_that_raises_still_reports_its_trace(deployment: Deployment) -> None:
    deployment.code(TRACED)
    with deployment.environment() as env:
        result = env.invoke({"q": "q", "raise": True})
        env.shutdown()
    assert result.status == "error"
    events = assert_exactly_once(deployment, 4)
    trace = next(e for e in events if e["event"] == "$ai_trace")
    assert trace["properties"]["$ai_is_error"] is True
    assert trace["properties"]["$ai_error"] == "ValueError: the handler failed"
    assert any(e["event"] == "$exception" for e in events)


def test_spans_completed_before_a_timeout_arrive(deployment: Deployment) -> None:
    deployment.code(TRACED)
    with deployment.environment(timeout_s=1.5) as env:
        result = env.invoke({"q": "q", "sleep": 10})
        env.shutdown()
    assert result.status == "timeout"
    # The two spans, and the trace the extension reports as failed (tests/e2e/test_failures.py).
    events = deployment.posthog.wait_for_events(3, timeout=10, predicate=from_function)
    names = sorted(e.event["properties"].get("$ai_span_name") for e in events if e.name != "$ai_trace")
    assert names == ["answer", "retrieve"]
    assert [e.event["properties"]["lambda_status"] for e in events if e.name == "$ai_trace"] == ["timeout"]
    assert deployment.posthog.duplicates == 0


def test_a_hundred_threads_of_spans_in_one_invocation(deployment: Deployment) -> None:
    deployment.code(TRACED)
    with deployment.environment() as env:
        assert env.invoke({"q": "q", "threads": 100}).status == "success"
        env.shutdown()
    events = assert_exactly_once(deployment, 103)
    assert sum(1 for e in events if str(e["properties"].get("$ai_span_name", "")).startswith("thread-")) == 100


def test_a_five_megabyte_input_is_truncated_and_delivered(deployment: Deployment) -> None:
    deployment.code(TRACED)
    with deployment.environment() as env:
        assert env.invoke({"q": "q", "big": 5 * 1024 * 1024}).status == "success"
        env.shutdown()
    events = assert_exactly_once(deployment, 4)
    big = next(e for e in events if e["properties"].get("$ai_span_name") == "big")
    assert "[truncated by posthog-lambda:" in big["properties"]["$ai_input_state"]


def test_garbage_on_the_socket_does_not_stop_the_extension(deployment: Deployment) -> None:
    deployment.code(TRACED)
    with deployment.environment() as env:
        assert env.invoke({"q": "first"}).status == "success"
        for junk in (b"\x00\xff garbage that is not a frame", b"PL\x01\x02\x00\x00\x10\x00{truncated"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(deployment.socket))
                client.sendall(junk)
        assert env.invoke({"q": "second"}).status == "success"
        env.shutdown()
    # The two invocations' events, once each, and what was dropped, itself reported to PostHog
    # (in one report or two: a truncated frame is only known when its connection ends).
    deployment.posthog.wait_for_events(7, timeout=10, predicate=from_function)
    events = received(deployment)
    assert deployment.posthog.duplicates == 0
    traced = [e for e in events if e["event"] != "posthog_lambda_dropped"]
    assert len(traced) == 6
    assert trace_tree_problems(traced) == []
    reports = [e for e in events if e["event"] == "posthog_lambda_dropped"]
    assert sum(r["properties"]["posthog_lambda_dropped_total"] for r in reports) == 2


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_permanent_outage_keeps_memory_bounded_and_counts_the_loss(deployment: Deployment) -> None:
    deployment.code(TRACED)
    posthog = deployment.posthog
    posthog.fail_next(100_000, status=503)  # PostHog is down for the whole run
    big = 20_000  # about 20 KB per invocation: 1,000 of them are 20 times the buffer
    with deployment.environment("end", POSTHOG_LAMBDA_BUFFER_BYTES=str(1024 * 1024)) as env:
        for n in range(1000):
            assert env.invoke({"q": f"q{n}", "big": big}).status == "success"
            if n == 100:
                pid = env.pids()["posthog-lambda"]
                early = _rss_mb(pid)
        late = _rss_mb(pid)
        posthog.clear()  # PostHog is back for the shutdown flush
        env.shutdown()
    # The buffer's bound holds: the extension did not grow with the 20 MB it could not send.
    assert late - early < 8
    reports = [e.event for e in posthog.events if e.name == "posthog_lambda_dropped"]
    assert reports
    assert sum(r["properties"]["posthog_lambda_dropped_total"] for r in reports) > 500
    delivered = [e for e in posthog.events if e.name != "posthog_lambda_dropped" and from_function(e)]
    # What it kept (the newest, up to the bound) still arrives, once each.
    assert delivered
    assert posthog.duplicates == 0
    assert sum(len(str(e.event)) for e in delivered) < 2 * 1024 * 1024


def test_the_functions_own_old_posthog_and_requests_break_nothing(deployment: Deployment) -> None:
    """The function bundles old, conflicting packages; the extension (isolated in its own
    directory) still delivers, and the function still imports what it bundled."""
    example = Path(__file__).resolve().parents[2] / "examples" / "llm_app" / "app.py"
    (deployment.function / "example.py").write_text(example.read_text())
    for package, version in (("posthog", "1.4.0"), ("requests", "2.0.0")):
        (deployment.function / package).mkdir()
        (deployment.function / package / "__init__.py").write_text(
            f'__version__ = "{version}"\nVERSION = __version__\n'
            "def __getattr__(name):\n    raise ImportError(f'this old {__name__} has no {name}')\n"
        )
    deployment.code(
        "import posthog, requests\n"
        "import example\n"
        "def handler(event, context):\n"
        "    answer = example.handler(event, context)\n"
        "    return {'posthog': posthog.__version__, 'requests': requests.__version__, 'answer': answer}\n"
    )
    with deployment.environment() as env:
        result = env.invoke({"question": "What does an extension do?", "user": "ada"})
        env.shutdown()
    assert result.status == "success"
    assert result.payload["posthog"] == "1.4.0"
    assert result.payload["requests"] == "2.0.0"
    events = assert_exactly_once(deployment, 4)
    assert {e["event"] for e in events} == {"$ai_trace", "$ai_span", "$ai_generation"}
