"""Where no INVOKE comes (Lambda Managed Instances): the background thread that sends, and the
traces of invocations that failed alone, completed once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda_contract import frames as _frames
from posthog_lambda_extension._loop import Extension
from posthog_lambda_extension._settings import Settings
from posthog_lambda_extension._telemetry import Telemetry
from tests.extension import make_event, running, start

MANAGED = {"AWS_LAMBDA_INITIALIZATION_TYPE": "lambda-managed-instances"}


class Managed:
    """An extension as on Managed Instances, its socket served, its flusher running."""

    def __init__(self, tmp_path: Path, posthog: CaptureServer, **env: str) -> None:
        self.path = str(tmp_path / "ph.sock")
        settings = Settings(
            {
                "POSTHOG_API_KEY": "phc_local",
                "POSTHOG_HOST": posthog.url,
                "POSTHOG_LAMBDA_SOCKET": self.path,
                "POSTHOG_LAMBDA_SPOOL_DIR": str(tmp_path / "spool"),
                **MANAGED,
                **env,
            }
        )
        self.ext = Extension(settings)
        assert self.ext.server.start()
        self.client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.client.connect(self.path)

    def send(self, kind: int, payload: dict[str, Any]) -> None:
        self.client.sendall(_frames.encode(kind, payload))

    def events(self, *events: dict[str, Any]) -> None:
        self.send(_frames.EVENTS, {"events": list(events)})

    def shutdown(self) -> None:
        self.client.close()
        deadline_ms = int(time.time() * 1000) + 2000
        self.ext.shutdown({"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": deadline_ms})


@pytest.fixture
def managed(tmp_path: Path, posthog: CaptureServer) -> Iterator[Managed]:
    made: list[Managed] = []

    def make(**env: str) -> Managed:
        made.append(Managed(tmp_path, posthog, **env))
        return made[-1]

    yield make  # type: ignore[misc]
    for one in made:
        if one.ext.flusher is not None:
            one.shutdown()


def test_managed_instances_defaults_and_explicit_settings_win() -> None:
    assert (Settings(MANAGED).flush_at, Settings(MANAGED).flush_interval_ms) == (100, 1000)
    assert (Settings({}).flush_at, Settings({}).flush_interval_ms) == (10, 2000)
    given = Settings({**MANAGED, "POSTHOG_FLUSH_AT": "7", "POSTHOG_FLUSH_INTERVAL": "300"})
    assert (given.flush_at, given.flush_interval_ms) == (7, 300)
    assert Settings(MANAGED).managed
    assert not Settings({}).managed


def test_events_leave_on_the_timer_alone(managed: Any, posthog: CaptureServer) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="batch", POSTHOG_FLUSH_INTERVAL="300")
    m.ext.start_flusher()
    items = [make_event() for _ in range(3)]  # fewer than flush_at, no END: only the timer sends them
    sent_at = time.monotonic()
    m.events(*items)
    got = posthog.wait_for_events(3, timeout=10)
    assert {e.uuid for e in got} == {e["uuid"] for e in items}
    assert time.monotonic() - sent_at >= 0.3  # not before the interval: batched
    # Quiet, then more: the thread slept and wakes for them.
    later = make_event()
    m.events(later)
    posthog.wait_for_events(1, timeout=10, predicate=lambda e: e.uuid == later["uuid"])


def test_flush_at_events_leave_at_once(managed: Any, posthog: CaptureServer) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="batch", POSTHOG_FLUSH_AT="4", POSTHOG_FLUSH_INTERVAL="600000")
    m.ext.start_flusher()
    items = [make_event() for _ in range(4)]
    m.events(*items)
    posthog.wait_for_events(4, timeout=10)  # ten minutes before the timer would


def test_end_mode_sends_as_soon_as_an_invocation_ends(managed: Any, posthog: CaptureServer) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="end", POSTHOG_FLUSH_INTERVAL="600000")
    m.ext.start_flusher()
    item = make_event()
    m.send(_frames.START, start("r1"))
    m.events(item)
    m.send(_frames.END, {"request_id": "r1", "trace_id": "t"})
    posthog.wait_for_events(1, timeout=10)


def root_record(started_us: int) -> list[Any]:
    return running("$ai_trace", "handler", None, started_us, "t")


def announce(m: Managed, request_id: str, deadline_ms: int) -> None:
    started_us = int(time.time() * 1e6)
    open_span = running("$ai_span", "slow", "t", started_us, "s-open")
    m.send(
        _frames.START,
        start(request_id, "t", deadline_ms, root=root_record(started_us), open=[open_span]),
    )


def test_a_reported_timeout_sends_the_trace_cut_short_once(managed: Any, posthog: CaptureServer) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="end", POSTHOG_FLUSH_INTERVAL="200")
    telemetry = Telemetry(m.ext.invocations, m.ext.intake.traces, {}, managed=True)
    m.ext.telemetry = telemetry
    m.ext.start_flusher()
    deadline_ms = int(time.time() * 1000) + 100
    announce(m, "r1", deadline_ms)
    assert m.ext.server.settle(5)
    telemetry.receive([{"type": "platform.report", "record": {"requestId": "r1", "status": "timeout"}}])
    got = posthog.wait_for_events(2, timeout=10)
    trace = next(e for e in got if e.name == "$ai_trace")
    assert trace.properties["lambda_status"] == "timeout"
    assert trace.properties["$ai_is_error"] is True
    cut = next(e for e in got if e.name == "$ai_span")
    assert cut.properties["$ai_span_id"] == "s-open"
    # The handler finished after all (its process lives on): what it sends of those spans now is
    # dropped, counted; a span it had not announced still arrives.
    late_root = make_event("$ai_trace", **{"$ai_trace_id": "t", "lambda_request_id": "r1"})
    late_span = make_event("$ai_span", **{"$ai_trace_id": "t", "$ai_span_id": "s-open"})
    new_span = make_event("$ai_span", **{"$ai_trace_id": "t", "$ai_span_id": "s-new"})
    m.events(late_root, late_span, new_span)
    posthog.wait_for_events(1, timeout=10, predicate=lambda e: e.uuid == new_span["uuid"])
    m.shutdown()
    names = [e.name for e in posthog.events if e.properties.get("$ai_trace_id") == "t"]
    assert sorted(names) == ["$ai_span", "$ai_span", "$ai_trace"]
    report = next(e for e in posthog.events if e.name == "posthog_lambda_dropped")
    assert report.properties["events_late"] == 2


def test_without_telemetry_an_overdue_invocation_is_taken_as_timed_out(
    managed: Any, posthog: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from posthog_lambda_extension import _loop

    monkeypatch.setattr(_loop, "OVERDUE_S", 0.2)
    m = managed(POSTHOG_LAMBDA_FLUSH="end", POSTHOG_FLUSH_INTERVAL="100")
    m.ext.start_flusher()
    announce(m, "r1", int(time.time() * 1000))
    trace = posthog.wait_for_events(1, timeout=10, predicate=lambda e: e.name == "$ai_trace")[0]
    assert trace.properties["lambda_status"] == "timeout"


def test_a_trace_that_arrives_is_never_cut(managed: Any, posthog: CaptureServer) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="end", POSTHOG_FLUSH_INTERVAL="100")
    telemetry = Telemetry(m.ext.invocations, m.ext.intake.traces, {}, managed=True)
    m.ext.telemetry = telemetry
    m.ext.start_flusher()
    announce(m, "r1", int(time.time() * 1000) + 60_000)
    finished = make_event("$ai_trace", **{"$ai_trace_id": "t", "lambda_request_id": "r1"})
    m.events(finished)
    m.send(_frames.END, {"request_id": "r1", "trace_id": "t"})
    posthog.wait_for_events(1, timeout=10)
    telemetry.receive([{"type": "platform.report", "record": {"requestId": "r1", "status": "failure"}}])
    m.shutdown()
    assert [e.uuid for e in posthog.events if e.name == "$ai_trace"] == [finished["uuid"]]


def test_shutdown_stops_the_thread_and_sends_what_is_left(managed: Any, posthog: CaptureServer) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="batch", POSTHOG_FLUSH_INTERVAL="600000")
    m.ext.start_flusher()
    flusher = m.ext.flusher
    items = [make_event() for _ in range(3)]
    m.events(*items)
    assert m.ext.server.settle(5)
    m.shutdown()
    assert {e.uuid for e in posthog.events} == {e["uuid"] for e in items}
    assert flusher is not None
    assert not flusher._thread.is_alive()


def test_while_posthog_fails_the_thread_backs_off_and_losses_are_reported_once_it_is_back(
    managed: Any, posthog: CaptureServer
) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="batch", POSTHOG_FLUSH_AT="1", POSTHOG_LAMBDA_BUFFER_BYTES=str(1024 * 1024))
    posthog.fail_next(1000, 503)
    m.ext.start_flusher()
    big = [make_event(pad=200_000) for _ in range(12)]  # 2.4 MB into a 1 MiB buffer
    for item in big:
        m.events(item)
    assert m.ext.server.settle(5)
    assert m.ext.buffer.stats().size <= 1024 * 1024
    posthog.wait_for_requests(2, timeout=10)  # failing, retried
    posthog.clear()  # PostHog is back
    posthog.wait_for_events(1, timeout=15, predicate=lambda e: e.name == "posthog_lambda_dropped")
    m.shutdown()  # what was still counted goes in a last report
    reports = [e for e in posthog.events if e.name == "posthog_lambda_dropped"]
    delivered = [e for e in posthog.events if e.name != "posthog_lambda_dropped"]
    # Every event either arrived or is counted as lost: none vanished, however many reports the
    # outage's failed flushes made and the buffer pushed out.
    assert len(delivered) + sum(r.properties.get("events_buffer_full", 0) for r in reports) == 12


def test_shutdown_sends_what_is_left_when_the_thread_is_slow_to_end(
    managed: Any, posthog: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="batch", POSTHOG_FLUSH_INTERVAL="600000")
    m.ext.start_flusher()
    flusher = m.ext.flusher
    stop = flusher.stop

    def asked_but_not_ended(timeout: float) -> bool:
        flusher._stopping.set()
        return False  # as on a machine too busy to run the thread in time

    monkeypatch.setattr(flusher, "stop", asked_but_not_ended)
    items = [make_event() for _ in range(3)]
    m.events(*items)
    assert m.ext.server.settle(5)
    m.shutdown()  # no flush was under way: nothing stands in the way of the last one
    assert {e.uuid for e in posthog.events} == {e["uuid"] for e in items}
    assert stop(5)


def test_a_flush_waits_for_the_one_under_way_until_its_deadline(managed: Any, posthog: CaptureServer) -> None:
    m = managed(POSTHOG_LAMBDA_FLUSH="batch")
    m.events(make_event())
    assert m.ext.server.settle(5)
    with m.ext._flushing:  # another thread's flush, under way
        assert m.ext.flush(time.monotonic() + 0.05, force=True) is False
    assert posthog.requests == []
    assert m.ext.flush(time.monotonic() + 5, force=True) is True
    assert len(posthog.events) == 1
    m.shutdown()
