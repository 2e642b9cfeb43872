"""Announced invocations (START/OPEN carry the running records) and the failed traces the extension
makes of them when the invocation times out or its process dies."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract.events import COMMON, MAX_EVENT_BYTES, REDACT, SESSION_ID, iso
from posthog_lambda_contract.records import expand
from posthog_lambda_extension._loop import Extension
from posthog_lambda_extension._settings import Settings
from posthog_lambda_extension._traces import Announced, Traces, failed_events
from tests.extension import builder_problems, header, running, start

T0 = 1_700_000_000.0
"""When the announced invocation began (Unix seconds)."""
DEADLINE_MS = int((T0 + 2) * 1000)
"""Its deadline: a 2 s timeout."""


def us(seconds: float) -> int:
    return int(seconds * 1e6)


ROOT = running("$ai_trace", "agent", None, us(T0))
TOOLS = running("$ai_span", "tools", "t", us(T0 + 0.2), "span-tools")
ANSWER = running("$ai_generation", "answer", "span-tools", us(T0 + 0.3), "span-answer", **{"$ai_model": "gpt-4o"})


def announced(*opened: list[Any], **payload: Any) -> Announced:
    traces = Traces()
    traces.start(start("r1", "t", DEADLINE_MS, **{"root": ROOT, "open": list(opened), **payload}))
    (one,) = traces.take_unfinished()
    return one


def test_a_timeout_fails_the_trace_and_each_open_span_at_the_deadline() -> None:
    events, unreadable = failed_events(announced(TOOLS, ANSWER), "timeout", T0 + 30)
    assert unreadable == 0
    trace, tools, answer = events
    error = "Lambda status timeout: the invocation did not finish within its 2 s timeout"
    assert trace["event"] == "$ai_trace"
    assert trace["properties"]["$ai_error"] == error
    assert trace["properties"]["$ai_latency"] == pytest.approx(2.0)
    assert trace["properties"]["$ai_span_name"] == "agent"
    for event in events:
        props = event["properties"]
        assert props["$ai_is_error"] is True
        assert props["lambda_status"] == "timeout"
        assert props["$ai_trace_id"] == "t"
        assert event["distinct_id"] == "user-1"
        assert event["timestamp"] == iso(DEADLINE_MS / 1000)
        assert builder_problems(event) == []
    assert tools["properties"]["$ai_error"] == answer["properties"]["$ai_error"] == "did not end: " + error
    assert (tools["properties"]["$ai_span_id"], tools["properties"]["$ai_parent_id"]) == ("span-tools", "t")
    assert answer["event"] == "$ai_generation"
    assert answer["properties"]["$ai_parent_id"] == "span-tools"
    assert answer["properties"]["$ai_generation_id"] == "span-answer"
    assert answer["properties"]["$ai_model"] == "gpt-4o"
    assert tools["properties"]["$ai_latency"] == pytest.approx(1.8)
    assert answer["properties"]["$ai_latency"] == pytest.approx(1.7)


@pytest.mark.parametrize(("died", "latency"), [(T0 + 1.25, 1.25), (T0 + 9, 2.0)])
def test_a_dead_process_fails_the_trace_when_it_died_or_at_the_deadline(died: float, latency: float) -> None:
    (trace, tools), unreadable = failed_events(announced(TOOLS), "failure", died)
    assert unreadable == 0
    error = "Lambda status failure: the function's process ended before the invocation finished"
    assert trace["properties"]["$ai_error"] == error
    assert tools["properties"]["$ai_error"] == "did not end: " + error
    assert trace["properties"]["$ai_latency"] == pytest.approx(latency)
    assert trace["timestamp"] == iso(min(died, DEADLINE_MS / 1000))


def test_the_events_are_the_ones_the_builder_makes_from_the_trace_header() -> None:
    common = {"lambda_request_id": "r1", "team": "search"}
    shared = announced(trace=header("t", **{SESSION_ID: "chat-1", COMMON: common}))
    (trace,), _ = failed_events(shared, "timeout", T0)
    assert trace["properties"]["$ai_session_id"] == "chat-1"
    assert trace["properties"]["lambda_request_id"] == "r1"
    assert trace["properties"]["team"] == "search"


def test_a_record_that_cannot_be_completed_is_counted_not_sent() -> None:
    shapeless = announced(root=["$ai_trace", "agent", None, "soon", -1, None, None, None, None, 0])
    events, unreadable = failed_events(shapeless, "timeout", T0)
    assert (events, unreadable) == ([], 1)  # the caller counts it as dropped


def test_spans_that_ended_are_not_failed_and_open_ones_join_later() -> None:
    traces = Traces()
    traces.start(start("r1", "t", DEADLINE_MS, root=ROOT, open=[TOOLS]))
    traces.opened({"request_id": "r1", "trace_id": "t", "open": [ANSWER, ["no id"], "junk"]})
    ended = expand(header("t"), [*TOOLS[:3], us(T0 + 0.4), 200_000_000, "span-tools", None, None, None, 0])
    traces.event(ended)
    (one,) = traces.take_unfinished()
    assert list(one.open) == ["span-answer"]
    assert traces.take_unfinished() == []  # forgotten as returned


def test_an_invocation_that_ended_or_whose_trace_came_is_not_failed() -> None:
    traces = Traces()
    traces.start(start("r1", "t1", DEADLINE_MS, root=ROOT))
    traces.start(start("r2", "t2", DEADLINE_MS, root=ROOT))
    traces.start(start("r3", "t3", DEADLINE_MS))  # no root: nothing to report
    traces.end("r1")
    traces.event(expand(header("t2"), [*ROOT[:4], 5, *ROOT[5:]]))  # found by its trace id
    assert traces.take_unfinished() == []


def extension(tmp_path: Path) -> Extension:
    settings = Settings(
        {
            "POSTHOG_API_KEY": "phc_local",
            "POSTHOG_HOST": "http://127.0.0.1:9",  # never reached: nothing is flushed here
            "POSTHOG_LAMBDA_SOCKET": str(tmp_path / "ph.sock"),
            "POSTHOG_LAMBDA_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    return Extension(settings)


def buffered(ext: Extension) -> list[dict[str, Any]]:
    entries = ext.buffer.begin()
    ext.buffer.end(entries)
    return [json.loads(e.data) for e in entries]


def test_failed_traces_are_fitted_to_the_trace_max_event_bytes_and_bad_records_counted(tmp_path: Path) -> None:
    ext = extension(tmp_path)
    big = [*ROOT[:9], 1, "x" * 100_000]  # its input: 100 KB
    payload = start("r1", "t", int((time.time() + 60) * 1000), root=big, open=[TOOLS, ["$ai_span", 1, 2, 3, 4, "id"]])
    payload["trace"][MAX_EVENT_BYTES] = 20_000
    ext.intake.frame(_frames.START, payload)
    ext.report_failed("timeout")
    trace, tools = buffered(ext)
    assert trace["properties"]["lambda_status"] == tools["properties"]["lambda_status"] == "timeout"
    assert len(json.dumps(trace, separators=(",", ":"), ensure_ascii=False).encode()) <= 20_000
    assert trace["properties"]["posthog_lambda_truncated"] == ["$ai_input_state"]
    assert ext.drops.totals() == {"events_invalid": 1}
    ext.sender.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spelled", "status"),
    [
        ("timeout", "timeout"),
        ("failure", "failure"),
        ("Timeout", "timeout"),
        ("ReleaseFail", "failure"),
        ("SandboxTerminated", "failure"),
    ],
)
def test_a_reset_is_recognised_however_its_reason_is_spelled(tmp_path: Path, spelled: str, status: str) -> None:
    # Lambda says timeout/failure; AWS's runtime interface emulator says Timeout/SandboxTerminated.
    ext = extension(tmp_path)
    ext.sender = None  # nothing to send to: what is buffered is what the reset produced
    ext.intake.frame(_frames.START, start("r1", "t", int((time.time() + 60) * 1000), root=ROOT))
    ext.shutdown({"eventType": "SHUTDOWN", "shutdownReason": spelled, "deadlineMs": int(time.time() * 1000) + 500})
    (trace,) = buffered(ext)
    assert trace["properties"]["lambda_status"] == status


def test_a_start_as_the_library_writes_it_marshalled_tracks_its_running_spans(tmp_path: Path) -> None:
    # Marshalled frames keep records as tuples, and inputs as marshal's bytes.
    import marshal

    from posthog_lambda_contract.records import HAS_INPUT, INPUT_MARSHALLED

    ext = extension(tmp_path)
    tools = (*TOOLS[:9], HAS_INPUT | INPUT_MARSHALLED, marshal.dumps({"tool": "search", "token": "t0ken"}, 4))
    payload = start("r1", "t", int((time.time() + 60) * 1000), root=tuple(ROOT), open=[tools])
    payload["trace"][REDACT] = ("token",)
    frame = _frames.encode(_frames.START, payload, marshalled=True)
    assert ext.intake.feed(_frames.Reader(), frame, "test")
    ext.report_failed("timeout")
    trace, cut = buffered(ext)
    assert trace["properties"]["lambda_status"] == "timeout"
    assert cut["properties"]["$ai_span_name"] == "tools"
    assert cut["properties"]["$ai_input_state"] == {"tool": "search", "token": "[REDACTED]"}
    assert cut["properties"]["lambda_status"] == "timeout"
    ext.sender.close()  # type: ignore[union-attr]
