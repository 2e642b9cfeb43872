"""Frames over a real Unix socket (and spool files): what is valid is kept, what is not is counted,
and no input stops the server from taking the next connection."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract.events import MAX_EVENT_BYTES
from posthog_lambda_contract.limits import BATCH_EVENT_LIMIT
from posthog_lambda_contract.records import HAS_OUTPUT
from posthog_lambda_extension import _server
from posthog_lambda_extension._buffer import Buffer
from posthog_lambda_extension._drops import Drops
from posthog_lambda_extension._intake import Intake
from posthog_lambda_extension._invocations import Invocations
from posthog_lambda_extension._server import MAX_CONNECTIONS, SPARE_DESCRIPTORS, FrameServer, connection_limit
from posthog_lambda_extension._spool import Spool
from tests.extension import builder_problems, header, make_event, start

TIMEOUT = 5.0


class ObservedIntake(Intake):
    """An intake that lets a test await the end of connections."""

    def __init__(self, buffer: Buffer, invocations: Invocations, drops: Drops) -> None:
        super().__init__(buffer, invocations, drops)
        self.changed = threading.Condition()
        self.finished = 0

    def finish(self, reader: _frames.Reader, source: str) -> None:
        super().finish(reader, source)
        with self.changed:
            self.finished += 1
            self.changed.notify_all()

    def wait_finished(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.finished >= count, TIMEOUT), f"{self.finished} connections ended"


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "posthog-lambda.sock")
        self.drops = Drops()
        self.buffer = Buffer(1 << 24, self.drops)
        self.invocations = Invocations()
        self.intake = ObservedIntake(self.buffer, self.invocations, self.drops)
        self.server = FrameServer(self.path, self.intake, max_connections=64)
        self.spool_dir = str(tmp_path / "spool")
        self.spool = Spool(self.spool_dir, self.intake)

    def send(self, *chunks: bytes, wait: bool = True) -> bytes:
        """Send ``chunks`` on one connection and close it; what the server sent back (b"" when it
        closed the connection first)."""
        before = self.intake.finished
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            # Blocking: waits while the backlog is full (with a timeout set, a Unix socket's
            # connect fails at once instead: many clients at once on a busy machine).
            client.connect(self.path)
            client.settimeout(TIMEOUT)
            for chunk in chunks:
                try:
                    client.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break  # the server closed a broken stream
            client.shutdown(socket.SHUT_WR)
            try:
                answer = client.recv(1)
            except ConnectionResetError:
                answer = b""
        if wait:
            self.intake.wait_finished(before + 1)
        return answer

    def uuids(self) -> list[str]:
        entries = self.buffer.begin()
        self.buffer.end(entries)
        return [e.uuid for e in entries]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    assert h.server.start()
    yield h
    h.server.close()


def events_frame(*events: object) -> bytes:
    return _frames.encode(_frames.EVENTS, {"events": list(events)})


def raw_frame(
    kind: int, body: bytes, magic: bytes = b"PL", version: int = _frames.VERSION, length: int | None = None
) -> bytes:
    return struct.pack(">2sBBI", magic, version, kind, len(body) if length is None else length) + body


def test_valid_frames_reach_the_buffer_and_the_invocation_tracker(harness: Harness) -> None:
    events = [make_event(), make_event("$ai_generation"), make_event("$exception")]
    harness.send(
        _frames.encode(_frames.START, start("r1", "t1", 1)),
        events_frame(*events),
        _frames.encode(_frames.END, {"request_id": "r1", "trace_id": "t1"}),
    )
    assert harness.uuids() == [e["uuid"] for e in events]
    assert harness.invocations.started("r1")
    assert harness.invocations.ended("r1")
    assert harness.drops.totals() == {}


def test_frames_split_across_tiny_writes_are_reassembled(harness: Harness) -> None:
    events = [make_event(pad=300) for _ in range(3)]
    stream = events_frame(*events)
    harness.send(*(stream[i : i + 7] for i in range(0, len(stream), 7)))
    assert harness.uuids() == [e["uuid"] for e in events]


def test_random_bytes_close_the_connection_and_the_server_takes_the_next(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    noise = b"GET / HTTP/1.1\r\n" + random.Random(1).randbytes(4096)
    assert harness.send(noise, noise) == b""
    assert harness.drops.totals() == {"frames_bad_header": 1}
    event = make_event()
    harness.send(events_frame(event))
    assert harness.uuids() == [event["uuid"]]
    harness.send(b"PX" + bytes(100))
    assert harness.drops.totals() == {"frames_bad_header": 2}
    assert capsys.readouterr().out.count("frames_bad_header") == 1  # logged once per reason


def test_a_frame_cut_short_is_counted_as_truncated(harness: Harness) -> None:
    whole = events_frame(make_event(pad=1000))
    harness.send(whole[:5])
    harness.send(whole[: len(whole) // 2])
    assert harness.uuids() == []
    assert harness.drops.totals() == {"frames_truncated": 2}


def test_bad_json_and_wrong_shapes_cost_only_their_frame(harness: Harness) -> None:
    kept = make_event()
    harness.send(
        raw_frame(_frames.EVENTS, b"{not json"),
        raw_frame(_frames.EVENTS, json.dumps({"events": "nope"}).encode()),
        raw_frame(_frames.EVENTS, b"[1, 2]"),
        raw_frame(_frames.START, json.dumps({"request_id": "r1", "trace_id": "t1"}).encode()),
        raw_frame(_frames.END, json.dumps({"request_id": "", "trace_id": "t1"}).encode()),
        events_frame(kept),
    )
    assert harness.uuids() == [kept["uuid"]]
    assert harness.drops.totals() == {"frames_bad_json": 1, "frames_bad_shape": 4}
    assert not harness.invocations.started("r1")


def test_unknown_versions_and_kinds_break_the_stream(harness: Harness) -> None:
    later = make_event()
    harness.send(raw_frame(_frames.EVENTS, b"{}", version=9), events_frame(later))
    harness.send(raw_frame(7, b"{}"), events_frame(later))
    assert harness.uuids() == []
    assert harness.drops.totals() == {"frames_bad_header": 2}


def test_a_frame_announcing_more_than_the_limit_is_refused_before_it_is_read(harness: Harness) -> None:
    assert harness.send(raw_frame(_frames.EVENTS, b"", length=_frames.MAX_PAYLOAD + 1)) == b""
    assert harness.drops.totals() == {"frames_too_large": 1}


def test_invalid_events_are_dropped_and_valid_ones_kept(harness: Harness) -> None:
    good = make_event()
    nameless = {**make_event(), "event": ""}
    no_uuid = {k: v for k, v in make_event().items() if k != "uuid"}
    no_distinct_id = {**make_event(), "distinct_id": None}
    harness.send(events_frame(good, nameless, no_uuid, no_distinct_id, "text", {**make_event(), "properties": [1]}))
    assert harness.uuids() == [good["uuid"]]
    assert harness.drops.totals() == {"events_invalid": 5}


def test_an_oversized_plain_event_is_cut_to_the_batch_limit(harness: Harness) -> None:
    big = make_event("$exception", pad=BATCH_EVENT_LIMIT + 50_000)
    harness.send(events_frame(big))
    (entry,) = harness.buffer.begin()
    assert len(entry.data) <= BATCH_EVENT_LIMIT
    assert json.loads(entry.data)["properties"]["posthog_lambda_truncated"] == ["$ai_input_state"]


def span_record(output_chars: int) -> list[object]:
    """A finished span's record whose output is ``output_chars`` characters."""
    return [
        "$ai_span",
        "big",
        "t",
        1_700_000_000_000_000,
        5_000_000,
        "span-1",
        None,
        None,
        None,
        HAS_OUTPUT,
        None,
        "y" * output_chars,
    ]


@pytest.mark.parametrize(
    ("max_event_bytes", "output_chars", "limit"),
    [
        (20_000, 100_000, 20_000),  # configure(max_event_bytes=20000): the extension holds to it too
        (None, 1_000_000, BATCH_EVENT_LIMIT),  # a header without one: the default
        ("lots", 1_000_000, BATCH_EVENT_LIMIT),  # one that cannot be used: the default
        (10, 100_000, 16 * 1024),  # below what PostHog and the cut can honour: the smallest accepted
    ],
)
def test_a_span_record_is_fitted_to_its_trace_max_event_bytes(
    harness: Harness, max_event_bytes: object, output_chars: int, limit: int
) -> None:
    trace = header("t") if max_event_bytes is None else header("t", **{MAX_EVENT_BYTES: max_event_bytes})
    harness.send(_frames.encode(_frames.EVENTS, {"events": [], "trace": trace, "spans": [span_record(output_chars)]}))
    (entry,) = harness.buffer.begin()
    assert len(entry.data) <= limit
    event = json.loads(entry.data)
    assert event["properties"]["posthog_lambda_truncated"] == ["$ai_output_state"]
    assert builder_problems(event) == []


def test_an_event_sent_whole_keeps_its_endpoint_limit_the_library_fitted_it(harness: Harness) -> None:
    whole = make_event("$ai_generation", pad=100_000)
    small = header("t", **{MAX_EVENT_BYTES: 20_000})
    harness.send(_frames.encode(_frames.EVENTS, {"events": [whole], "trace": small, "spans": [span_record(10)]}))
    entries = {e.uuid: e for e in harness.buffer.begin()}
    assert json.loads(entries[whole["uuid"]].data) == whole


def test_discarding_counts_what_arrives(harness: Harness) -> None:
    harness.intake.discard = "events_no_api_key"
    harness.send(events_frame(make_event(), make_event()))
    assert harness.uuids() == []
    assert harness.drops.totals() == {"events_no_api_key": 2}


def test_fuzzed_streams_never_stop_the_server(harness: Harness) -> None:
    rng = random.Random(7)
    valid = events_frame(make_event(), make_event()) + _frames.encode(_frames.END, {"request_id": "r", "trace_id": "t"})
    for _ in range(60):
        stream = bytearray(valid * 2)
        for _ in range(rng.randint(1, 4)):
            stream[rng.randrange(len(stream))] = rng.randrange(256)
        harness.send(bytes(stream[: rng.randint(0, len(stream))]))
    harness.buffer.discard("test")
    survivor = make_event()
    harness.send(events_frame(survivor))
    assert harness.uuids() == [survivor["uuid"]]
    assert harness.server.connections == 0


def test_many_connections_at_once(harness: Harness) -> None:
    events = [make_event() for _ in range(20)]
    threads = [threading.Thread(target=harness.send, args=(events_frame(e),), kwargs={"wait": False}) for e in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    harness.intake.wait_finished(20)
    assert sorted(harness.uuids()) == sorted(e["uuid"] for e in events)


def test_connections_beyond_the_limit_are_refused_and_later_ones_accepted(harness: Harness) -> None:
    clients = []
    try:
        for index in range(harness.server.max_connections + 1):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.connect(harness.path)  # blocking: waits while the backlog is full
            client.settimeout(TIMEOUT)
            try:
                client.sendall(_frames.encode(_frames.START, start("r", "t", 1)))
            except (BrokenPipeError, ConnectionResetError):
                # Closed by the server before the frame went (refused at once): the last one only.
                assert index == harness.server.max_connections
        # The one over the limit is closed by the server (a reset: its frame was never read).
        try:
            refused = clients[-1].recv(1) == b""
        except ConnectionResetError:
            refused = True
        assert refused
        assert harness.invocations.wait(lambda: harness.server.connections == harness.server.max_connections, TIMEOUT)
    finally:
        for client in clients:
            client.close()
    harness.intake.wait_finished(harness.server.max_connections)
    event = make_event()
    harness.send(events_frame(event))
    assert harness.uuids() == [event["uuid"]]


def test_the_default_limit_serves_every_runtime_process_managed_instances_can_run() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        assert connection_limit() == (
            MAX_CONNECTIONS if min(hard, 4096) >= 4096 else min(hard, 4096) - SPARE_DESCRIPTORS
        )
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # Lambda's limit
        assert connection_limit() == 1024 - SPARE_DESCRIPTORS
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert MAX_CONNECTIONS >= 1500


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(path)  # closed without unlinking: what a killed extension leaves behind
    h = Harness(tmp_path)
    h.server = FrameServer(path, h.intake)
    h.path = path
    assert h.server.start()
    try:
        event = make_event()
        h.send(events_frame(event))
        assert h.uuids() == [event["uuid"]]
    finally:
        h.server.close()
    assert not os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "taken"
    path.write_text("mine")
    h = Harness(tmp_path)
    server = FrameServer(str(path), h.intake)
    assert not server.start()
    server.close()
    assert path.read_text() == "mine"
    assert f"[posthog-lambda] cannot listen on {path}" in capsys.readouterr().out


def test_the_spool_is_drained_whole_and_removed(harness: Harness) -> None:
    first, second = make_event(), make_event()
    writer = os.path.join(harness.spool_dir, f"123-1{_frames.SPOOL_SUFFIX}")
    os.makedirs(harness.spool_dir)
    _frames.append_to_spool(writer, events_frame(first))
    _frames.append_to_spool(writer, _frames.encode(_frames.END, {"request_id": "r9", "trace_id": "t"}))
    cut = os.path.join(harness.spool_dir, f"456-1{_frames.SPOOL_SUFFIX}")
    _frames.append_to_spool(cut, events_frame(second)[:-3])
    assert harness.spool.drain() == 2
    assert harness.uuids() == [first["uuid"]]
    assert harness.invocations.ended("r9")
    assert harness.drops.totals() == {"frames_truncated": 1}
    assert os.listdir(harness.spool_dir) == []
    assert harness.spool.drain() == 0


def test_a_missing_spool_directory_is_nothing_to_drain(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.spool.drain() == 0


def test_settle_waits_until_what_an_open_connection_wrote_is_taken_in(harness: Harness) -> None:
    # The function's connection stays open across invocations: no EOF tells the server it has
    # everything. settle() returns once nothing written is left unread.
    items = [make_event(pad=20_000) for _ in range(50)]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(harness.path)
        for item in items:
            client.sendall(events_frame(item))
        assert harness.server.settle(TIMEOUT)
        assert sorted(harness.uuids()) == sorted(e["uuid"] for e in items)
        assert harness.server.settle(0)  # nothing more: returns at once


def test_settle_sees_a_connection_accepted_while_it_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # settle lists the connections, then asks which sockets are readable: a connection the reader
    # accepts in between is in neither, though what it wrote is still unread.
    looking, accepted, read = threading.Event(), threading.Event(), threading.Event()
    accept, read_frames, readable = FrameServer._accept, FrameServer._read, _server._readable
    first = [True]

    def accept_while_looking(self: FrameServer, *args: object) -> int:
        assert looking.wait(TIMEOUT)
        result = accept(self, *args)  # type: ignore[arg-type]
        accepted.set()
        return result

    def read_later(self: FrameServer, *args: object) -> None:
        assert read.wait(TIMEOUT)
        read_frames(self, *args)  # type: ignore[arg-type]

    def readable_after_the_accept(sockets: list[socket.socket]) -> list[socket.socket]:
        if first[0]:
            first[0] = False
            looking.set()
            assert accepted.wait(TIMEOUT)
        return readable(sockets)

    monkeypatch.setattr(FrameServer, "_accept", accept_while_looking)
    monkeypatch.setattr(FrameServer, "_read", read_later)
    monkeypatch.setattr(_server, "_readable", readable_after_the_accept)
    try:
        # Accepted, not read: not settled. (ever_connected would look first: not asked.)
        settles_once_released(tmp_path, read.set, unsettled_for=0.3, connected=False)
    finally:
        looking.set()


def test_settle_waits_for_a_connection_not_yet_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A busy machine: the function has connected and written, the reader has not yet accepted.
    held = threading.Event()
    accept = FrameServer._accept

    def held_back(self: FrameServer, *args: object) -> int:
        assert held.wait(TIMEOUT)
        return accept(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(FrameServer, "_accept", held_back)
    settles_once_released(tmp_path, held.set, unsettled_for=0.05, connected=True)  # not taken in yet


def settles_once_released(tmp_path: Path, release: Callable[[], None], unsettled_for: float, connected: bool) -> None:
    """A function's process connects and writes an event: the server is seen connected (when
    ``connected``) and not settled for ``unsettled_for`` s; once ``release`` is called, settled
    with the event taken in once."""
    h = Harness(tmp_path)
    assert h.server.start()
    try:
        event = make_event()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(h.path)
            client.sendall(events_frame(event))
            if connected:
                assert h.server.ever_connected()
            assert not h.server.settle(unsettled_for)
            release()
            assert h.server.settle(TIMEOUT)
            assert h.uuids() == [event["uuid"]]
    finally:
        release()
        h.server.close()
