"""Oversized values are truncated with a visible marker; an event is never dropped for size."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from posthog_lambda import configure, generation, posthog_traced, span
from posthog_lambda_contract.limits import AI_EVENT_LIMIT, BATCH_EVENT_LIMIT, TRUNCATED_PROPERTY, fit, json_size
from tests.helpers import one


def size_of(event: Any) -> int:
    return len(json.dumps(event, ensure_ascii=False).encode("utf-8"))


def test_five_megabyte_input_is_truncated_not_dropped(events: list[Any]) -> None:
    huge = "x" * (5 * 1024 * 1024)

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        return "small answer"

    handler({"document": huge, "question": "summarize"}, None)
    trace = one(events, "$ai_trace")
    assert size_of(trace) <= BATCH_EVENT_LIMIT
    props = trace["properties"]
    assert props[TRUNCATED_PROPERTY] == ["$ai_input_state"]
    kept = props["$ai_input_state"]
    # The structure survives; only the long string was cut, visibly.
    assert kept["question"] == "summarize"
    assert kept["document"].startswith("xxxx")
    assert "[truncated by posthog-lambda:" in kept["document"]
    assert f"of {len(huge)} chars kept]" in kept["document"]
    assert len(kept["document"]) > BATCH_EVENT_LIMIT // 2  # cut to fit, not emptied
    assert props["$ai_output_state"] == "small answer"


def test_messages_keep_their_shape_and_short_messages_stay_whole(events: list[Any]) -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "é" * 600_000},  # 2 bytes each in UTF-8
        {"role": "user", "content": "and this?"},
    ]
    with generation("g", input=messages) as g:
        g.update(output="ok", input_tokens=5)
    event = one(events, "$ai_generation")
    assert size_of(event) <= BATCH_EVENT_LIMIT
    kept = event["properties"]["$ai_input"]
    assert [m["role"] for m in kept] == ["system", "user", "user"]
    assert kept[0]["content"] == "You are helpful."
    assert kept[2]["content"] == "and this?"
    assert "[truncated by posthog-lambda:" in kept[1]["content"]
    assert event["properties"]["$ai_input_tokens"] == 5


def test_many_small_values_are_cut_as_text(events: list[Any]) -> None:
    many = list(range(400_000))
    with span("numbers", input=many):
        pass
    event = one(events, "$ai_span")
    assert size_of(event) <= BATCH_EVENT_LIMIT
    kept = event["properties"]["$ai_input_state"]
    assert isinstance(kept, str)
    assert kept.startswith("[0, 1, 2")
    assert "[truncated by posthog-lambda:" in kept


def test_several_large_properties_all_fit(events: list[Any]) -> None:
    with span("two", input="a" * 700_000, properties={"notes": "n" * 700_000}) as s:
        s.update(output="b" * 700_000)
    event = one(events, "$ai_span")
    assert size_of(event) <= BATCH_EVENT_LIMIT
    assert sorted(event["properties"][TRUNCATED_PROPERTY]) == ["$ai_input_state", "$ai_output_state", "notes"]
    assert event["properties"]["$ai_span_name"] == "two"


def test_ai_events_may_be_allowed_more_than_other_events(events: list[Any]) -> None:
    configure(max_event_bytes=4 * 1024 * 1024)

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        raise ValueError("v" * 1_500_000)

    with contextlib.suppress(ValueError):
        handler({"doc": "d" * 1_500_000}, None)
    trace = one(events, "$ai_trace")
    assert TRUNCATED_PROPERTY not in trace["properties"]  # 3 MB fits the AI endpoint
    assert trace["properties"]["$ai_input_state"]["doc"] == "d" * 1_500_000
    exception = one(events, "$exception")  # /batch/ keeps its own 900 KiB limit
    assert size_of(exception) <= BATCH_EVENT_LIMIT
    assert TRUNCATED_PROPERTY in exception["properties"]


def test_limits_are_clamped_to_what_the_endpoints_take() -> None:
    configure(max_event_bytes=100 * 1024 * 1024)
    from posthog_lambda._config import get_config

    assert get_config().max_event_bytes == AI_EVENT_LIMIT
    configure(max_event_bytes=10)
    assert get_config().max_event_bytes >= 16 * 1024


def test_small_events_are_returned_as_is() -> None:
    props = {"$ai_trace_id": "t", "x": "y"}
    assert fit(props, BATCH_EVENT_LIMIT) is props


def test_json_size_counts_utf8_bytes() -> None:
    assert json_size("é") == len('"é"'.encode())
    assert json_size({"a": "\n"}) == len('{"a":"\\n"}')


def test_a_custom_sink_receives_events_already_within_the_limit() -> None:
    received: list[Any] = []

    class Collect:
        def send(self, events: Any) -> None:
            received.extend(events)

    configure(sink=Collect())
    with span("big", input="z" * 2_000_000):
        pass
    [event] = received
    assert size_of(event) <= BATCH_EVENT_LIMIT
    assert event["properties"][TRUNCATED_PROPERTY] == ["$ai_input_state"]
