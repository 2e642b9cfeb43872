"""The extension's handling of INVOKE and SHUTDOWN, in-process: when it waits, when it flushes,
how losses reach PostHog, and that nothing makes it stop before SHUTDOWN."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda_contract import frames as _frames
from posthog_lambda_extension import _api, _main
from posthog_lambda_extension._api import ApiError, ExtensionsApi
from posthog_lambda_extension._drops import DROPPED_EVENT, REPORTER
from posthog_lambda_extension._loop import START_GRACE_S, Extension
from posthog_lambda_extension._settings import Settings
from posthog_lambda_extension._unix_socket import bind
from tests.extension import builder_problems, make_event, start

_CLIENTS: list[socket.socket] = []
"""The function processes' connections the tests' extensions got (kept open for the test)."""
_EXTENSIONS: list[Extension] = []
"""The tests' extensions: their socket servers (a thread each) and senders end with the test."""


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()
    while _EXTENSIONS:
        ext = _EXTENSIONS.pop()
        ext.server.close()
        if ext.sender is not None:
            ext.sender.close()


def extension(tmp_path: Path, posthog: CaptureServer, *, connected: bool = True, **env: str) -> Extension:
    """An extension whose socket a traced function's process has connected to, as one does
    while its handler is decorated (``connected``), unless the test serves the socket itself."""
    settings = Settings(
        {
            "POSTHOG_API_KEY": "phc_local",
            "POSTHOG_HOST": posthog.url,
            "POSTHOG_LAMBDA_SOCKET": str(tmp_path / "ph.sock"),
            "POSTHOG_LAMBDA_SPOOL_DIR": str(tmp_path / "spool"),
            **env,
        }
    )
    ext = Extension(settings)
    _EXTENSIONS.append(ext)
    if connected:
        assert ext.server.start()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(settings.socket_path)
        _CLIENTS.append(client)
    return ext


def invoke(request_id: str, seconds: float) -> dict[str, Any]:
    return {"eventType": "INVOKE", "requestId": request_id, "deadlineMs": int((time.time() + seconds) * 1000)}


def frames(ext: Extension, request_id: str, *events: dict[str, Any], ended: bool = True) -> None:
    ext.intake.frame(_frames.START, start(request_id))
    ext.intake.frame(_frames.EVENTS, {"events": list(events)})
    if ended:
        ext.intake.frame(_frames.END, {"request_id": request_id, "trace_id": "t"})


def test_end_mode_returns_as_soon_as_the_end_frame_arrives(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, POSTHOG_LAMBDA_FLUSH="end")
    item = make_event()
    handler = threading.Thread(target=ext.invoke, args=(invoke("r1", 30),))
    started = time.monotonic()
    handler.start()
    frames(ext, "r1", item)  # whether before or during the wait: both must end it
    handler.join(10)
    assert not handler.is_alive()
    assert time.monotonic() - started < 5
    assert [e.uuid for e in posthog.events] == [item["uuid"]]
    ext.sender.close()  # type: ignore[union-attr]


def test_without_a_start_frame_it_stops_waiting_and_learns(
    tmp_path: Path, posthog: CaptureServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ext = extension(tmp_path, posthog, POSTHOG_LAMBDA_FLUSH="end")
    ext.intake.frame(_frames.EVENTS, {"events": [make_event()]})  # a span outside a traced handler
    started = time.monotonic()
    ext.invoke(invoke("r1", 30))
    assert START_GRACE_S <= time.monotonic() - started < START_GRACE_S + 2
    assert len(posthog.events) == 1  # flushed once it stopped waiting
    assert ext.policy.untraced
    started = time.monotonic()
    ext.invoke(invoke("r2", 30))
    assert time.monotonic() - started < START_GRACE_S  # no longer waits
    late = make_event()
    frames(ext, "r3", late)  # a traced handler after all: the next invocation is waited for again
    ext.invoke(invoke("r3", 30))
    assert not ext.policy.untraced
    assert late["uuid"] in {e.uuid for e in posthog.events}
    assert capsys.readouterr().out.count("no START frame") == 1
    ext.sender.close()  # type: ignore[union-attr]


def test_a_handler_that_never_ends_is_waited_for_until_its_deadline(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, POSTHOG_LAMBDA_FLUSH="end")
    item = make_event()
    frames(ext, "r1", item, ended=False)
    started = time.monotonic()
    ext.invoke(invoke("r1", 0.5))  # the wait ends 200 ms before the deadline, the flush 100 ms before
    assert 0.3 <= time.monotonic() - started < 0.5
    assert [e.uuid for e in posthog.events] == [item["uuid"]]
    ext.sender.close()  # type: ignore[union-attr]


def test_batch_mode_flushes_at_invoke_once_enough_events_wait(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, POSTHOG_LAMBDA_FLUSH="batch", POSTHOG_FLUSH_AT="3")
    frames(ext, "r1", make_event(), make_event())
    ext.invoke(invoke("r2", 30))
    assert posthog.requests == []
    frames(ext, "r2", make_event())
    ext.invoke(invoke("r3", 30))
    assert len(posthog.events) == 3
    ext.sender.close()  # type: ignore[union-attr]


def test_losses_are_reported_in_the_next_batch(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, POSTHOG_LAMBDA_FLUSH="end")
    bad = {"event": "", "distinct_id": "u", "uuid": "x"}
    frames(ext, "r1", make_event(), bad, bad)
    ext.invoke(invoke("r1", 30))
    (report,) = [e for e in posthog.events if e.name == DROPPED_EVENT]
    assert report.distinct_id == REPORTER
    assert builder_problems(report.event) == []  # a UUIDv7 and the one timestamp format
    assert report.properties["events_invalid"] == 2
    assert report.properties["posthog_lambda_dropped_total"] == 2
    assert report.properties["$process_person_profile"] is False
    frames(ext, "r2", make_event())
    ext.invoke(invoke("r2", 30))
    assert len([e for e in posthog.events if e.name == DROPPED_EVENT]) == 1  # nothing new to report
    ext.sender.close()  # type: ignore[union-attr]


def test_after_a_refused_key_events_are_discarded_and_counted(tmp_path: Path) -> None:
    with CaptureServer(api_key="phc_other") as posthog:
        ext = extension(tmp_path, posthog, POSTHOG_LAMBDA_FLUSH="end")
        frames(ext, "r1", make_event(), make_event())
        ext.invoke(invoke("r1", 30))
        frames(ext, "r2", make_event())
        ext.invoke(invoke("r2", 30))
    assert len(posthog.requests) == 1
    assert len(ext.buffer) == 0
    assert ext.drops.totals() == {"events_api_key_refused": 3}


def test_shutdown_sends_everything_and_removes_the_socket(
    tmp_path: Path, posthog: CaptureServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ext = extension(tmp_path, posthog, connected=False, POSTHOG_LAMBDA_FLUSH="batch")
    assert ext.server.start()
    items = [make_event() for _ in range(3)]
    frames(ext, "r1", *items, {"event": "x"})
    posthog.fail_next(1, 503)
    ext.shutdown({"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": int(time.time() * 1000) + 2000})
    assert {e.uuid for e in posthog.events} >= {e["uuid"] for e in items}
    assert not (tmp_path / "ph.sock").exists()
    assert "dropped during this environment's life: events_invalid=1" in capsys.readouterr().out


class ScriptedApi(ExtensionsApi):
    """Answers next from a script: events, or ApiErrors to raise."""

    def __init__(self, script: list[dict[str, Any] | ApiError]) -> None:
        super().__init__("127.0.0.1:9")
        self.script = script

    def next(self, identifier: str) -> dict[str, Any]:
        step = self.script.pop(0)
        if isinstance(step, ApiError):
            raise step
        return step


def test_nothing_but_shutdown_ends_the_loop(
    tmp_path: Path, posthog: CaptureServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_api, "RETRY_MAX_S", 0.0)
    ext = extension(tmp_path, posthog, connected=False, POSTHOG_LAMBDA_FLUSH="end")
    calls = 0

    def broken_drain() -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ext.spool, "drain", broken_drain)
    api = ScriptedApi(
        [
            ApiError("connection refused"),
            invoke("r1", 30),
            {"eventType": "SOMETHING_NEW"},
            ApiError("bad gateway", 502),
            invoke("r2", 30),
            {"eventType": "SHUTDOWN", "deadlineMs": int(time.time() * 1000) + 2000},
        ]
    )
    assert ext.run(api, "id", bind(str(tmp_path / "ph.sock"))) == 0
    assert api.script == []
    assert calls == 3  # both invocations and the shutdown reached the failing step
    out = capsys.readouterr().out
    assert out.count("handling INVOKE failed unexpectedly: RuntimeError('disk on fire')") == 1
    assert "waiting for the next event failed" in out
    assert not (tmp_path / "ph.sock").exists()


def test_main_outside_lambda_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)
    assert _main.main([]) == 1
    assert "[posthog-lambda] not running in AWS Lambda" in capsys.readouterr().out


def test_a_process_that_dies_mid_invocation_ends_the_wait_and_its_spans_go_at_shutdown(
    tmp_path: Path, posthog: CaptureServer
) -> None:
    # No Telemetry API (AWS's emulator has none): the connection closing without END is the sign.
    ext = extension(tmp_path, posthog, connected=False, POSTHOG_LAMBDA_FLUSH="end")
    assert ext.server.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "ph.sock"))
    finished = make_event(**{"$ai_trace_id": "t"})
    root = ["$ai_trace", "agent", None, int(time.time() * 1e6), -1, "t", None, None, None, 0]
    client.sendall(
        _frames.encode(_frames.START, start("r1", "t", int((time.time() + 30) * 1000), root=root))
        + _frames.encode(_frames.EVENTS, {"events": [finished]})
    )
    _CLIENTS.append(client)
    dies = threading.Timer(0.3, client.close)  # os._exit, from the extension's side
    dies.start()
    began = time.monotonic()
    ext.invoke(invoke("r1", 30))
    assert time.monotonic() - began < 5  # not the invocation's 30 s deadline
    assert posthog.events == []  # nothing sent now: SHUTDOWN, which follows, has its own deadline
    ext.shutdown({"eventType": "SHUTDOWN", "shutdownReason": "failure", "deadlineMs": int(time.time() * 1000) + 2000})
    got = {e.uuid: e for e in posthog.events}
    assert finished["uuid"] in got
    trace = next(e for e in got.values() if e.name == "$ai_trace")
    assert trace.properties["lambda_status"] == "failure"


def test_a_process_that_closes_its_connection_after_end_is_no_death(tmp_path: Path, posthog: CaptureServer) -> None:
    ext = extension(tmp_path, posthog, connected=False, POSTHOG_LAMBDA_FLUSH="end")
    assert ext.server.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "ph.sock"))
    client.sendall(
        _frames.encode(_frames.START, start("r1"))
        + _frames.encode(_frames.EVENTS, {"events": [make_event()]})
        + _frames.encode(_frames.END, {"request_id": "r1", "trace_id": "t"})
    )
    client.close()
    assert ext.invocations.wait(lambda: ext.invocations.ended("r1"), 5)
    ext.server.close()
    assert ext.server.settle(5)
    assert ext.invocations.deaths == 0


def test_with_no_process_connected_and_no_telemetry_an_invocation_is_not_waited_for(
    tmp_path: Path, posthog: CaptureServer
) -> None:
    # An undecorated handler (AWS's emulator, no Telemetry API): nothing ever connects, and
    # waiting for a START would only add its grace to every cold start.
    ext = extension(tmp_path, posthog, connected=False, POSTHOG_LAMBDA_FLUSH="end")
    assert ext.server.start()
    started = time.monotonic()
    ext.invoke(invoke("r1", 30))
    assert time.monotonic() - started < START_GRACE_S
    assert ext.policy.untraced
