"""The sender against a local PostHog capture server, with the faults PostHog and networks produce."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from posthog_lambda.local import CaptureServer
from posthog_lambda_contract.keys import mask
from posthog_lambda_contract.limits import BATCH_EVENT_LIMIT
from posthog_lambda_extension._buffer import Buffer
from posthog_lambda_extension._drops import Drops
from posthog_lambda_extension._sender import Result, Sender
from tests.extension import data, make_event

KEY = "phc_local"
AI_BATCH_PATH = "/i/v0/ai/batch/"
BATCH_PATH = "/batch/"


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    with CaptureServer(api_key=KEY) as s:
        yield s


class Rig:
    def __init__(self, server: CaptureServer, key: str = KEY, chunk_bytes: int = 5 << 20) -> None:
        self.server = server
        self.drops = Drops()
        self.buffer = Buffer(64 << 20, self.drops)
        self.sender = Sender(server.url, key, self.buffer, base_delay=0.01, max_delay=0.05, chunk_bytes=chunk_bytes)

    def add(self, *events: dict[str, object]) -> list[str]:
        for event in events:
            assert self.buffer.add(str(event["uuid"]), str(event["event"]), data(event))
        return [str(e["uuid"]) for e in events]

    def flush(self, seconds: float = 5.0, force: bool = False) -> Result:
        return self.sender.flush(time.monotonic() + seconds, force=force)

    def delivered(self) -> list[str]:
        return sorted(str(e.uuid) for e in self.server.unique_events())


@pytest.fixture
def rig(server: CaptureServer) -> Iterator[Rig]:
    r = Rig(server)
    yield r
    r.sender.close()


def test_events_go_to_their_endpoint_gzipped_and_leave_the_buffer(rig: Rig) -> None:
    uuids = rig.add(make_event("$ai_generation"), make_event("$ai_trace"), make_event("$exception"))
    result = rig.flush()
    assert (result.sent, result.requests, result.stopped) == (3, 2, None)
    by_path = {e.uuid: e.path for e in rig.server.events}
    assert by_path == {uuids[0]: AI_BATCH_PATH, uuids[1]: AI_BATCH_PATH, uuids[2]: BATCH_PATH}
    for request in rig.server.requests:
        assert request.gzip
        assert request.headers["content-encoding"] == "gzip"
        assert request.headers["user-agent"].startswith("posthog-lambda-extension/")
        assert request.body_bytes < request.decoded_bytes
    assert all(e.gzip and e.sent_at for e in rig.server.events)
    assert len(rig.buffer) == 0
    assert rig.server.duplicates == 0


def test_the_connection_is_kept_alive_across_flushes(rig: Rig) -> None:
    rig.add(make_event())
    rig.flush()
    connection = rig.sender._connection
    assert connection is not None
    sock = connection.sock
    rig.add(make_event())
    rig.flush()
    assert rig.sender._connection is connection
    assert connection.sock is sock
    assert len(rig.server.unique_events()) == 2


def test_three_503s_then_success(rig: Rig) -> None:
    uuids = rig.add(make_event(), make_event())
    rig.server.fail_next(3, 503)
    result = rig.flush()
    assert [r.status for r in rig.server.requests] == [503, 503, 503, 200]
    assert (result.sent, result.requests) == (2, 4)
    assert rig.delivered() == sorted(uuids)
    assert len(rig.buffer) == 0


def test_retry_after_is_honoured_and_sent_at_is_renewed(rig: Rig) -> None:
    rig.add(make_event())
    rig.server.fail_next(1, 429, retry_after=0.3)
    rig.flush()
    first, second = rig.server.requests
    assert (first.status, second.status) == (429, 200)
    assert (second.received_at - first.received_at).total_seconds() >= 0.29
    (received,) = rig.server.events
    assert received.sent_at is not None
    sent_at = datetime.fromisoformat(received.sent_at.replace("Z", "+00:00"))
    assert (sent_at - first.received_at).total_seconds() >= 0.28  # not the first attempt's sent_at


def test_a_retry_after_beyond_the_deadline_keeps_the_events_and_is_respected_later(rig: Rig) -> None:
    uuids = rig.add(make_event())
    rig.server.fail_next(1, 429, retry_after=30)
    started = time.monotonic()
    result = rig.flush(seconds=2.0)
    assert time.monotonic() - started < 1.0  # no point waiting out a deadline it cannot meet
    assert result.stopped == "deadline"
    assert len(rig.buffer) == 1
    assert not rig.sender.ready()
    assert rig.flush().stopped == "cooldown"
    assert len(rig.server.requests) == 1
    rig.flush(force=True)  # shutdown: the last chance
    assert rig.delivered() == uuids


def test_refused_connections_then_recovery(rig: Rig) -> None:
    rig.add(make_event())
    rig.flush()  # a kept-alive connection now exists, which the refusal closes
    uuids = rig.add(make_event(), make_event())
    rig.server.refuse_for(0.4)
    result = rig.flush()
    assert result.sent == 2
    assert result.requests > 2
    assert set(uuids) <= set(rig.delivered())
    assert len(rig.buffer) == 0


def test_a_connection_dropped_without_answer_is_retried(rig: Rig) -> None:
    uuids = rig.add(make_event())
    rig.server.drop_next(2)
    rig.flush()
    assert [r.outcome for r in rig.server.requests] == ["dropped", "dropped", "accepted"]
    assert rig.delivered() == uuids


def test_a_slow_answer_is_abandoned_at_the_deadline_and_the_resend_deduplicated(rig: Rig) -> None:
    uuids = rig.add(make_event(), make_event())
    rig.server.slow_next(1, 1.0)
    started = time.monotonic()
    result = rig.flush(seconds=0.3)
    assert time.monotonic() - started < 0.8
    assert result.stopped == "deadline"
    assert len(rig.buffer) == 2  # unknown outcome: kept
    rig.server.wait_for_events(2)  # the slow request was ingested after all
    rig.flush(force=True)
    assert len(rig.server.events) == 4
    assert rig.server.duplicates == 2
    assert rig.delivered() == sorted(uuids)  # exactly once by uuid


def test_a_400_is_bisected_and_only_the_bad_event_dropped(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    events = [make_event() for _ in range(8)]
    events[5]["uuid"] = "not-a-uuid"
    rig.add(*events)
    result = rig.flush()
    assert rig.delivered() == sorted(str(e["uuid"]) for i, e in enumerate(events) if i != 5)
    assert (result.sent, result.dropped, result.requests) == (7, 1, 7)
    assert rig.drops.totals() == {"events_rejected_by_posthog": 1}
    out = capsys.readouterr().out
    assert "events_rejected_by_posthog" in out
    assert "invalid uuid 'not-a-uuid'" in out  # the server's own words
    assert len(rig.buffer) == 0


def test_a_413_splits_the_batch_until_it_fits() -> None:
    with CaptureServer(api_key=KEY, max_body_bytes=60_000) as server:
        rig = Rig(server)
        uuids = rig.add(*[make_event("$exception", pad=20_000) for _ in range(10)])
        result = rig.flush()
        rig.sender.close()
    assert rig.delivered() == sorted(uuids)
    assert any(r.status == 413 for r in server.requests)
    assert result.dropped == 0
    assert rig.drops.totals() == {}


def test_a_single_event_refused_as_too_large_is_cut_and_resent_once() -> None:
    with CaptureServer(api_key=KEY, max_ai_event_bytes=1_000_000) as server:
        rig = Rig(server)
        (big,) = rig.add(make_event("$ai_generation", pad=3_000_000))
        rig.flush()
        rig.sender.close()
    assert [r.status for r in server.requests] == [413, 200]
    (received,) = server.events
    assert received.uuid == big
    assert received.properties["posthog_lambda_truncated"] == ["$ai_input_state"]
    assert len(json.dumps(received.event)) <= BATCH_EVENT_LIMIT


def test_an_event_within_the_smallest_limit_refused_as_too_large_is_still_cut() -> None:
    # 16 KB is under the smallest limit a 413 cuts to (MIN_EVENT_LIMIT), yet PostHog may refuse
    # it: the cut makes room for the envelope too, so the event shrinks and goes through.
    with CaptureServer(api_key=KEY, max_event_bytes=15_800) as server:
        rig = Rig(server)
        (event,) = rig.add(make_event("$exception", pad=16_000))
        result = rig.flush()
        rig.sender.close()
    assert [r.status for r in server.requests] == [413, 200]
    assert rig.delivered() == [event]
    assert result.dropped == 0


def test_an_event_still_too_large_after_the_cut_is_dropped_and_counted() -> None:
    with CaptureServer(api_key=KEY, max_event_bytes=20_000) as server:
        rig = Rig(server)
        small, _ = rig.add(make_event("$exception"), make_event("$exception", pad=100_000))
        result = rig.flush()
        rig.sender.close()
    assert rig.delivered() == [small]
    assert result.dropped == 1
    assert rig.drops.totals() == {"events_too_large": 1}
    assert len(rig.buffer) == 0
    assert [r.status for r in server.requests] == [413, 200, 413, 413]


def test_without_the_ai_endpoint_ai_events_go_to_batch_cut_to_its_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with CaptureServer(api_key=KEY, ai_endpoint=False) as server:
        rig = Rig(server)
        uuids = rig.add(make_event("$ai_generation", pad=2_000_000), make_event("$ai_span"), make_event("$exception"))
        rig.flush()
        later = rig.add(make_event("$ai_trace"))
        rig.flush()
        rig.sender.close()
    assert rig.delivered() == sorted(uuids + later)
    assert {e.path for e in server.events} == {BATCH_PATH}
    assert [r.path for r in server.requests].count(AI_BATCH_PATH) == 1  # learnt once
    big = next(e for e in server.events if e.uuid == uuids[0])
    assert big.properties["posthog_lambda_truncated"] == ["$ai_input_state"]
    assert len(json.dumps(big.event)) <= BATCH_EVENT_LIMIT
    assert capsys.readouterr().out.count("has no /i/v0/ai/batch/") == 1


def test_a_refused_key_is_said_once_masked_and_sending_stops(capsys: pytest.CaptureFixture[str]) -> None:
    wrong = "phc_wrong_key_abcdef"
    with CaptureServer(api_key="phc_the_right_key") as server:
        rig = Rig(server, key=wrong)
        rig.add(make_event(), make_event())
        result = rig.flush()
        rig.add(make_event())
        again = rig.flush(force=True)
        rig.sender.close()
    assert (result.stopped, again.stopped) == ("refused", "refused")
    assert len(server.requests) == 1  # no spinning
    assert not rig.sender.ready(force=True)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "refused the project API key" in line]
    assert len(lines) == 1
    assert lines[0].startswith("[posthog-lambda] ")
    assert server.url in lines[0]
    assert mask(wrong) in lines[0]
    assert wrong not in out


def test_events_stay_buffered_when_the_deadline_runs_out(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    uuids = rig.add(make_event(), make_event(), make_event())
    rig.server.fail_next(1000, 503)
    started = time.monotonic()
    result = rig.flush(seconds=0.3)
    assert 0.2 <= time.monotonic() - started < 0.6
    assert result.stopped == "deadline"
    assert result.requests >= 3
    assert len(rig.buffer) == 3
    assert not rig.sender.ready()  # later flushes back off instead of adding billed time
    rig.flush(seconds=0.2, force=True)
    assert capsys.readouterr().out.count("answered 503") == 1
    rig.server.clear()
    rig.flush(force=True)
    assert rig.delivered() == sorted(uuids)


def test_no_time_left_sends_nothing_and_is_not_a_failure(rig: Rig) -> None:
    rig.add(make_event())
    result = rig.flush(seconds=-1)
    assert (result.requests, result.stopped) == (0, "no_time")
    assert rig.sender.ready()
    assert len(rig.buffer) == 1


def test_large_flushes_are_split_into_requests_under_the_chunk_size(server: CaptureServer) -> None:
    rig = Rig(server, chunk_bytes=2_000)
    uuids = rig.add(*[make_event(pad=500) for _ in range(9)])
    result = rig.flush()
    rig.sender.close()
    assert result.requests >= 3
    assert all(r.decoded_bytes < 2_000 + 500 for r in server.requests)
    assert rig.delivered() == sorted(uuids)


def test_a_host_with_a_path_prefix(server: CaptureServer) -> None:
    buffer = Buffer(1 << 20, Drops())
    sender = Sender(server.url + "/ingest", KEY, buffer, base_delay=0.01, max_delay=0.01)
    event = make_event()
    buffer.add(str(event["uuid"]), "$ai_span", data(event))
    result = sender.flush(time.monotonic() + 0.5)
    sender.close()
    assert result.stopped == "unexpected"  # the capture server has no /ingest/...: a 404, said once
    assert server.requests[0].path == "/ingest" + AI_BATCH_PATH
    assert len(buffer) == 1
