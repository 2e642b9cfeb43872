"""Events handed to the extension's Unix socket: framing, mid-invocation hand-off, fallbacks."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda import configure, generation, posthog_traced, span
from posthog_lambda._destination import exporter
from posthog_lambda._processor import HANDOFF_AT
from posthog_lambda._socket_exporter import SocketExporter
from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract import records as _records
from tests.helpers import LambdaContext


def frame_events(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """An EVENTS frame's events, its span records expanded as the extension does."""
    spans = [_records.expand(payload["trace"], record) for record in payload.get("spans", [])]
    return [*spans, *payload["events"]]


class Listener:
    """What the extension's socket server does, reduced to recording frames."""

    def __init__(self, path: Path, read: bool = True) -> None:
        self.frames: list[tuple[int, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._read = read
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._connections.append(connection)
            if self._read:
                threading.Thread(target=self._read_from, args=(connection,), daemon=True).start()

    def _read_from(self, connection: socket.socket) -> None:
        reader = _frames.Reader()
        while True:
            try:
                data = connection.recv(65536)
            except OSError:  # closed by close() at the end of the test
                return
            if not data:
                return
            frames, _ = reader.feed(data)
            with self.changed:
                self.frames += frames
                self.changed.notify_all()

    def events(self) -> list[dict[str, Any]]:
        with self.changed:
            return [e for kind, p in self.frames if kind == _frames.EVENTS for e in frame_events(p)]

    def wait_events(self, count: int, timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.events()) >= count, timeout), self.frames

    def wait_frame(self, kind: int, timeout: float = 5.0) -> dict[str, Any]:
        with self.changed:
            assert self.changed.wait_for(lambda: any(k == kind for k, _ in self.frames), timeout), self.frames
            return next(p for k, p in self.frames if k == kind)

    def close(self) -> None:
        self._server.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    sock, spool = tmp_path / "ext.sock", tmp_path / "spool"
    monkeypatch.setenv("POSTHOG_LAMBDA_SOCKET", str(sock))
    monkeypatch.setenv("POSTHOG_LAMBDA_SPOOL_DIR", str(spool))
    return sock, spool


@pytest.fixture
def listener(paths: tuple[Path, Path]) -> Iterator[Listener]:
    server = Listener(paths[0])
    yield server
    server.close()


def spooled(spool: Path) -> list[tuple[int, dict[str, Any]]]:
    frames = []
    for content in _frames.claim_spool(str(spool)):
        got, errors = _frames.Reader().feed(content)
        assert errors == []
        frames += got
    return frames


def test_the_socket_exporter_is_chosen_when_the_extension_socket_exists(listener: Listener) -> None:
    assert isinstance(exporter(), SocketExporter)


def test_events_then_end_and_spans_handed_over_while_the_handler_runs(listener: Listener) -> None:
    spans = HANDOFF_AT * 3
    seen_mid_invocation: list[int] = []

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        for n in range(spans):
            with span(f"step-{n}"):
                pass
        # The extension already has finished spans before the handler returns.
        listener.wait_events(HANDOFF_AT)
        seen_mid_invocation.append(len(listener.events()))
        return "ok"

    assert handler({}, LambdaContext("req-9")) == "ok"
    listener.wait_events(spans + 1)
    kinds = [kind for kind, _ in listener.frames]
    # A quick invocation is not announced: its END is the only frame about it.
    assert _frames.START not in kinds
    assert kinds[-1] == _frames.END
    end = listener.frames[-1][1]
    assert end["request_id"] == "req-9"
    assert seen_mid_invocation[0] >= HANDOFF_AT
    events = listener.events()
    assert len(events) == spans + 1
    assert len({e["uuid"] for e in events}) == spans + 1
    assert events[-1]["event"] == "$ai_trace"
    assert {e["properties"]["$ai_trace_id"] for e in events} == {end["trace_id"]}


def test_a_long_invocation_is_announced_with_its_trace_and_running_spans(listener: Listener) -> None:
    announced: list[dict[str, Any]] = []

    @posthog_traced(name="agent")
    def handler(event: Any, context: Any) -> str:
        with span("done-early"):
            pass
        with span("outer"), span("model-call", input="q") as inner:
            # Blocked here (a slow model call): the ticker announces the invocation.
            announced.append(listener.wait_frame(_frames.START))
            with generation("late", model="m"):
                listener.wait_frame(_frames.OPEN)
            inner.update(output="a")
        return "ok"

    assert handler({"q": 1}, LambdaContext("req-5")) == "ok"
    listener.wait_events(5)
    start = announced[0]
    assert start["request_id"] == "req-5"
    assert start["deadline_ms"] > time.time() * 1000  # the context says 3 s remain
    # Records, as every span travels; running ones marked so, and ended when they started.
    assert {record[_records.LATENCY_NS] for record in [start["root"], *start["open"]]} == {_records.RUNNING}
    trace = _records.expand(start["trace"], start["root"])
    assert trace["event"] == "$ai_trace"
    assert trace["properties"]["$ai_span_name"] == "agent"
    assert trace["properties"]["$ai_trace_id"] == start["trace_id"]
    assert trace["properties"]["lambda_request_id"] == "req-5"
    # The spans running at that moment, parent first; the finished one came as an event.
    running = [_records.expand(start["trace"], record) for record in start["open"]]
    assert [e["properties"]["$ai_span_name"] for e in running] == ["outer", "model-call"]
    outer, model_call = running
    assert model_call["properties"]["$ai_parent_id"] == outer["properties"]["$ai_span_id"]
    assert model_call["properties"]["$ai_input_state"] == "q"
    opened = [p for k, p in listener.frames if k == _frames.OPEN]
    assert [r[_records.KIND] for p in opened for r in p["open"]] == ["$ai_generation"]
    # Each span announced once; when they end they come as ordinary events, same ids.
    events = {e["properties"].get("$ai_span_name"): e for e in listener.events()}
    assert events["model-call"]["properties"]["$ai_span_id"] == model_call["properties"]["$ai_span_id"]
    assert events["model-call"]["properties"]["$ai_output_state"] == "a"
    assert listener.frames[-1][0] == _frames.END


def test_no_listener_means_the_spool(paths: tuple[Path, Path]) -> None:
    sock, spool = paths
    # A socket file left behind by an extension that is gone: connecting is refused.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with span("work"):
            pass
        return "ok"

    assert handler({}, LambdaContext("req-1")) == "ok"
    frames = spooled(spool)
    assert [kind for kind, _ in frames] == [_frames.EVENTS, _frames.END]
    assert [e["event"] for e in frame_events(frames[0][1])] == ["$ai_span", "$ai_trace"]


def test_a_listener_that_stops_reading_cannot_hold_the_handler(paths: tuple[Path, Path]) -> None:
    sock, spool = paths
    stuck = Listener(sock, read=False)
    try:
        payload = "x" * 400_000  # more than the socket's buffers hold

        @posthog_traced
        def handler(event: Any, context: Any) -> str:
            for n in range(5):
                with span(f"big-{n}", input=payload):
                    pass
            return "ok"

        assert handler({}, LambdaContext("req-2")) == "ok"
    finally:
        stuck.close()
    # What the stuck listener never took is in the spool, whole frames only.
    events = [e for kind, p in spooled(spool) if kind == _frames.EVENTS for e in frame_events(p)]
    assert {e["event"] for e in events} <= {"$ai_span", "$ai_trace"}
    assert "$ai_trace" in {e["event"] for e in events}


def test_spans_are_handed_over_while_the_handler_blocks_after_them(listener: Listener) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with span("before-the-wait"):
            pass
        with span("also-before"):
            pass
        # No more span ends from here: the extension must get both anyway (the handler could
        # be about to time out or crash).
        listener.wait_events(2)
        return "ok"

    assert handler({}, LambdaContext("req-3")) == "ok"
    names = [e["properties"].get("$ai_span_name") for e in listener.events()[:2]]
    assert names == ["before-the-wait", "also-before"]


def test_an_event_sent_whole_with_the_spans_is_cut_to_max_event_bytes(listener: Listener) -> None:
    # The $exception goes whole beside the records (the extension fits records itself): the
    # library cuts it to the user's limit before it leaves.
    configure(max_event_bytes=20_000)

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        raise ValueError("x" * 100_000)

    with pytest.raises(ValueError, match=r"^x+$"):
        handler({}, LambdaContext("req-7"))
    listener.wait_events(2)
    (exception,) = [e for e in listener.events() if e["event"] == "$exception"]
    assert len(json.dumps(exception, ensure_ascii=False).encode()) <= 20_000
    assert exception["properties"]["posthog_lambda_truncated"]


def test_a_forked_child_writes_on_a_connection_of_its_own(listener: Listener) -> None:
    # awslambdaric forks its workers on Managed Instances; a child writing on its parent's
    # connection would interleave frames with the parent's on one stream.
    import os

    send = exporter()
    assert isinstance(send, SocketExporter)
    send.export(None, [{"event": "parent-1", "uuid": "p1", "properties": {}, "distinct_id": "d"}])
    listener.wait_events(1)
    pid = os.fork()
    if pid == 0:  # the child: one event, then gone without running the parent's clean-up
        code = 1
        try:
            send.export(None, [{"event": "child", "uuid": "c1", "properties": {}, "distinct_id": "d"}])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    send.export(None, [{"event": "parent-2", "uuid": "p2", "properties": {}, "distinct_id": "d"}])
    listener.wait_events(3)
    assert sorted(e["event"] for e in listener.events()) == ["child", "parent-1", "parent-2"]
    assert len(listener._connections) == 2  # the parent's, and the child's own
