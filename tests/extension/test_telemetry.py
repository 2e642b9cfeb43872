"""The Telemetry API side of the extension: the subscription, the listener, runtimeDone ending an
invocation, and platform.report's figures on traces (as properties or $ai_metric events)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda import constants
from posthog_lambda.local import CaptureServer
from posthog_lambda_contract import frames as _frames
from posthog_lambda_extension import _telemetry
from posthog_lambda_extension._api import ExtensionsApi
from posthog_lambda_extension._buffer import Buffer
from posthog_lambda_extension._drops import Drops
from posthog_lambda_extension._intake import Intake
from posthog_lambda_extension._invocations import Invocations
from posthog_lambda_extension._loop import END_AFTER_DONE_S, START_GRACE_S, Extension
from posthog_lambda_extension._settings import Settings
from posthog_lambda_extension._telemetry import DEFAULT_PRICES, HOLD_S, Telemetry
from posthog_lambda_extension._traces import Traces
from tests.extension import builder_problems, make_event, start

SAM = {"AWS_SAM_LOCAL": "true"}  # binds 0.0.0.0: sandbox.localdomain resolves only in Lambda


class FakeLambda:
    """The Telemetry API's subscription endpoint, answering ``status``."""

    def __init__(self, status: int = 200, refusal: bytes = b'{"errorType":"ValidationError"}') -> None:
        self.status = status
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                fake.requests.append((self.command, self.path, dict(self.headers), json.loads(body)))
                payload = b"OK" if fake.status == 200 else refusal
                self.send_response(fake.status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.api = ExtensionsApi(f"127.0.0.1:{self.server.server_address[1]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_lambda() -> Iterator[FakeLambda]:
    fake = FakeLambda()
    yield fake
    fake.close()


def post(telemetry_port: int, records: list[dict[str, Any]]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{telemetry_port}/", data=json.dumps(records).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


def runtime_done(request_id: str, status: str = "success") -> dict[str, Any]:
    record = {"requestId": request_id, "status": status, "metrics": {"durationMs": 12.5}}
    return {"time": "2026-01-01T00:00:00.000Z", "type": "platform.runtimeDone", "record": record}


def report(request_id: str, billed: int = 100, memory: int = 128, used: int = 60, init: float | None = None) -> dict:
    metrics: dict[str, Any] = {
        "durationMs": billed - 0.5,
        "billedDurationMs": billed,
        "memorySizeMB": memory,
        "maxMemoryUsedMB": used,
    }
    if init is not None:
        metrics["initDurationMs"] = init
    record = {"requestId": request_id, "status": "success", "metrics": metrics}
    return {"time": "2026-01-01T00:00:00.000Z", "type": "platform.report", "record": record}


# -- subscription and receiver ---------------------------------------------------------------


def test_the_subscription_asks_for_platform_records_with_the_smallest_delay() -> None:
    assert _telemetry.subscription(4321) == {
        "schemaVersion": "2022-12-13",
        "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain:4321"},
        "types": ["platform"],
        "buffering": {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25},
    }


def test_it_listens_on_a_free_port_and_subscribes_with_its_identifier(fake_lambda: FakeLambda) -> None:
    invocations = Invocations()
    telemetry = Telemetry(invocations, Traces(), {})
    try:
        assert telemetry.start(fake_lambda.api, "ext-id", SAM)
        assert telemetry.subscribed
        ((method, path, headers, body),) = fake_lambda.requests
        assert (method, path) == ("PUT", "/2022-07-01/telemetry")
        assert headers["Lambda-Extension-Identifier"] == "ext-id"
        assert body == _telemetry.subscription(int(body["destination"]["URI"].rsplit(":", 1)[1]))
        port = int(body["destination"]["URI"].rsplit(":", 1)[1])
        assert port > 0
        telemetry.invoked("r1")
        assert post(port, [runtime_done("r1", "timeout")]) == 200
        assert invocations.done("r1")
        assert not invocations.ended("r1")  # END is the library's; runtimeDone is separate
        assert not telemetry.wait_reports(0)
        assert post(port, [report("r1"), {"type": "platform.start"}, "junk", runtime_done("")]) == 200
        assert telemetry.wait_reports(0)
    finally:
        telemetry.close()


def test_a_receiver_that_cannot_bind_is_one_line_and_no_subscription(
    fake_lambda: FakeLambda, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_telemetry, "SANDBOX_HOST", "no-such-host.invalid")
    telemetry = Telemetry(Invocations(), Traces(), {})
    assert not telemetry.start(fake_lambda.api, "ext-id", {})
    assert not telemetry.subscribed
    assert fake_lambda.requests == []
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "cannot listen for the Telemetry API" in out[0]


RIE_NOT_SUPPORTED = b'{"errorMessage":"Telemetry API is not supported","errorType":"Telemetry.NotSupported"}\n'


@pytest.mark.parametrize(
    ("status", "refusal"),
    [(400, b'{"errorType":"ValidationError"}'), (202, RIE_NOT_SUPPORTED)],  # AWS's emulator: 202, and a newline
)
def test_a_refused_subscription_is_one_line(status: int, refusal: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeLambda(status=status, refusal=refusal)
    try:
        telemetry = Telemetry(Invocations(), Traces(), {})
        assert not telemetry.start(fake.api, "ext-id", SAM)
        assert not telemetry.subscribed
    finally:
        fake.close()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "cannot subscribe to the Telemetry API" in out[0]
    assert str(status) in out[0]
    assert out[0].endswith("going on without it")


def test_garbage_posted_to_the_receiver_is_answered_and_ignored(fake_lambda: FakeLambda) -> None:
    invocations = Invocations()
    telemetry = Telemetry(invocations, Traces(), {})
    try:
        assert telemetry.start(fake_lambda.api, "ext-id", SAM)
        port = int(fake_lambda.requests[0][3]["destination"]["URI"].rsplit(":", 1)[1])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"not json{", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        assert post(port, [runtime_done("r2")]) == 200  # still listening
        assert invocations.done("r2")
    finally:
        telemetry.close()


# -- prices ----------------------------------------------------------------------------------


def test_the_architecture_comes_from_the_machine() -> None:
    assert _telemetry.architecture("aarch64") == "arm64"
    assert _telemetry.architecture("arm64") == "arm64"
    assert _telemetry.architecture("x86_64") == "x86_64"


def test_prices_default_and_can_be_overridden_in_part() -> None:
    assert _telemetry.prices({}) == (DEFAULT_PRICES, None)
    table, problem = _telemetry.prices({constants.POSTHOG_LAMBDA_PRICES: '{"arm64": 0.00001, "request": 0}'})
    assert problem is None
    assert table == {"x86_64": 0.0000166667, "arm64": 0.00001, "request": 0.0}


@pytest.mark.parametrize("value", ["nope", "[]", "{}", '{"x86": 1}', '{"arm64": -1}', '{"request": "0.2"}'])
def test_an_unusable_price_table_keeps_the_defaults_and_says_why(value: str) -> None:
    table, problem = _telemetry.prices({constants.POSTHOG_LAMBDA_PRICES: value})
    assert table == DEFAULT_PRICES
    assert problem is not None
    assert constants.POSTHOG_LAMBDA_PRICES in problem


def test_cost_is_gb_seconds_times_the_price_plus_the_request() -> None:
    # 512 MB for 1,000 ms billed = 0.5 GB-s.
    assert _telemetry.cost_usd(512, 1000, DEFAULT_PRICES, "x86_64") == pytest.approx(
        0.5 * 0.0000166667 + 0.0000002, rel=1e-12
    )
    assert _telemetry.cost_usd(1024, 2000, DEFAULT_PRICES, "arm64") == pytest.approx(
        2 * 0.0000133334 + 0.0000002, rel=1e-12
    )


# -- figures on traces -----------------------------------------------------------------------


def buffered_trace(intake: Intake, trace_id: str, **properties: Any) -> dict[str, Any]:
    event = make_event("$ai_trace", **{"$ai_trace_id": trace_id, **properties})
    intake.event(event)
    return event


def events_in(buffer: Buffer) -> dict[str, dict[str, Any]]:
    entries = buffer.begin()
    buffer.end(entries)
    return {e.uuid: json.loads(e.data) for e in entries}


def setup(metric_events: bool = False) -> tuple[Telemetry, Intake]:
    """A telemetry and an intake; ``metric_events``: figures that come late go as ``$ai_metric``
    events (``POSTHOG_LAMBDA_METRIC_EVENTS``)."""
    intake = Intake(Buffer(10_000_000, Drops()), Invocations(), Drops())
    telemetry = Telemetry(intake.invocations, intake.traces, {}, metric_events=metric_events)
    telemetry.arch = "x86_64"
    return telemetry, intake


def test_a_report_goes_on_its_buffered_trace_found_by_request_id() -> None:
    telemetry, intake = setup()
    trace = buffered_trace(intake, "t1", lambda_request_id="r1")
    telemetry.receive([report("r1", billed=200, memory=256, used=70, init=150.25)])
    assert telemetry.apply(intake) == 1
    (event,) = events_in(intake.buffer).values()
    assert event["uuid"] == trace["uuid"]
    props = event["properties"]
    assert props["lambda_billed_duration_ms"] == 200
    assert props["lambda_duration_ms"] == 199.5
    assert props["lambda_memory_size_mb"] == 256
    assert props["lambda_max_memory_used_mb"] == 70
    assert props["lambda_init_duration_ms"] == 150.25
    assert props["lambda_cost_usd"] == pytest.approx(0.25 * 0.2 * 0.0000166667 + 0.0000002, rel=1e-12)
    assert telemetry.apply(intake) == 0  # each report once


def test_a_trace_without_request_id_is_found_by_its_start_frame() -> None:
    telemetry, intake = setup()
    telemetry.traces.start(start("r1", "t1"))
    buffered_trace(intake, "t1")
    telemetry.receive([report("r1")])
    assert telemetry.apply(intake) == 1
    (event,) = events_in(intake.buffer).values()
    assert "lambda_init_duration_ms" not in event["properties"]  # not a cold start
    assert event["properties"]["lambda_billed_duration_ms"] == 100


def test_by_default_figures_that_come_after_their_trace_was_sent_make_no_event() -> None:
    telemetry, intake = setup()
    buffered_trace(intake, "t1", lambda_request_id="r1")
    intake.buffer.ack(intake.buffer.begin())  # delivered before its report came
    telemetry.receive([report("r1", init=80.0)])
    assert telemetry.apply(intake) == 1
    assert len(intake.buffer) == 0


def test_a_trace_already_sent_gets_one_linked_metric_per_figure() -> None:
    telemetry, intake = setup(metric_events=True)
    trace = buffered_trace(
        intake,
        "t1",
        lambda_request_id="r1",
        **{"$process_person_profile": False, "$ai_session_id": "chat-7", "$groups": {"company": "acme"}},
    )
    buffer = intake.buffer
    sent = buffer.begin()
    buffer.ack(sent)  # delivered before its report came
    telemetry.receive([report("r1", init=80.0)])
    assert telemetry.apply(intake) == 1
    metrics = list(events_in(buffer).values())
    names = {m["properties"]["$ai_metric_name"]: m for m in metrics}
    assert set(names) == {
        "lambda_billed_duration_ms",
        "lambda_duration_ms",
        "lambda_memory_size_mb",
        "lambda_max_memory_used_mb",
        "lambda_init_duration_ms",
        "lambda_cost_usd",
    }
    for metric in metrics:
        assert metric["event"] == "$ai_metric"
        assert metric["distinct_id"] == trace["distinct_id"]
        assert metric["properties"]["$ai_trace_id"] == "t1"
        assert metric["properties"]["lambda_request_id"] == "r1"
        assert metric["properties"]["$process_person_profile"] is False
        # Made by the one builder from the trace's header: its session and groups too.
        assert metric["properties"]["$ai_session_id"] == "chat-7"
        assert metric["properties"]["$groups"] == {"company": "acme"}
        assert builder_problems(metric) == []
    assert names["lambda_billed_duration_ms"]["properties"]["$ai_metric_value"] == 100
    assert len({m["uuid"] for m in metrics}) == 6


def test_a_known_user_gets_a_person_profile_on_its_metrics() -> None:
    telemetry, intake = setup(metric_events=True)
    buffered_trace(intake, "t1", lambda_request_id="r1")
    intake.buffer.ack(intake.buffer.begin())
    telemetry.receive([report("r1")])
    telemetry.apply(intake)
    metrics = list(events_in(intake.buffer).values())
    assert len(metrics) == 5
    assert all("$process_person_profile" not in m["properties"] for m in metrics)


def test_metrics_are_taken_in_like_any_event_discarded_and_counted_when_nothing_is_sent() -> None:
    telemetry, intake = setup(metric_events=True)
    buffered_trace(intake, "t1", lambda_request_id="r1")
    intake.buffer.ack(intake.buffer.begin())
    intake.discard = "events_api_key_refused"
    telemetry.receive([report("r1")])
    assert telemetry.apply(intake) == 1
    assert len(intake.buffer) == 0
    assert intake.drops.totals() == {"events_api_key_refused": 5}


def test_a_trace_in_flight_is_not_edited_the_figures_go_as_metrics() -> None:
    telemetry, intake = setup(metric_events=True)
    trace = buffered_trace(intake, "t1", lambda_request_id="r1")
    held = intake.buffer.begin()  # a flush is sending it right now
    telemetry.receive([report("r1")])
    telemetry.apply(intake)
    intake.buffer.end(held)
    events = events_in(intake.buffer)
    assert "lambda_billed_duration_ms" not in events[trace["uuid"]]["properties"]
    assert sum(1 for e in events.values() if e["event"] == "$ai_metric") == 5


def test_a_report_for_an_untraced_invocation_adds_nothing() -> None:
    telemetry, intake = setup()
    telemetry.receive([report("r9")])
    assert telemetry.apply(intake) == 0
    assert len(intake.buffer) == 0


# -- the end of an invocation ----------------------------------------------------------------


def extension(tmp_path: Path, posthog: CaptureServer) -> Extension:
    settings = Settings(
        {
            "POSTHOG_API_KEY": "phc_local",
            "POSTHOG_HOST": posthog.url,
            "POSTHOG_LAMBDA_FLUSH": "end",
            "POSTHOG_LAMBDA_SOCKET": str(tmp_path / "ph.sock"),
            "POSTHOG_LAMBDA_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    ext = Extension(settings)
    ext.telemetry = Telemetry(ext.invocations, Traces(), {})  # as if subscribed
    ext.intake.traces = ext.telemetry.traces
    return ext


def invoke(request_id: str, seconds: float) -> dict[str, Any]:
    return {"eventType": "INVOKE", "requestId": request_id, "deadlineMs": int((time.time() + seconds) * 1000)}


def test_runtime_done_ends_an_untraced_invocation_at_once(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog)
    ext.intake.frame(_frames.EVENTS, {"events": [make_event()]})  # sent without the decorator
    handler = threading.Thread(target=ext.invoke, args=(invoke("r1", 30),))
    started = time.monotonic()
    handler.start()
    ext.invocations.wait(lambda: False, 0.05)  # the runtime runs a little
    ext.telemetry.receive([runtime_done("r1")])  # type: ignore[union-attr]
    handler.join(10)
    assert time.monotonic() - started < START_GRACE_S  # neither the START rule nor the deadline
    assert len(posthog.events) == 1
    assert not ext.policy.untraced  # it sent events: later invocations are waited for too
    ext.sender.close()  # type: ignore[union-attr]


def test_an_untraced_function_that_sends_nothing_is_not_waited_for_again(
    tmp_path: Path, posthog: CaptureServer
) -> None:
    ext = extension(tmp_path, posthog)
    ext.telemetry.receive([runtime_done("r1")])  # type: ignore[union-attr]
    ext.invoke(invoke("r1", 30))
    assert ext.policy.untraced
    started = time.monotonic()
    ext.invoke(invoke("r2", 30))  # no runtimeDone will come: it must not wait
    assert time.monotonic() - started < 0.2
    ext.intake.frame(_frames.EVENTS, {"events": [make_event()]})  # now it sends something
    ext.telemetry.receive([runtime_done("r3")])  # type: ignore[union-attr]
    ext.invoke(invoke("r3", 30))
    assert not ext.policy.untraced
    assert len(posthog.events) == 1
    ext.sender.close()  # type: ignore[union-attr]


def test_a_started_invocation_whose_process_died_ends_shortly_after_runtime_done(
    tmp_path: Path, posthog: CaptureServer
) -> None:
    ext = extension(tmp_path, posthog)
    ext.intake.frame(_frames.START, start("r1", "t1"))
    ext.intake.frame(_frames.EVENTS, {"events": [make_event()]})
    ext.telemetry.receive([runtime_done("r1", "failure")])  # type: ignore[union-attr]
    started = time.monotonic()
    assert ext.wait_for_end("r1", time.monotonic() + 30) == "runtime_done"
    assert END_AFTER_DONE_S <= time.monotonic() - started < END_AFTER_DONE_S + 1
    ext.intake.frame(_frames.END, {"request_id": "r1", "trace_id": "t1"})
    assert ext.wait_for_end("r1", time.monotonic() + 30) == "ended"  # END wins when it is there
    ext.sender.close()  # type: ignore[union-attr]


def traced_invocation(ext: Extension, request_id: str, trace_id: str) -> dict[str, Any]:
    """One traced invocation, its frames coming while it runs, as on Lambda; its ``$ai_trace``."""
    ext.telemetry.invoked(request_id)  # type: ignore[union-attr]  # as invoke does, before the frames
    trace = make_event("$ai_trace", **{"$ai_trace_id": trace_id, "lambda_request_id": request_id})
    ext.intake.frame(_frames.START, start(request_id, trace_id))
    ext.intake.frame(_frames.EVENTS, {"events": [make_event(**{"$ai_trace_id": trace_id}), trace]})
    ext.intake.frame(_frames.END, {"request_id": request_id, "trace_id": trace_id})
    ext.invoke(invoke(request_id, 30))
    return trace


class Clock:
    """The telemetry's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def held_extension(tmp_path: Path, posthog: CaptureServer, clock: Clock | None = None) -> Extension:
    """An extension subscribed to the Telemetry API, whose traces wait for their reports."""
    ext = extension(tmp_path, posthog)
    telemetry = Telemetry(ext.invocations, ext.intake.traces, {}, clock=clock or Clock())
    telemetry.subscribed = True
    ext.telemetry = telemetry
    ext.intake.awaits_report = telemetry.awaits
    return ext


def test_a_trace_waits_for_its_report_and_carries_its_figures(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = held_extension(tmp_path, posthog)
    first = traced_invocation(ext, "r1", "t1")
    # Its span went at the end of the invocation; the trace waits for Lambda's report.
    assert [e.name for e in posthog.events] == ["$ai_span"]
    ext.telemetry.receive([report("r1", init=42.0)])  # type: ignore[union-attr]  # as r2 begins
    traced_invocation(ext, "r2", "t2")
    trace = next(e for e in posthog.events if e.uuid == first["uuid"])
    assert trace.properties["lambda_billed_duration_ms"] == 100
    assert trace.properties["lambda_init_duration_ms"] == 42.0
    assert not [e for e in posthog.events if e.name == "$ai_metric"]
    ext.sender.close()  # type: ignore[union-attr]


def test_a_report_that_never_comes_holds_its_trace_two_invocations_and_a_second_at_most(
    tmp_path: Path, posthog: CaptureServer
) -> None:
    clock = Clock()
    ext = held_extension(tmp_path, posthog, clock)
    first = traced_invocation(ext, "r1", "t1")
    traced_invocation(ext, "r2", "t2")
    traced_invocation(ext, "r3", "t3")
    assert first["uuid"] not in {e.uuid for e in posthog.events}  # two INVOKEs, but not a second yet
    clock.now += HOLD_S
    traced_invocation(ext, "r4", "t4")  # it goes, without Lambda's figures
    (trace,) = [e for e in posthog.events if e.uuid == first["uuid"]]
    assert "lambda_billed_duration_ms" not in trace.properties
    ext.sender.close()  # type: ignore[union-attr]


def test_a_held_trace_is_not_counted_as_waiting_to_be_sent(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = held_extension(tmp_path, posthog)
    traced_invocation(ext, "r1", "t1")
    stats = ext.buffer.stats()
    assert (len(ext.buffer), ext.buffer.held, stats.count, stats.oldest) == (1, 1, 0, None)
    ext.sender.close()  # type: ignore[union-attr]


def test_shutdown_waits_for_the_last_report_and_sends_its_trace_with_it(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = held_extension(tmp_path, posthog)
    trace = traced_invocation(ext, "r1", "t1")
    assert trace["uuid"] not in {e.uuid for e in posthog.events}
    late = threading.Timer(0.05, ext.telemetry.receive, args=([report("r1", init=42.0)],))  # type: ignore[union-attr]
    late.start()
    ext.shutdown({"eventType": "SHUTDOWN", "deadlineMs": int((time.time() + 2) * 1000)})
    late.join()
    (sent,) = [e for e in posthog.events if e.uuid == trace["uuid"]]
    assert sent.properties["lambda_init_duration_ms"] == 42.0
    assert sent.properties["lambda_billed_duration_ms"] == 100
    assert not [e for e in posthog.events if e.name == "$ai_metric"]


def test_shutdown_sends_a_held_trace_whose_report_never_came(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = held_extension(tmp_path, posthog)
    trace = traced_invocation(ext, "r1", "t1")
    ext.shutdown({"eventType": "SHUTDOWN", "deadlineMs": int((time.time() + 1) * 1000)})
    assert trace["uuid"] in {e.uuid for e in posthog.events}


# -- Lambda Managed Instances ---------------------------------------------------------------


def test_on_managed_instances_the_subscription_asks_for_the_schema_it_accepts() -> None:
    assert _telemetry.subscription(4321, managed=True)["schemaVersion"] == "2025-01-29"
    assert _telemetry.subscription(4321)["schemaVersion"] == "2022-12-13"


def managed_setup() -> tuple[Telemetry, Intake]:
    intake = Intake(Buffer(10_000_000, Drops()), Invocations(), Drops())
    return Telemetry(intake.invocations, intake.traces, {}, managed=True), intake


def test_on_managed_instances_a_report_adds_its_duration_and_no_per_gb_second_cost() -> None:
    telemetry, intake = managed_setup()
    buffered_trace(intake, "t1", lambda_request_id="r1")
    telemetry.receive(
        [
            {
                "type": "platform.report",
                "record": {"requestId": "r1", "status": "success", "metrics": {"durationMs": 12.5}},
            }
        ]
    )
    assert telemetry.apply(intake) == 1
    (event,) = events_in(intake.buffer).values()
    assert event["properties"]["lambda_duration_ms"] == 12.5
    assert "lambda_cost_usd" not in event["properties"]
    assert telemetry.take_failed() == []  # a success is no failure


def test_on_managed_instances_a_late_report_makes_no_metric_event() -> None:
    telemetry, intake = managed_setup()
    buffered_trace(intake, "t1", lambda_request_id="r1")
    sent = intake.buffer.begin()
    intake.buffer.ack(sent)
    telemetry.receive([report("r1")])
    assert telemetry.apply(intake) == 1
    assert events_in(intake.buffer) == {}


def test_on_managed_instances_timeouts_and_failures_are_handed_over_once() -> None:
    telemetry, _ = managed_setup()
    woken = threading.Event()
    telemetry.failed = woken
    telemetry.receive(
        [
            {"type": "platform.report", "record": {"requestId": "r1", "status": "timeout"}},
            {"type": "platform.report", "record": {"requestId": "r2", "status": "error"}},
            {"type": "platform.report", "record": {"requestId": "r3", "status": "failure"}},
        ]
    )
    assert woken.is_set()
    assert telemetry.take_failed() == [("r1", "timeout"), ("r3", "failure")]
    assert telemetry.take_failed() == []


def subscribed_setup() -> tuple[Telemetry, Intake]:
    telemetry, intake = setup()
    telemetry.subscribed = True
    intake.awaits_report = telemetry.awaits
    return telemetry, intake


def test_a_trace_read_before_its_invoke_still_waits_for_its_report() -> None:
    telemetry, intake = subscribed_setup()
    trace = buffered_trace(intake, "t1", lambda_request_id="r1")  # its frames came first
    telemetry.invoked("r1")
    assert intake.buffer.begin() == []  # held
    telemetry.receive([report("r1")])
    telemetry.apply(intake)
    assert events_in(intake.buffer)[trace["uuid"]]["properties"]["lambda_billed_duration_ms"] == 100


def test_a_report_that_comes_before_its_trace_waits_for_it() -> None:
    telemetry, intake = subscribed_setup()
    telemetry.invoked("r1")
    telemetry.receive([report("r1")])
    assert telemetry.apply(intake) == 0  # no trace yet: the report is kept
    trace = buffered_trace(intake, "t1", lambda_request_id="r1")
    assert intake.buffer.begin() == []  # held for the report that came
    assert telemetry.apply(intake) == 1
    assert events_in(intake.buffer)[trace["uuid"]]["properties"]["lambda_billed_duration_ms"] == 100
