"""The buffer keeps events until PostHog acknowledges them, within its byte limit, and counts every loss."""

from __future__ import annotations

from posthog_lambda_extension._buffer import ENTRY_OVERHEAD, FULL, Buffer
from posthog_lambda_extension._drops import DROPPED_EVENT, Drops, dropped_event
from tests.extension import data, make_event


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def add(buffer: Buffer, pad: int = 0, name: str = "$ai_span") -> str:
    event = make_event(name, pad)
    assert buffer.add(event["uuid"], name, data(event))
    return str(event["uuid"])


def entry_size(pad: int) -> int:
    return len(data(make_event(pad=pad))) + ENTRY_OVERHEAD


def test_keeps_events_in_order_with_their_stats() -> None:
    clock = Clock()
    buffer = Buffer(1 << 20, Drops(), clock)
    first = add(buffer)
    clock.now += 5
    second = add(buffer)
    stats = buffer.stats()
    assert (stats.count, stats.oldest) == (2, 100.0)
    assert stats.size == 2 * entry_size(0)
    assert [e.uuid for e in buffer.begin()] == [first, second]


def test_the_oldest_events_go_first_when_full_and_are_counted() -> None:
    drops = Drops()
    size = entry_size(1000)
    buffer = Buffer(size * 3, drops)
    uuids = [add(buffer, 1000) for _ in range(5)]
    assert [e.uuid for e in buffer.begin()] == uuids[2:]
    assert buffer.stats().size <= size * 3
    assert drops.take() == {FULL: 2}
    assert drops.take() == {}
    assert drops.totals() == {FULL: 2}


def test_an_event_larger_than_the_whole_buffer_is_dropped_on_arrival() -> None:
    drops = Drops()
    buffer = Buffer(entry_size(10), drops)
    kept = add(buffer, 10)
    event = make_event(pad=5000)
    assert not buffer.add(event["uuid"], "$ai_span", data(event))
    assert [e.uuid for e in buffer.begin()] == [kept]
    assert drops.totals() == {FULL: 1}


def test_a_uuid_already_buffered_is_not_buffered_twice() -> None:
    buffer = Buffer(1 << 20, Drops())
    event = make_event()
    assert buffer.add(event["uuid"], "$ai_span", data(event))
    assert not buffer.add(event["uuid"], "$ai_span", data(event))
    assert len(buffer) == 1


def test_events_stay_until_acknowledged() -> None:
    buffer = Buffer(1 << 20, Drops())
    add(buffer)
    add(buffer)
    held = buffer.begin()
    assert buffer.begin() == []  # a second flush does not take what the first holds
    buffer.end(held)  # the flush failed: everything waits for the next one
    assert len(buffer) == 2
    again = buffer.begin()
    buffer.ack(again[:1])
    buffer.end(again)
    assert [e.uuid for e in buffer.begin()] == [again[1].uuid]


def test_an_event_evicted_while_in_flight_counts_only_if_its_request_fails() -> None:
    drops = Drops()
    size = entry_size(1000)
    buffer = Buffer(size * 2, drops)
    add(buffer, 1000)
    add(buffer, 1000)
    delivered = buffer.begin()
    add(buffer, 1000)
    add(buffer, 1000)  # both in-flight entries are pushed out meanwhile
    buffer.ack(delivered)
    buffer.end(delivered)
    assert drops.totals() == {}
    failed = buffer.begin()
    add(buffer, 1000)
    buffer.end(failed)
    assert drops.totals() == {FULL: 1}
    assert len(buffer) == 2


def test_drop_and_discard_count_under_their_reason() -> None:
    drops = Drops()
    buffer = Buffer(1 << 20, drops)
    for _ in range(3):
        add(buffer)
    held = buffer.begin()
    buffer.drop(held[:1], "events_rejected_by_posthog")
    buffer.end(held)
    assert buffer.discard("events_api_key_refused") == 2
    assert len(buffer) == 0
    assert drops.totals() == {"events_rejected_by_posthog": 1, "events_api_key_refused": 2}
    assert buffer.stats().size == 0


def test_replace_updates_the_byte_count() -> None:
    buffer = Buffer(1 << 20, Drops())
    add(buffer, 5000)
    (entry,) = buffer.begin()
    buffer.replace(entry, b"{}")
    buffer.end([entry])
    assert buffer.stats().size == 2 + ENTRY_OVERHEAD
    assert entry.truncated


def test_a_drop_report_pushed_out_while_posthog_is_down_keeps_its_counts() -> None:
    # Each flush that fails leaves a report in the buffer; the oldest go first: the losses they
    # carry must reach PostHog in a later report, however long the outage.
    drops = Drops()
    size = entry_size(1000)
    buffer = Buffer(size * 3, drops)
    for _ in range(4):
        add(buffer, 1000)
    counts = drops.take()
    assert counts == {FULL: 1}
    report = dropped_event(counts)
    assert buffer.add(report["uuid"], DROPPED_EVENT, data(report))
    for _ in range(3):
        add(buffer, 1000)  # the report is among the oldest now: evicted
    assert report["uuid"] not in {e.uuid for e in buffer.begin()}
    pending = drops.take()
    # The report's own count came back; the report itself is no user event lost.
    assert pending == {FULL: 1 + 3}
    assert drops.totals() == {FULL: 4}


def test_a_drop_report_evicted_in_flight_keeps_its_counts_if_its_request_fails() -> None:
    drops = Drops()
    size = entry_size(1000)
    buffer = Buffer(size * 2, drops)
    report = dropped_event({"frames_bad_json": 5})
    assert buffer.add(report["uuid"], DROPPED_EVENT, data(report))
    taken = buffer.begin()
    add(buffer, 1000)
    add(buffer, 1000)  # pushes the report out while its request is in flight
    buffer.end(taken)  # the request failed
    assert drops.take() == {"frames_bad_json": 5}


def test_only_a_drop_report_gives_counts_back() -> None:
    drops = Drops()
    for raw in (b"[1, 2]", b"not json", b'{"event": "$ai_span", "properties": {"x": 1}}', b'{"event": "x"}'):
        assert drops.restore(raw) is False
    assert drops.take() == {}


def test_a_held_entry_waits_out_flushes_until_released() -> None:
    clock = Clock()
    buffer = Buffer(1 << 20, Drops(), clock)
    trace = add(buffer, name="$ai_trace")
    clock.now += 1
    span = add(buffer)
    assert buffer.hold(trace)
    assert not buffer.hold(trace)  # once
    stats = buffer.stats()
    assert (stats.count, stats.oldest, buffer.held, len(buffer)) == (1, 101.0, 1, 2)
    taken = buffer.begin()
    assert [e.uuid for e in taken] == [span]
    assert not buffer.hold(span)  # in flight: on its way already
    buffer.ack(taken)
    assert buffer.patch(trace, lambda data: data.replace(b"}", b',"x":1}', 1))
    assert buffer.release(trace) == 1
    assert buffer.release(trace) == 0
    (entry,) = buffer.begin()
    assert entry.uuid == trace
    assert b'"x":1' in entry.data


def test_release_all_and_a_held_entry_evicted_or_acked_is_forgotten() -> None:
    drops = Drops()
    buffer = Buffer(entry_size(1000) * 2 + 10, drops)
    first, second = add(buffer, 1000, "$ai_trace"), add(buffer, 1000, "$ai_trace")
    assert buffer.hold(first)
    assert buffer.hold(second)
    add(buffer, 1000)  # the oldest, held or not, goes first
    assert buffer.held == 1
    assert drops.totals() == {FULL: 1}
    assert buffer.release() == 1
    assert {e.uuid for e in buffer.begin()} >= {second}
