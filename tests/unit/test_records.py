"""Spans leave the handler's process as compact records that the extension expands: the events
it makes must be the ones every other sink gets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from posthog_lambda import _destination, embedding, generation, posthog_traced, span
from posthog_lambda._sink_exporter import SinkExporter
from posthog_lambda._sinks import MemorySink
from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract import records as _records
from tests.helpers import LambdaContext


class Keep:
    """An exporter that keeps what it is handed, to compare the two places events are made: the
    extension (after the socket's JSON) and a sink in the handler's process."""

    streams = False

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], list[Any]]] = []

    def export(self, header: dict[str, Any], items: list[Any], ended: Any = None, running: Any = None) -> None:
        self.items.append((header, list(items)))


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """Without the uuid (made each time an event is built) and the leaf span ids (made by the
    reader when no one needed them before)."""
    props = {k: v for k, v in event["properties"].items() if k not in ("$ai_span_id", "$ai_generation_id")}
    return {**event, "uuid": None, "properties": props}


@pytest.mark.parametrize("privacy", [False, True])
def test_records_expand_to_the_events_a_span_makes(privacy: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    keep = Keep()
    monkeypatch.setattr(_destination, "exporter", lambda: keep)

    @posthog_traced(
        name="agent",
        session_id="s-1",
        groups={"company": "acme"},
        properties={"tier": "pro"},
        privacy_mode=privacy,
    )
    def handler(event: Any, context: Any) -> Any:
        with span("retrieve", input={"q": event["q"]}) as s:
            s.update(output=[1, 2.5, None], properties={"k": "v"})
            with generation("answer", model="gpt-4o", provider="openai", input="hi") as g:
                g.chunk("Par")
                g.chunk("is")
                g.update(input_tokens=3, output_tokens=2, model_parameters={"temperature": 0.2, "max_tokens": 9})
            with embedding("embed", model="e", input=["a", "b"]) as e:
                e.update(input_tokens=2)
        with span("fails"):
            raise_inside()
        return {"answer": "Paris", "none": None}

    def raise_inside() -> None:
        try:
            with span("inner") as inner:
                inner.update(output=None)
                raise KeyError("missing")
        except KeyError:
            pass

    assert handler({"q": "capital?", "authorization": "secret"}, LambdaContext("r-1"))["answer"] == "Paris"
    ((header, items),) = keep.items
    # Over the wire as the socket exporter writes it (marshalled: inputs and outputs as bytes).
    spans = [item for item in items if type(item) is tuple]
    frame = _frames.encode(_frames.EVENTS, {"events": [], "trace": header, "spans": spans}, marshalled=True)
    ((_, wire),), errors = _frames.Reader().feed(frame)
    assert not errors
    expanded = [_records.expand(wire["trace"], record) for record in wire["spans"]]
    memory = MemorySink()
    SinkExporter(memory).export(header, [item for item in items if type(item) is tuple])
    direct = memory.events
    assert [comparable(e) for e in expanded] == [comparable(json.loads(json.dumps(e))) for e in direct]
    by_name = {e["properties"]["$ai_span_name"]: e for e in expanded}
    # Ids: the generation's is its span id; a parent's id, made for its child, travels.
    answer = by_name["answer"]["properties"]
    assert answer["$ai_generation_id"] == answer["$ai_span_id"]
    assert answer["$ai_parent_id"] == by_name["retrieve"]["properties"]["$ai_span_id"]
    assert by_name["agent"]["properties"]["lambda_request_id"] == "r-1"
    assert by_name["inner"]["properties"]["$ai_error"] == "KeyError: 'missing'"
    if not privacy:
        assert answer["$ai_output_choices"] == [{"role": "assistant", "content": "Paris"}]
        assert by_name["inner"]["properties"]["$ai_output_state"] is None  # None is an output
        assert by_name["agent"]["properties"]["$ai_input_state"]["authorization"] == "[REDACTED]"
    else:
        assert "$ai_output_choices" not in answer


@pytest.mark.parametrize(
    "record",
    [[], ["$ai_span"], ["$ai_span", "n", "p", "not a time", 1, None, None, None, None, 0], "junk", [1] * 10],
)
def test_a_malformed_record_raises_what_the_reader_counts(record: Any) -> None:
    header = {"t": "trace", "d": "user"}
    with pytest.raises((KeyError, IndexError, TypeError, ValueError)):
        _records.expand(header, record)
