"""Lambda SnapStart in the extension: ids safe from start-up, the sign of the restore (the first
event after Init, or a Telemetry restore record) acted on once, what the snapshot copied
forgotten, and what the restore says on the traces."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract import ids
from posthog_lambda_extension import _main
from posthog_lambda_extension._api import ExtensionsApi
from posthog_lambda_extension._buffer import Buffer
from posthog_lambda_extension._drops import Drops
from posthog_lambda_extension._intake import Intake
from posthog_lambda_extension._invocations import Invocations
from posthog_lambda_extension._loop import Extension
from posthog_lambda_extension._settings import Settings
from posthog_lambda_extension._telemetry import Telemetry
from tests.extension import data, make_event, start

SNAP_START = {"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}


@pytest.fixture(autouse=True)
def _source_restored() -> Iterator[None]:
    saved = ids._bits
    yield
    ids._bits = saved


@pytest.fixture
def reseeds(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """One entry per ``ids.reseed()`` call."""
    calls: list[None] = []
    reseed = ids.reseed
    monkeypatch.setattr(ids, "reseed", lambda: calls.append(None) or reseed())
    return calls


class Clock:
    """The extension's monotonic clock, moved by the test (a restore may make it jump)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def extension(tmp_path: Path, posthog: CaptureServer, clock: Clock | None = None, **env: str) -> Extension:
    settings = Settings(
        {
            "POSTHOG_API_KEY": "phc_local",
            "POSTHOG_HOST": posthog.url,
            "POSTHOG_LAMBDA_FLUSH": "batch",
            "POSTHOG_LAMBDA_SOCKET": str(tmp_path / "ph.sock"),
            "POSTHOG_LAMBDA_SPOOL_DIR": str(tmp_path / "spool"),
            **env,
        }
    )
    return Extension(settings, clock or time.monotonic)


def invoke(request_id: str) -> dict[str, Any]:
    return {"eventType": "INVOKE", "requestId": request_id, "deadlineMs": int((time.time() + 30) * 1000)}


SHUTDOWN = {"eventType": "SHUTDOWN", "shutdownReason": "spindown"}


class ScriptedApi(ExtensionsApi):
    """Answers next from a script, noting at each call whether the extension still awaited the
    sign of the restore; the Telemetry API is not there."""

    def __init__(self, ext: Extension, script: list[dict[str, Any]]) -> None:
        super().__init__("127.0.0.1:9")
        self.ext = ext
        self.script = script
        self.awaiting: list[bool] = []

    def next(self, identifier: str) -> dict[str, Any]:
        restore = self.ext.restore
        self.awaiting.append(restore is not None and restore.awaiting)
        return self.script.pop(0)

    def subscribe_telemetry(self, identifier: str, subscription: dict[str, Any]) -> None:
        raise OSError("no Telemetry API here")


def trace(request_id: str, trace_id: str = "t1") -> dict[str, Any]:
    return make_event("$ai_trace", **{"$ai_trace_id": trace_id, "lambda_request_id": request_id})


def buffered(buffer: Buffer) -> list[dict[str, Any]]:
    entries = buffer.begin()
    buffer.end(entries)
    return [json.loads(e.data) for e in entries]


# -- start-up and the sign --------------------------------------------------------------------


def test_on_snap_start_ids_are_drawn_from_the_kernel_from_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    ids.reseed()
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
    monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)
    assert _main.main([]) == 1  # not in Lambda: it stops right after its settings
    assert ids._bits is not ids._kernel_bits
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    assert _main.main([]) == 1
    assert ids._bits is ids._kernel_bits


def test_the_first_event_after_init_is_the_sign_acted_on_once(
    tmp_path: Path, posthog: CaptureServer, reseeds: list[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    ext = extension(tmp_path, posthog, **SNAP_START)
    handled: list[tuple[str, bool]] = []
    monkeypatch.setattr(ext, "invoke", lambda event: handled.append((event["requestId"], ext.intake.restored)))
    api = ScriptedApi(ext, [invoke("r1"), invoke("r2"), SHUTDOWN])
    assert ext.run(api, "id", None) == 0
    assert api.awaiting == [True, False, False]
    assert handled == [("r1", True), ("r2", True)]  # acted on before the first INVOKE is handled
    assert len(reseeds) == 1
    assert ids._bits is not ids._kernel_bits


def test_shutdown_as_the_first_event_is_the_sign_too(
    tmp_path: Path, posthog: CaptureServer, reseeds: list[None]
) -> None:
    ext = extension(tmp_path, posthog, **SNAP_START)
    api = ScriptedApi(ext, [SHUTDOWN])
    assert ext.run(api, "id", None) == 0
    assert ext.restore is not None
    assert not ext.restore.awaiting
    assert len(reseeds) == 1


def test_a_restore_record_first_is_the_sign_and_the_first_invoke_does_not_repeat_it(
    tmp_path: Path, posthog: CaptureServer, reseeds: list[None]
) -> None:
    ext = extension(tmp_path, posthog, **SNAP_START)
    telemetry = Telemetry(ext.invocations, ext.intake.traces, {}, snap_start=True)
    assert ext.restore is not None
    restore = ext.restore
    telemetry.restore_seen = lambda kind: restore.sign(kind)
    telemetry.receive([{"time": "t", "type": "platform.restoreStart", "record": {"functionName": "ask"}}])
    assert not restore.awaiting
    assert ext.intake.restored
    api = ScriptedApi(ext, [invoke("r1"), SHUTDOWN])
    ext.run(api, "id", None)
    assert api.awaiting == [False, False]
    assert len(reseeds) == 1


def test_on_demand_there_is_no_sign_and_traces_do_not_say_restored(
    tmp_path: Path, posthog: CaptureServer, reseeds: list[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    ext = extension(tmp_path, posthog, AWS_LAMBDA_INITIALIZATION_TYPE="on-demand")
    assert ext.restore is None
    monkeypatch.setattr(ext, "invoke", lambda event: None)
    ext.run(ScriptedApi(ext, [invoke("r1"), SHUTDOWN]), "id", None)
    assert reseeds == []
    ext.intake.event(trace("r1"))
    assert [e["properties"].get("lambda_restored") for e in buffered(ext.buffer)] == [None]


def test_the_sign_forgets_what_the_snapshot_copied(tmp_path: Path, posthog: CaptureServer) -> None:
    clock = Clock()
    ext = extension(tmp_path, posthog, clock, **SNAP_START)
    sender = ext.sender
    assert sender is not None
    # Init, before the snapshot: a kept-alive connection to PostHog, a backoff, INVOKE gaps, an
    # event buffered, all on the clock of the environment that ran Init.
    ext.buffer.add("e0", "$ai_span", data(make_event()))
    sender.flush(clock() + 5)
    connection = sender._connection
    assert connection is not None
    assert connection.sock is not None
    kept_alive = connection.sock
    sender.not_before, sender._failed_flushes = clock() + 30, 4
    ext.policy.on_invoke(clock() - 1, 0, 0, None)
    ext.policy.on_invoke(clock(), 0, 0, None)
    ext.buffer.add("e1", "$ai_span", data(make_event()))
    clock.now = 5.0  # the restored environment's clock
    assert ext.restore is not None
    assert ext.restore.sign("test")
    assert kept_alive.fileno() == -1  # closed unused
    assert sender._connection is None
    assert sender.ready()  # no backoff from before the snapshot
    assert sender._failed_flushes == 0
    assert ext.policy.gap() is None
    assert ext.buffer.stats().oldest == 5.0  # no flush decided on a time from before
    assert not ext.restore.sign("again")  # once
    assert sender.flush(clock() + 5).sent == 1
    assert sender._connection is not None
    assert sender._connection.sock is not None  # connected afresh
    assert len(posthog.unique_events()) == 2
    sender.close()


def test_the_function_replacing_its_init_connection_is_not_a_death(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, **SNAP_START)
    arrived = ext.intake.arrived = threading.Event()
    assert ext.server.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "ph.sock"))
    # A span ended outside a handler during Init: its connection looks mid-invocation.
    client.sendall(_frames.encode(_frames.EVENTS, {"events": [make_event()]}))
    assert arrived.wait(5)
    assert ext.restore is not None
    ext.restore.sign("test")
    client.close()  # the function's after-restore hook connects afresh
    assert ext.server.settle(5)
    assert ext.server.connections == 0
    assert ext.invocations.deaths == 0
    ext.server.close()


# -- before the snapshot ----------------------------------------------------------------------


def ask_before_snapshot(tmp_path: Path, frames_first: bytes = b"") -> tuple[int, dict[str, Any]]:
    """What the function's before-snapshot hook does: ``frames_first``, then SNAPSHOT, on one
    connection; the answer that comes back."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(str(tmp_path / "ph.sock"))
    client.sendall(frames_first + _frames.encode(_frames.SNAPSHOT, {}))
    reader = _frames.Reader()
    answers: list[tuple[int, dict[str, Any]]] = []
    while not answers:
        received = client.recv(4096)
        assert received, "the extension closed the connection without answering"
        answers, errors = reader.feed(received)
        assert not errors
    client.close()
    (answer,) = answers
    return answer


def test_before_the_snapshot_what_init_made_is_sent_once_and_answered(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, **SNAP_START)
    assert ext.server.start()
    made_in_init = [make_event("$ai_span", **{"$ai_span_name": "warm-up"}), make_event()]
    ext.drops.add("events_invalid", 1, "counted during Init", log=False)
    kind, answer = ask_before_snapshot(tmp_path, _frames.encode(_frames.EVENTS, {"events": made_in_init}))
    assert kind == _frames.SNAPSHOT
    assert answer == {"sent": True, "kept": 0}
    # Sent before the answer: the Init's events and the drops counted so far, nothing left to
    # copy into the restored environments.
    names = sorted(e.name for e in posthog.events)
    assert names == sorted(["$ai_span", "$ai_span", "posthog_lambda_dropped"])
    assert len(ext.buffer) == 0
    assert ext.server.settle(5)
    assert ext.invocations.deaths == 0  # the hook's connection closing is no death
    assert ext.restore is not None
    ext.restore.sign("test")
    ext.flush(time.monotonic() + 5, force=True)
    assert len(posthog.events) == 3  # nothing a second time
    ext.server.close()
    assert ext.sender is not None
    ext.sender.close()


def test_before_the_snapshot_what_posthog_did_not_take_stays_buffered_and_is_said(
    tmp_path: Path, posthog: CaptureServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("posthog_lambda_extension._loop.SNAPSHOT_BUDGET_S", 0.5)
    ext = extension(tmp_path, posthog, **SNAP_START)
    assert ext.server.start()
    posthog.fail_next(100, status=503)
    _, answer = ask_before_snapshot(tmp_path, _frames.encode(_frames.EVENTS, {"events": [make_event()]}))
    assert answer == {"sent": False, "kept": 1}
    assert "1 events made during Init could not be sent before the snapshot" in capsys.readouterr().out
    assert posthog.events == []
    ext.server.close()
    assert ext.sender is not None
    ext.sender.close()


def test_a_snapshot_frame_outside_snap_start_s_init_sends_nothing(tmp_path: Path, posthog: CaptureServer) -> None:
    for env in ({}, SNAP_START):
        ext = extension(tmp_path, posthog, **env)
        if ext.restore is not None:
            ext.restore.sign("test")  # after the restore: no snapshot comes
        assert ext.server.start()
        kind, answer = ask_before_snapshot(tmp_path, _frames.encode(_frames.EVENTS, {"events": [make_event()]}))
        assert (kind, answer) == (_frames.SNAPSHOT, {"sent": False, "kept": 1})
        assert posthog.requests == []
        ext.server.close()
        assert ext.sender is not None
        ext.sender.close()


# -- what the traces say ----------------------------------------------------------------------


def test_every_trace_after_the_sign_says_restored(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, **SNAP_START)
    ext.intake.event(trace("warm-up", "t0"))  # made during Init
    assert ext.restore is not None
    ext.restore.sign("test")
    ext.intake.event(trace("r1", "t1"))
    ext.intake.event(trace("r2", "t2"))
    ext.intake.event(make_event("$ai_span", **{"$ai_trace_id": "t2"}))
    traces = [e for e in buffered(ext.buffer) if e["event"] == "$ai_trace"]
    assert [t["properties"].get("lambda_restored") for t in traces] == [None, True, True]
    spans = [e for e in buffered(ext.buffer) if e["event"] == "$ai_span"]
    assert "lambda_restored" not in spans[0]["properties"]


def record(kind: str, **fields: Any) -> dict[str, Any]:
    return {"time": "2026-01-01T00:00:00.000Z", "type": kind, "record": fields}


def report(request_id: str, **metrics: float) -> dict[str, Any]:
    figures = {"durationMs": 10.5, "billedDurationMs": 11, "memorySizeMB": 128, "maxMemoryUsedMB": 60, **metrics}
    return record("platform.report", requestId=request_id, status="success", metrics=figures)


RESTORE_REPORT = record("platform.restoreReport", status="success", metrics={"durationMs": 15.19})


def restored_setup(metric_events: bool = False) -> tuple[Telemetry, Intake]:
    intake = Intake(Buffer(10_000_000, Drops()), Invocations(), Drops())
    intake.restored = True
    telemetry = Telemetry(intake.invocations, intake.traces, {}, snap_start=True, metric_events=metric_events)
    telemetry.subscribed = True
    return telemetry, intake


def properties_by_request(intake: Intake) -> dict[str, dict[str, Any]]:
    return {
        e["properties"]["lambda_request_id"]: e["properties"]
        for e in buffered(intake.buffer)
        if e["event"] == "$ai_trace"
    }


@pytest.mark.parametrize("when", ["before the invoke", "after the trace", "after its report"])
def test_the_restore_duration_lands_on_the_first_trace_only(when: str) -> None:
    telemetry, intake = restored_setup()
    if when == "before the invoke":
        telemetry.receive([RESTORE_REPORT])
    telemetry.invoked("r1")
    intake.event(trace("r1", "t1"))
    if when == "after the trace":
        telemetry.receive([RESTORE_REPORT])
    telemetry.receive([report("r1")])
    telemetry.apply(intake)
    if when == "after its report":
        telemetry.receive([RESTORE_REPORT])
        telemetry.apply(intake)
    telemetry.invoked("r2")
    intake.event(trace("r2", "t2"))
    telemetry.receive([report("r2")])
    telemetry.apply(intake)
    props = properties_by_request(intake)
    assert props["r1"]["lambda_restore_duration_ms"] == 15.19
    assert props["r1"]["lambda_billed_duration_ms"] == 11
    assert "lambda_restore_duration_ms" not in props["r2"]
    assert props["r2"]["lambda_billed_duration_ms"] == 11
    assert "lambda_restore_status" not in props["r1"]  # a restore that succeeded says nothing more


def test_the_first_report_s_restore_duration_goes_on_its_trace_once() -> None:
    telemetry, intake = restored_setup(metric_events=True)
    telemetry.invoked("r1")
    intake.event(trace("r1", "t1"))
    sent = intake.buffer.begin()
    intake.buffer.ack(sent)  # delivered before Lambda's figures came: they go as metrics
    telemetry.receive([report("r1", restoreDurationMs=15.19), RESTORE_REPORT])
    telemetry.apply(intake)
    telemetry.apply(intake)
    names = [e["properties"]["$ai_metric_name"] for e in buffered(intake.buffer)]
    assert names.count("lambda_restore_duration_ms") == 1
    (metric,) = [
        e for e in buffered(intake.buffer) if e["properties"]["$ai_metric_name"] == "lambda_restore_duration_ms"
    ]
    assert metric["properties"]["$ai_metric_value"] == 15.19


def test_the_snapshot_s_init_is_not_the_restored_environment_s_init_duration() -> None:
    telemetry, intake = restored_setup()
    # After the restore, Lambda may deliver the records of the Init the snapshot was made after.
    telemetry.receive(
        [
            record("platform.initStart", initializationType="snap-start", phase="init"),
            record("platform.initReport", initializationType="snap-start", metrics={"durationMs": 812.0}),
            record("platform.restoreStart", functionName="ask"),
        ]
    )
    telemetry.invoked("r1")
    intake.event(trace("r1", "t1"))
    telemetry.receive([report("r1", initDurationMs=812.0, restoreDurationMs=15.19)])
    telemetry.apply(intake)
    props = properties_by_request(intake)["r1"]
    assert "lambda_init_duration_ms" not in props
    assert props["lambda_restore_duration_ms"] == 15.19


def test_a_failed_restore_is_on_the_trace_and_said_once(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry, intake = restored_setup()
    telemetry.receive([record("platform.restoreRuntimeDone", status="failure")])
    telemetry.receive([record("platform.restoreReport", status="failure", metrics={"durationMs": 3.5})])
    telemetry.invoked("r1")
    intake.event(trace("r1", "t1"))
    telemetry.receive([report("r1")])
    telemetry.apply(intake)
    props = properties_by_request(intake)["r1"]
    assert props["lambda_restore_status"] == "failure"
    assert props["lambda_restore_duration_ms"] == 3.5
    assert capsys.readouterr().out.count("restore from the snapshot as failure") == 1


def test_restore_records_are_the_sign_on_snap_start_only() -> None:
    seen: list[str] = []
    for snap_start in (False, True):
        intake = Intake(Buffer(10_000_000, Drops()), Invocations(), Drops())
        telemetry = Telemetry(intake.invocations, intake.traces, {}, snap_start=snap_start)
        telemetry.restore_seen = seen.append
        telemetry.receive([record("platform.restoreStart", functionName="ask"), RESTORE_REPORT])
    assert seen == ["platform.restoreStart", "platform.restoreReport"]


def test_a_failed_trace_of_a_restored_environment_says_restored(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, **SNAP_START)
    assert ext.restore is not None
    ext.restore.sign("test")
    root = ["$ai_trace", "agent", None, int(time.time() * 1e6), -1, "t1", None, None, None, 0]
    ext.intake.frame(_frames.START, start("r1", "t1", int(time.time() * 1000) + 1000, root=root))
    ext.report_failed("timeout")
    (failed,) = [e for e in buffered(ext.buffer) if e["event"] == "$ai_trace"]
    assert failed["properties"]["lambda_status"] == "timeout"
    assert failed["properties"]["lambda_restored"] is True
