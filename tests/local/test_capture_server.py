"""The local capture server: PostHog's ingestion contract, recording, faults and the trace view."""

from __future__ import annotations

import contextlib
import errno
import gzip
import http.client
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda.local.capture_server import (
    AI_BATCH_PATH,
    BATCH_PATH,
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    ReceivedEvent,
    render_trace_tree,
)
from tests.helpers import capture_command

KEY = "phc_local"
_ABSENT: Any = object()  # a field left out, as opposed to set to null


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    with CaptureServer() as running:
        yield running


def event(name: str = "signed_up", **fields: Any) -> dict[str, Any]:
    built: dict[str, Any] = {
        "event": name,
        "distinct_id": "user-1",
        "properties": {"plan": "pro"},
        "timestamp": "2025-01-01T00:00:00+00:00",
        "uuid": str(uuid.uuid4()),
    }
    built.update(fields)
    return {k: v for k, v in built.items() if v is not _ABSENT}


def batch(*events: dict[str, Any], api_key: Any = KEY) -> dict[str, Any]:
    body: dict[str, Any] = {"batch": list(events), "sent_at": "2025-01-01T00:00:01+00:00"}
    if api_key is not _ABSENT:
        body["api_key"] = api_key
    return body


def post(
    server: CaptureServer,
    path: str,
    body: Any,
    *,
    headers: Mapping[str, str] | None = None,
    compress: bool = False,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    """POST over a fresh connection; return the status, the JSON answer and the response."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if compress:
        raw = gzip.compress(raw)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", path, raw, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        answer = json.loads(response.read())
        return response.status, answer, response
    finally:
        connection.close()


def names(events: list[ReceivedEvent]) -> list[str]:
    return [e.name for e in events]


# -- the contract ----------------------------------------------------------------------------


def test_accepted_batch_is_recorded_in_order_with_its_request(server: CaptureServer) -> None:
    first, second = event("a"), event("b", distinct_id=42)
    status, answer, _ = post(server, BATCH_PATH, batch(first, second))

    assert (status, answer) == (200, {"status": 1})
    received = server.events
    assert [r.event for r in received] == [first, second]
    assert all(r.path == BATCH_PATH and not r.gzip for r in received)
    assert received[0].sent_at == "2025-01-01T00:00:01+00:00"
    assert received[0].uuid == first["uuid"]
    assert received[1].distinct_id == "42"
    (request,) = server.requests
    assert (request.method, request.path, request.status, request.outcome) == ("POST", BATCH_PATH, 200, "accepted")
    assert request.event_count == 2
    assert request.body_bytes == request.decoded_bytes == int(request.headers["content-length"])
    assert request.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (BATCH_PATH, {"Content-Encoding": "gzip"}),
        (f"{BATCH_PATH}?compression=gzip-js&ver=1.2", {}),
        (f"{AI_BATCH_PATH}?compression=gzip", {}),
    ],
    ids=["header", "query-gzip-js", "query-gzip"],
)
def test_gzip_bodies_are_decompressed(server: CaptureServer, path: str, headers: dict[str, str]) -> None:
    sent = event("$ai_generation")
    status, _, _ = post(server, path, batch(sent), headers=headers, compress=True)

    assert status == 200
    (received,) = server.events
    assert received.event == sent
    assert received.gzip
    assert received.path == path.split("?")[0]
    (request,) = server.requests
    assert request.gzip
    assert request.body_bytes < request.decoded_bytes


def test_gzip_that_is_not_gzip_is_a_bad_request(server: CaptureServer) -> None:
    status, answer, _ = post(server, BATCH_PATH, batch(event()), headers={"Content-Encoding": "gzip"})
    assert status == 400
    assert "gzip" in answer["detail"]
    assert server.events == []


def test_body_above_20_mib_after_decompression_is_413(server: CaptureServer) -> None:
    # Compresses to a few kB, so only the decompressed size can be what is refused.
    huge = event(properties={"blob": "a" * MAX_BODY_BYTES})
    status, answer, _ = post(server, BATCH_PATH, batch(huge), headers={"Content-Encoding": "gzip"}, compress=True)

    assert status == 413
    assert answer["type"] == "validation_error"
    assert "after decompression" in answer["detail"]
    assert server.events == []
    assert server.requests[0].body_bytes < 1_000_000


def test_body_above_20_mib_on_the_wire_is_413(server: CaptureServer) -> None:
    status, _, _ = post(server, "/e/", b" " * (MAX_BODY_BYTES + 1))
    assert status == 413
    assert server.requests[0].body_bytes == MAX_BODY_BYTES + 1


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"batch"', b""], ids=["broken", "list", "string", "empty"])
def test_body_that_is_not_a_json_object_is_400(server: CaptureServer, body: bytes) -> None:
    status, answer, _ = post(server, BATCH_PATH, body)
    assert status == 400
    assert answer["detail"]
    assert server.events == []


# Surrogates written as UTF-8 bytes (CESU-8) are not UTF-8; Latin-1 bytes are not either. The
# first once left the client without an answer (the server failed on the event after parsing it).
@pytest.mark.parametrize("raw", [b"caf\xed\xb3\xa9", b"caf\xe9"], ids=["encoded-surrogate", "latin-1"])
def test_body_that_is_not_utf_8_is_400(server: CaptureServer, raw: bytes) -> None:
    body = json.dumps(batch(event(properties={"q": "QUERY"}))).encode().replace(b"QUERY", raw)
    status, answer, _ = post(server, BATCH_PATH, body)
    assert status == 400
    assert "not UTF-8" in answer["detail"]
    assert server.events == []


def test_an_escaped_lone_surrogate_is_stored_as_u_fffd(server: CaptureServer, tmp_path: Path) -> None:
    # As posthog-python sends one (json.dumps escapes it) and PostHog's capture stores it. It once
    # left the client without an answer, and the page and trace tree could not show it.
    lone = json.loads('"caf\\udce9"')
    sent = event("$ai_generation", distinct_id="\ud800", properties={"$ai_trace_id": "t", lone: [lone], "emoji": "🙂"})
    status, _, _ = post(server, AI_BATCH_PATH, batch(sent))

    assert status == 200
    (received,) = server.events
    assert received.distinct_id == "\ufffd"
    assert received.event["properties"] == {"$ai_trace_id": "t", "caf\ufffd": ["caf\ufffd"], "emoji": "🙂"}
    assert "caf\ufffd" in server.write_html(tmp_path / "traces.html").read_text(encoding="utf-8")
    assert "generation" in server.trace_tree()


@pytest.mark.parametrize("api_key", [_ABSENT, "", "phc_someone_else", None], ids=["missing", "empty", "wrong", "null"])
def test_missing_or_wrong_api_key_is_401(server: CaptureServer, api_key: Any) -> None:
    status, answer, _ = post(server, BATCH_PATH, batch(event(), api_key=api_key))
    assert status == 401
    assert answer["type"] == "authentication_error"
    assert server.events == []
    assert server.requests[0].outcome == "rejected"


def test_api_key_none_accepts_any_non_empty_key() -> None:
    with CaptureServer(api_key=None) as server:
        assert post(server, BATCH_PATH, batch(event(), api_key="phc_anything"))[0] == 200
        assert post(server, BATCH_PATH, batch(event(), api_key=""))[0] == 401
        assert len(server.events) == 1


@pytest.mark.parametrize(
    ("broken", "said"),
    [
        ({"event": _ABSENT}, "no event name"),
        ({"event": ""}, "no event name"),
        ({"distinct_id": _ABSENT}, "no distinct_id"),
        ({"distinct_id": ""}, "no distinct_id"),
        ({"distinct_id": None}, "no distinct_id"),
        ({"uuid": "not-a-uuid"}, "invalid uuid"),
        ({"uuid": 12}, "invalid uuid"),
    ],
    ids=["no-name", "empty-name", "no-distinct-id", "empty-distinct-id", "null-distinct-id", "bad-uuid", "int-uuid"],
)
def test_one_invalid_event_rejects_the_whole_batch(server: CaptureServer, broken: dict[str, Any], said: str) -> None:
    status, answer, _ = post(server, BATCH_PATH, batch(event("fine"), event(**broken), event("also_fine")))

    assert status == 400
    assert said in answer["detail"]
    assert "event 2 of 3" in answer["detail"]
    assert server.events == []
    assert server.requests[0].event_count == 3


def test_a_null_uuid_counts_as_absent(server: CaptureServer) -> None:
    assert post(server, BATCH_PATH, batch(event(uuid=None)))[0] == 200


def _event_of_size(size: int, name: str = "big") -> dict[str, Any]:
    """An event whose compact JSON is exactly ``size`` bytes."""
    shell = event(name, properties={"blob": ""})
    padding = size - len(json.dumps(shell, separators=(",", ":")).encode())
    shell["properties"]["blob"] = "x" * padding
    return shell


def test_an_event_above_the_batch_limit_is_413_for_the_whole_request(server: CaptureServer) -> None:
    at_limit, above = _event_of_size(MAX_EVENT_BYTES), _event_of_size(MAX_EVENT_BYTES + 1)

    status, answer, _ = post(server, BATCH_PATH, batch(event("small"), above))
    assert status == 413
    assert str(MAX_EVENT_BYTES) in answer["detail"]
    assert server.events == []

    assert post(server, BATCH_PATH, batch(at_limit))[0] == 200
    # The AI endpoint takes events up to 8 MiB.
    assert post(server, AI_BATCH_PATH, batch(above))[0] == 200
    assert [r.path for r in server.events] == [BATCH_PATH, AI_BATCH_PATH]


def test_the_ai_endpoint_limit_is_8_mib_per_event(server: CaptureServer) -> None:
    status, answer, _ = post(server, AI_BATCH_PATH, batch(_event_of_size(8 * 1024 * 1024 + 1, "$ai_generation")))
    assert status == 413
    assert str(8 * 1024 * 1024) in answer["detail"]
    assert server.events == []


def test_per_event_limits_are_configurable() -> None:
    with CaptureServer(max_event_bytes=500, max_ai_event_bytes=600) as server:
        assert post(server, BATCH_PATH, batch(_event_of_size(501)))[0] == 413
        assert post(server, AI_BATCH_PATH, batch(_event_of_size(600)))[0] == 200
        assert post(server, AI_BATCH_PATH, batch(_event_of_size(601)))[0] == 413


@pytest.mark.parametrize(
    ("body", "compress", "expected"),
    [
        # too large beats not JSON
        (b"{" * (MAX_BODY_BYTES + 1), True, 413),
        # not JSON beats a bad key (there is no key to read)
        (b"{oops", False, 400),
        # a bad key beats an invalid event
        (batch(event(event=""), api_key="phc_wrong"), False, 401),
        # an invalid event beats an oversized one
        (batch(_event_of_size(MAX_EVENT_BYTES + 1), event(distinct_id="")), False, 400),
    ],
    ids=["size-first", "json-second", "key-third", "event-fields-fourth"],
)
def test_rules_apply_in_order(server: CaptureServer, body: Any, compress: bool, expected: int) -> None:
    headers = {"Content-Encoding": "gzip"} if compress else {}
    assert post(server, BATCH_PATH, body, headers=headers, compress=compress)[0] == expected


def test_ai_endpoint_switched_off_answers_404() -> None:
    with CaptureServer(ai_endpoint=False) as server:
        status, answer, _ = post(server, AI_BATCH_PATH, batch(event("$ai_trace")))
        assert status == 404
        assert "switched off" in answer["detail"]
        assert post(server, BATCH_PATH, batch(event("$ai_trace")))[0] == 200

        server.ai_endpoint = True
        assert post(server, AI_BATCH_PATH, batch(event("$ai_trace")))[0] == 200
        assert [r.path for r in server.events] == [BATCH_PATH, AI_BATCH_PATH]


@pytest.mark.parametrize("path", ["/e/", "/capture/", "/e", "/capture/?ip=1&_=1700000000"])
@pytest.mark.parametrize("key_field", ["api_key", "token"])
def test_single_event_endpoints_take_one_event(server: CaptureServer, path: str, key_field: str) -> None:
    sent = event("$pageview")
    status, _, _ = post(server, path, {**sent, key_field: KEY, "sent_at": "2025-01-01T00:00:02Z"})

    assert status == 200
    (received,) = server.events
    assert received.event == sent  # the key and sent_at belong to the request, not the event
    assert received.sent_at == "2025-01-01T00:00:02Z"
    assert received.path == ("/e/" if path.startswith("/e") else "/capture/")


def test_single_event_endpoints_also_take_a_batch(server: CaptureServer) -> None:
    assert post(server, "/capture/", batch(event("a"), event("b")))[0] == 200
    assert names(server.events) == ["a", "b"]
    assert post(server, "/e/", {"token": KEY, "event": "x"})[0] == 400  # no distinct_id
    assert post(server, "/e/", {"event": "x", "distinct_id": "u"})[0] == 401


def test_unknown_paths_and_methods(server: CaptureServer) -> None:
    assert post(server, "/decide/", batch(event()))[0] == 404
    assert post(server, BATCH_PATH, {"api_key": KEY, "event": "x", "distinct_id": "u"})[0] == 400  # no batch
    assert post(server, BATCH_PATH, batch())[0] == 400  # empty batch
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", BATCH_PATH)
        response = connection.getresponse()
        assert response.status == 405
        response.read()
    finally:
        connection.close()
    assert server.events == []


def test_chunked_bodies_are_read(server: CaptureServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        body = json.dumps(batch(event("chunked"))).encode()
        connection.request("POST", BATCH_PATH, iter([body[:10], body[10:]]), encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 200
        response.read()
    finally:
        connection.close()
    assert names(server.events) == ["chunked"]


def test_keep_alive_connections_serve_several_requests(server: CaptureServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for name in ("one", "two"):
            connection.request("POST", BATCH_PATH, json.dumps(batch(event(name))))
            response = connection.getresponse()
            assert response.status == 200
            response.read()
        first_socket = connection.sock
        connection.request("POST", BATCH_PATH, json.dumps(batch(event("three"))))
        connection.getresponse().read()
        assert connection.sock is first_socket
    finally:
        connection.close()
    assert names(server.events) == ["one", "two", "three"]


# -- duplicates, waiting, clearing ----------------------------------------------------------


def test_duplicates_are_counted_and_unique_events_keep_the_first(server: CaptureServer) -> None:
    a, b, no_uuid = event("a"), event("b"), event("c", uuid=_ABSENT)
    post(server, BATCH_PATH, batch(a, b, no_uuid))
    # A retry of the same batch, plus a uuid spelled in upper case.
    post(server, AI_BATCH_PATH, batch(a, {**b, "uuid": b["uuid"].upper()}, no_uuid))

    assert len(server.events) == 6
    assert server.duplicates == 2
    unique = server.unique_events()
    # Events without a uuid cannot be recognised as repeats.
    assert [(r.name, r.path) for r in unique] == [
        ("a", BATCH_PATH),
        ("b", BATCH_PATH),
        ("c", BATCH_PATH),
        ("c", AI_BATCH_PATH),
    ]


def test_wait_for_events_returns_when_events_arrive_from_another_thread(server: CaptureServer) -> None:
    sender = threading.Thread(target=post, args=(server, BATCH_PATH, batch(event("a"), event("$ai_span"))))
    sender.start()
    try:
        spans = server.wait_for_events(1, timeout=10, predicate=lambda e: e.name.startswith("$ai_"))
    finally:
        sender.join(10)
    assert names(spans) == ["$ai_span"]


def test_wait_for_events_times_out_saying_what_arrived(server: CaptureServer) -> None:
    post(server, BATCH_PATH, batch(event("only_one")))
    post(server, BATCH_PATH, batch(event(), api_key="phc_wrong"))

    with pytest.raises(TimeoutError) as raised:
        server.wait_for_events(2, timeout=0.2)
    message = str(raised.value)
    assert "got 1" in message
    assert "only_one on /batch/" in message
    assert "401 rejected" in message


def test_clear_forgets_everything(server: CaptureServer) -> None:
    a = event("a")
    post(server, BATCH_PATH, batch(a, a))
    server.fail_next(1)
    server.clear()

    assert (server.events, server.requests, server.duplicates) == ([], [], 0)
    assert post(server, BATCH_PATH, batch(a))[0] == 200  # the pending fault went too
    assert server.duplicates == 0


# -- fault injection -------------------------------------------------------------------------


def test_fail_next_429_sends_retry_after_then_returns_to_normal(server: CaptureServer) -> None:
    server.fail_next(2, status=429, retry_after=7)
    sent = batch(event("retried"))

    for _ in range(2):
        status, answer, response = post(server, BATCH_PATH, sent)
        assert status == 429
        assert response.getheader("Retry-After") == "7"
        assert "fail_next" in answer["detail"]
    assert server.events == []
    status, _, response = post(server, BATCH_PATH, sent)
    assert status == 200
    assert response.getheader("Retry-After") is None

    assert [(r.status, r.outcome) for r in server.requests] == [(429, "failed"), (429, "failed"), (200, "accepted")]
    assert server.requests[0].fault == "fail_next 429 Retry-After 7"
    assert server.requests[0].event_count == 1
    assert names(server.events) == ["retried"]
    assert server.duplicates == 0


@pytest.mark.parametrize("status", [500, 503])
def test_fail_next_server_errors(server: CaptureServer, status: int) -> None:
    server.fail_next(1, status=status)
    assert post(server, BATCH_PATH, batch(event()))[0] == status
    assert post(server, BATCH_PATH, batch(event()))[0] == 200


def test_fail_next_rejects_a_success_status(server: CaptureServer) -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        server.fail_next(1, status=200)


def test_drop_next_closes_the_connection_without_an_answer(server: CaptureServer) -> None:
    server.drop_next(1)
    with pytest.raises(http.client.RemoteDisconnected):
        post(server, BATCH_PATH, batch(event("lost")))

    assert post(server, BATCH_PATH, batch(event("kept")))[0] == 200
    assert names(server.events) == ["kept"]
    dropped = server.requests[0]
    assert (dropped.status, dropped.outcome, dropped.fault, dropped.event_count) == (None, "dropped", "drop_next", 1)


def test_refuse_for_refuses_connections_then_accepts_again(server: CaptureServer) -> None:
    port = server.port
    # An idle kept-alive connection would let a client skip the refusal: it is closed too.
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    kept.request("POST", BATCH_PATH, json.dumps(batch(event("before"))))
    kept.getresponse().read()
    assert kept.sock is not None

    started = time.monotonic()
    server.refuse_for(0.5)
    assert not server.accepting
    with pytest.raises(ConnectionRefusedError) as refused:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert refused.value.errno == errno.ECONNREFUSED
    assert kept.sock.recv(1) == b""  # the server closed it
    kept.close()

    server.wait_until_accepting(timeout=10)
    assert time.monotonic() - started >= 0.45
    assert server.port == port
    assert post(server, BATCH_PATH, batch(event("after")))[0] == 200
    assert names(server.events) == ["before", "after"]


def test_stop_during_refuse_for_does_not_reopen() -> None:
    server = CaptureServer().start()
    server.refuse_for(30)
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    assert not [t for t in threading.enumerate() if t.name.startswith("capture-server")]


def test_slow_next_answers_after_the_delay_and_records_the_events(server: CaptureServer) -> None:
    server.slow_next(1, 0.3)
    started = time.monotonic()
    status, _, _ = post(server, BATCH_PATH, batch(event("late")))
    assert status == 200
    assert time.monotonic() - started >= 0.25
    assert names(server.events) == ["late"]
    assert server.requests[0].fault == "slow_next 0.3s"


def test_a_client_that_times_out_on_a_slow_answer_and_retries_makes_a_duplicate(server: CaptureServer) -> None:
    server.slow_next(1, 0.5)
    body = json.dumps(batch(event("once"))).encode()
    impatient = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.1)
    try:
        impatient.request("POST", BATCH_PATH, body)
        with pytest.raises(TimeoutError):
            impatient.getresponse()
    finally:
        impatient.close()
    assert post(server, BATCH_PATH, body)[0] == 200

    server.wait_for_events(2, timeout=10)
    assert server.duplicates == 1
    assert names(server.unique_events()) == ["once"]


# -- lifecycle -------------------------------------------------------------------------------


def test_lifecycle() -> None:
    server = CaptureServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    with server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.accepting
        with pytest.raises(RuntimeError, match="already"):
            server.start()
        # A connection left open by a client does not keep the server (or its thread) alive.
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        # EOF if its handler thread had taken it, a reset if it was still in the listen backlog.
        with contextlib.suppress(ConnectionResetError):
            assert idle.recv(1) == b""
    finally:
        idle.close()
    server.stop()  # twice is fine
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_no_thread_or_socket_outlives_the_server() -> None:
    threads_before = set(threading.enumerate())
    files_before = len(os.listdir("/proc/self/fd"))

    with CaptureServer() as server:
        post(server, BATCH_PATH, batch(event()))
        server.drop_next(1)
        with pytest.raises(http.client.RemoteDisconnected):
            post(server, BATCH_PATH, batch(event()))
        server.refuse_for(0.05)
        server.wait_until_accepting(timeout=10)
        # Left open by the client, with a request half sent: the server must not wait for it.
        hanging = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        hanging.sendall(b"POST /batch/ HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        server.wait_for_events(1, timeout=10)
        server.slow_next(1, 30)
        slow = threading.Thread(target=_post_ignoring_errors, args=(server.port,))
        slow.start()
        # Nothing is recorded until the delay ends, so there is no event to await: poll, bounded.
        deadline = time.monotonic() + 10
        while server.pending_faults and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.pending_faults == 0  # the slow request is being held
    hanging.close()
    slow.join(10)

    assert not slow.is_alive()  # stop() cut the 30 s delay short
    assert set(threading.enumerate()) - threads_before == set()
    assert len(os.listdir("/proc/self/fd")) == files_before


def _post_ignoring_errors(port: int) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        _post_to_port(port, batch(event()))


def test_quiet_unless_verbose(capfd: pytest.CaptureFixture[str]) -> None:
    with CaptureServer() as server:
        post(server, BATCH_PATH, batch(event()))
        post(server, BATCH_PATH, b"nope")
        server.drop_next(1)
        with pytest.raises(http.client.RemoteDisconnected):
            post(server, BATCH_PATH, batch(event()))
    assert capfd.readouterr() == ("", "")

    with CaptureServer(verbose=True) as server:
        post(server, BATCH_PATH, batch(event()))
    assert "POST /batch/ HTTP/1.1" in capfd.readouterr().err


def test_on_request_sees_every_answer() -> None:
    seen: list[tuple[str, int | None]] = []
    with CaptureServer(on_request=lambda r: seen.append((r.path, r.status))) as server:
        post(server, BATCH_PATH, batch(event()))
        post(server, "/nowhere", batch(event()))
    assert seen == [(BATCH_PATH, 200), ("/nowhere", 404)]


# -- the trace tree ---------------------------------------------------------------------------


def _ai(name: str, second: float, **props: Any) -> dict[str, Any]:
    return event(name, timestamp=f"2025-01-01T00:00:{second:06.3f}+00:00", properties=props)


HAND_BUILT_TRACE = [
    # Sent out of timestamp order: siblings are ordered by timestamp.
    _ai("$ai_generation", 2, **{
        "$ai_trace_id": "t1", "$ai_generation_id": "g1", "$ai_parent_id": "s1", "$ai_span_name": "answer",
        "$ai_model": "gpt-4o", "$ai_latency": 0.8, "$ai_input_tokens": 12, "$ai_output_tokens": 34,
        "$ai_total_cost_usd": 0.0012,
    }),
    _ai("$ai_embedding", 1.5, **{
        "$ai_trace_id": "t1", "$ai_span_id": "e1", "$ai_parent_id": "s1", "$ai_span_name": "embed",
        "$ai_model": "text-embedding-3-small", "$ai_latency": 0.03, "$ai_input_tokens": 7,
    }),
    _ai("$ai_span", 1, **{"$ai_trace_id": "t1", "$ai_span_id": "s1", "$ai_parent_id": "t1",
                          "$ai_span_name": "retrieve", "$ai_latency": 0.2}),
    _ai("$ai_generation", 3, **{
        "$ai_trace_id": "t1", "$ai_generation_id": "g2", "$ai_span_name": "rerank", "$ai_model": "gpt-4o-mini",
        "$ai_latency": 0.05, "$ai_input_tokens": 5, "$ai_is_error": True,
        "$ai_error": "RateLimitError: slow\ndown", "$ai_input_cost_usd": 0.0001, "$ai_output_cost_usd": 0.00005,
    }),
    _ai("$ai_span", 4, **{"$ai_trace_id": "t1", "$ai_span_id": "s9", "$ai_parent_id": "s-gone",
                          "$ai_span_name": "lost", "$ai_latency": 0.01}),
    _ai("$exception", 4.5, **{"$ai_trace_id": "t1", "$exception_list": [{"type": "ValueError", "value": "boom"}]}),
    _ai("$ai_trace", 5, **{"$ai_trace_id": "t1", "$ai_span_name": "ask", "$ai_latency": 1.5}),
    _ai("$ai_metric", 6.5, **{"$ai_trace_id": "t1", "$ai_metric_name": "quality", "$ai_metric_value": 0.9}),
    _ai("$ai_feedback", 6, **{"$ai_trace_id": "t1", "$ai_feedback_text": "great"}),
    _ai("$ai_span", 10, **{"$ai_trace_id": "t2", "$ai_span_id": "s20", "$ai_span_name": "solo", "$ai_latency": 0.004}),
    _ai("$pageview", 11),
]  # fmt: skip

EXPECTED_TREE = """\
trace ask  [t1]  1500 ms  24 in / 34 out tokens (sum)  $0.00135 (sum)
  span retrieve  200 ms  19 in / 34 out tokens (sum)  $0.0012 (sum)
    embedding embed  30 ms  text-embedding-3-small  7 in tokens
    generation answer  800 ms  gpt-4o  12 in / 34 out tokens  $0.0012
  generation rerank  50 ms  gpt-4o-mini  5 in tokens  $0.00015  ERROR: RateLimitError: slow down
  not shown by PostHog (parent not found):
    span lost  10 ms  parent s-gone
  events:
    $exception ValueError: boom
    $ai_feedback "great"
    $ai_metric quality = 0.9

trace (no $ai_trace event)  [t2]  4.0 ms (sum)
  span solo  4.0 ms"""


def test_trace_tree_renders_a_hand_built_trace() -> None:
    assert render_trace_tree(HAND_BUILT_TRACE) == EXPECTED_TREE


def test_server_trace_tree_shows_what_was_received_once(server: CaptureServer) -> None:
    ai = [e for e in HAND_BUILT_TRACE if e["event"].startswith("$ai_")]
    other = [e for e in HAND_BUILT_TRACE if not e["event"].startswith("$ai_")]
    post(server, AI_BATCH_PATH, batch(*ai))
    post(server, BATCH_PATH, batch(*other))
    post(server, AI_BATCH_PATH, batch(*ai[:3]))  # a retry: PostHog keeps each uuid once

    assert server.duplicates == 3
    assert server.trace_tree() == EXPECTED_TREE


def test_trace_tree_shows_the_billed_time_lambda_reported_on_the_trace() -> None:
    trace = _ai("$ai_trace", 0, **{"$ai_trace_id": "t", "$ai_span_name": "ask", "lambda_billed_duration_ms": 77})
    assert render_trace_tree([trace]) == "trace ask  [t]  Lambda billed 77 ms"


def test_trace_tree_edge_cases() -> None:
    assert render_trace_tree([]) == "(no $ai_* events received)"
    looping = [
        _ai("$ai_trace", 0, **{"$ai_trace_id": "t", "$ai_span_name": "root"}),
        _ai("$ai_span", 1, **{"$ai_trace_id": "t", "$ai_span_id": "a", "$ai_parent_id": "b", "$ai_span_name": "A"}),
        _ai("$ai_span", 2, **{"$ai_trace_id": "t", "$ai_span_id": "b", "$ai_parent_id": "a", "$ai_span_name": "B"}),
        _ai("$ai_generation", 3, **{"$ai_span_name": "untraced", "$ai_model": "m"}),
    ]
    assert render_trace_tree(looping) == (
        "trace root  [t]\n"
        "  not shown by PostHog (parents form a loop):\n"
        "    span A  parent b\n"
        "    span B  parent a\n"
        "\n"
        "$ai_* events without $ai_trace_id (in no trace):\n"
        "  generation untraced  m"
    )


# -- the real posthog-python SDK -------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_posthog_python_sdk_lands_on_the_right_endpoints(server: CaptureServer, compress: bool) -> None:
    from posthog import Client

    client = Client(KEY, host=server.url, gzip=compress, enable_full_ai_capture=True, flush_at=50)
    try:
        plain = client.capture("signed_up", distinct_id="user-1", properties={"plan": "pro"})
        trace = client.capture_ai("$ai_trace", distinct_id="user-1", properties={"$ai_trace_id": "t1"})
        generation = client.capture_ai(
            "$ai_generation", distinct_id="user-1", properties={"$ai_trace_id": "t1", "$ai_model": "gpt-4o"}
        )
        client.flush()
    finally:
        client.shutdown()

    received = server.wait_for_events(3, timeout=10)
    assert len(received) == 3
    by_uuid = {r.uuid: r for r in received}
    assert set(by_uuid) == {plain, trace, generation}
    assert (by_uuid[plain].name, by_uuid[plain].path) == ("signed_up", BATCH_PATH)
    assert by_uuid[plain].properties["plan"] == "pro"
    assert {by_uuid[trace].path, by_uuid[generation].path} == {AI_BATCH_PATH}
    assert by_uuid[generation].properties["$ai_model"] == "gpt-4o"
    assert all(r.gzip is compress and r.sent_at and r.distinct_id == "user-1" for r in received)
    assert {r.path for r in server.requests} == {BATCH_PATH, AI_BATCH_PATH}
    assert all(r.status == 200 for r in server.requests)
    assert server.duplicates == 0


def test_posthog_python_sdk_ai_events_get_404_when_the_ai_endpoint_is_off() -> None:
    from posthog import Client

    with CaptureServer(ai_endpoint=False) as server:
        client = Client(KEY, host=server.url, enable_full_ai_capture=True, flush_at=50)
        try:
            plain = client.capture("signed_up", distinct_id="user-1")
            client.capture_ai("$ai_generation", distinct_id="user-1", properties={"$ai_trace_id": "t1"})
            client.flush()
        finally:
            client.shutdown()

        answered = server.wait_for_requests(2, timeout=10)
        assert sorted((r.path, r.status) for r in answered) == [(BATCH_PATH, 200), (AI_BATCH_PATH, 404)]
        assert [r.uuid for r in server.events] == [plain]


# -- command line ----------------------------------------------------------------------------


def test_command_line_prints_requests_and_the_tree_on_ctrl_c() -> None:
    with capture_command("--port", "0", "--api-key", "phc_cli") as run:
        assert "phc_cli" in run.banner
        status = _post_to_port(run.port, batch(_ai("$ai_trace", 1, **{"$ai_trace_id": "cli", "$ai_span_name": "hello"}),
                                               api_key="phc_cli"))  # fmt: skip
        assert status == 200
        assert _post_to_port(run.port, batch(event(), api_key="phc_local")) == 401
    assert run.returncode == 0, run.err
    lines = run.out.splitlines()
    assert "POST /batch/ -> 200 accepted: 1 event" in lines[0]
    assert "POST /batch/ -> 401 rejected: api key" in lines[1]
    assert lines[2:] == ["trace hello  [cli]"]
    assert "Traceback" not in run.err


def _post_to_port(port: int, body: Mapping[str, Any]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", BATCH_PATH, json.dumps(body))
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
