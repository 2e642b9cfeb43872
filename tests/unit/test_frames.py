"""The hand-off protocol: frames and the spool, as both sides use them."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract import records
from posthog_lambda_contract.events import DISTINCT_ID, TRACE_ID
from posthog_lambda_contract.frames import END, EVENTS, OPEN, START, FrameError, Reader

HEADER = {TRACE_ID: "t1", DISTINCT_ID: "user-1"}
ROOT = ["$ai_trace", "handler", None, 1_700_000_000_000_000, records.RUNNING, None, None, None, None, 0]
"""The running record of an announced trace: END_US is when it started."""
RUNNING_SPAN = ["$ai_span", "tools", "t1", 1_700_000_000_100_000, records.RUNNING, "span-1", None, None, None, 0]


def test_frames_round_trip_whatever_the_read_sizes() -> None:
    start = {"request_id": "r1", "trace_id": "t1", "deadline_ms": 123, "trace": HEADER, "root": ROOT, "open": []}
    opened = {"request_id": "r1", "trace_id": "t1", "open": [RUNNING_SPAN]}
    stream = (
        _frames.encode(START, start)
        + _frames.encode(OPEN, opened)
        + _frames.encode_events([b'{"event":"$ai_span","distinct_id":"d","uuid":"u","properties":{}}'])
        + _frames.encode(END, {"request_id": "r1", "trace_id": "t1"})
    )
    for chunk in (1, 3, 7, len(stream)):
        reader = Reader()
        frames = []
        for i in range(0, len(stream), chunk):
            got, errors = reader.feed(stream[i : i + chunk])
            assert errors == []
            frames += got
        assert [kind for kind, _ in frames] == [START, OPEN, EVENTS, END]
        assert frames[0][1] == start
        assert frames[1][1] == opened
        assert frames[2][1]["events"][0]["event"] == "$ai_span"
        assert reader.pending == 0


def test_bad_payloads_are_rejected_and_the_stream_goes_on() -> None:
    bad_json = _frames.HEADER.pack(b"PL", _frames.VERSION, EVENTS, 5) + b"{nope"
    wrong_shape = _frames.encode(START, {"request_id": "r"})
    good = _frames.encode(END, {"request_id": "r", "trace_id": "t"})
    frames, errors = Reader().feed(bad_json + wrong_shape + good)
    assert [kind for kind, _ in frames] == [END]
    assert len(errors) == 2
    assert "not JSON" in errors[0]
    assert "trace_id" in errors[1]


@pytest.mark.parametrize(
    ("kind", "payload", "problem"),
    [
        (START, {"request_id": "r", "trace_id": "t", "deadline_ms": 1}, "no trace header"),
        (START, {"request_id": "r", "trace_id": "t", "deadline_ms": "1", "trace": HEADER}, "deadline_ms"),
        (START, {"request_id": "r", "trace_id": "t", "deadline_ms": 1, "trace": HEADER, "root": {}}, "root"),
        (START, {"request_id": "r", "trace_id": "t", "deadline_ms": 1, "trace": HEADER, "open": {}}, "open"),
        (OPEN, {"request_id": "r", "trace_id": "t"}, "open"),
    ],
)
def test_start_and_open_carry_a_header_and_records(kind: int, payload: dict[str, object], problem: str) -> None:
    frames, errors = Reader().feed(_frames.encode(kind, payload))
    assert frames == []
    assert len(errors) == 1
    assert problem in errors[0]


def test_a_snapshot_request_and_its_answer_are_read_and_a_bad_answer_rejected() -> None:
    data = _frames.encode(_frames.SNAPSHOT, {}) + _frames.encode(_frames.SNAPSHOT, {"sent": True, "kept": 0})
    frames, errors = Reader().feed(data + _frames.encode(_frames.SNAPSHOT, {"sent": "yes", "kept": 0}))
    assert frames == [(_frames.SNAPSHOT, {}), (_frames.SNAPSHOT, {"sent": True, "kept": 0})]
    assert len(errors) == 1
    assert "SNAPSHOT answer" in errors[0]


V = bytes([_frames.VERSION])


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"XX" + V + b"\x02\x00\x00\x00\x02", "magic"),
        (b"PL\x09\x02\x00\x00\x00\x02", "version 9"),
        (b"PL" + V + b"\x63\x00\x00\x00\x02", "kind 99"),
        (b"PL" + V + b"\x02\xff\xff\xff\xff", "over"),
    ],
)
def test_a_bad_header_breaks_the_stream(header: bytes, reason: str) -> None:
    reader = Reader()
    frames, errors = reader.feed(header + b"{}" + _frames.encode(END, {"request_id": "r", "trace_id": "t"}))
    assert frames == []
    assert reason in errors[0]
    assert reader.broken is not None
    assert reader.feed(_frames.encode(END, {"request_id": "r", "trace_id": "t"})) == ([], [])


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    for _ in range(200):
        Reader().feed(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))


def test_truncated_frame_stays_pending() -> None:
    frame = _frames.encode(END, {"request_id": "r", "trace_id": "t"})
    reader = Reader()
    assert reader.feed(frame[:-3]) == ([], [])
    assert reader.pending == len(frame) - 3


def test_oversized_payload_is_refused_when_encoding() -> None:
    with pytest.raises(FrameError):
        _frames.encode_events([b"x" * (_frames.MAX_PAYLOAD + 1)])


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"event": "", "distinct_id": "d", "uuid": "u"}, "name"),
        ({"event": "e", "uuid": "u"}, "distinct_id"),
        ({"event": "e", "distinct_id": "d"}, "uuid"),
        ({"event": "e", "distinct_id": "d", "uuid": "u", "properties": []}, "properties"),
        ([], "object"),
    ],
)
def test_valid_event(event: object, problem: str) -> None:
    reason = _frames.valid_event(event)
    assert reason is not None
    assert problem in reason
    assert _frames.valid_event({"event": "e", "distinct_id": "d", "uuid": "u", "properties": {}}) is None


def test_a_file_claimed_before_the_writer_locks_it_takes_the_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The claimer reads a claimed file only once it holds the lock, so a writer that locks the
    # file first still writes into it. Once, each such claim sent the writer to a fresh file,
    # and a few in a row lost the frame ("kept being claimed while writing").
    import fcntl

    path = tmp_path / f"1{_frames.SPOOL_SUFFIX}"
    claims = 0
    lock = fcntl.flock

    def claimed_first(fd: int, operation: int) -> None:
        nonlocal claims
        if path.exists():  # as claim_spool renames it
            path.rename(tmp_path / f"1{_frames._CLAIMED_SUFFIX}")
            claims += 1
        lock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", claimed_first)
    frame = _frames.encode(END, {"request_id": "r", "trace_id": "t"})
    _frames.append_to_spool(str(path), frame)
    monkeypatch.undo()

    assert claims == 1
    assert _frames.claim_spool(str(tmp_path)) == [frame]
    assert os.listdir(tmp_path) == []


def test_spool_written_while_claimed_loses_and_repeats_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    path = str(spool / f"1{_frames.SPOOL_SUFFIX}")
    written = 400
    failed: list[OSError] = []

    def write() -> None:
        try:
            for n in range(written):
                _frames.append_to_spool(path, _frames.encode(END, {"request_id": str(n), "trace_id": "t"}))
        except OSError as exc:  # the loop below ends with the writer, however it ends
            failed.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        finished = not writer.is_alive()
        at = None if finished or time.monotonic() < deadline else sys._current_frames().get(writer.ident or 0)
        if at is not None:  # None too when the writer ended just now
            stack = "".join(traceback.format_stack(at))
            pytest.fail(f"60 s on, {len(seen)} of {written} frames read and the writer still at\n{stack}")
        for content in _frames.claim_spool(str(spool)):
            frames, errors = Reader().feed(content)
            assert errors == []
            seen += [payload["request_id"] for _, payload in frames]
        if finished:
            break
    assert failed == []
    assert seen == [str(n) for n in range(written)]
    assert os.listdir(spool) == []
