"""Span inputs and outputs captured as marshal's bytes: an immutable copy made in C, turned into
the same JSON-safe, redacted data as ``to_jsonable`` makes, wherever the event is expanded."""

from __future__ import annotations

import datetime
import json
from collections import OrderedDict
from typing import Any

import pytest

from posthog_lambda import _destination, span
from posthog_lambda._socket_exporter import SocketExporter
from posthog_lambda_contract import frames as _frames
from posthog_lambda_contract.jsonable import (
    DEFAULT_REDACT_KEYS,
    REDACTED,
    captured,
    redact_key_set,
    to_jsonable,
    unmarshalled,
)
from posthog_lambda_contract.records import INPUT, INPUT_MARSHALLED, MASK, OUTPUT_MARSHALLED, expand
from tests.helpers import one

REDACT = redact_key_set(DEFAULT_REDACT_KEYS)


def cyclic() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


PLAIN = [
    {"query": "refund policy", "k": 4, "filters": {"lang": "en", "source": ["faq", "help"]}},
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi \u00e9 \U0001f600"}],
    {"headers": {"Authorization": "Bearer x", "X-Api-Key": "k", "accept": "json"}, "body": None},
    [{"nested": [{"password": "p", "ok": 1}]}],
    {"scores": [0.5, float("nan"), float("inf"), -0.0], "big": 10**30, "flag": True},
    {1: "int key", 2.5: "float key", None: "none key", (1, 2): "tuple key", False: "bool key"},
    {"tags": {"b", "a"}, "frozen": frozenset({3}), "raw": b"\x00\xffbin", "text": b"hello", "pair": (1, 2)},
    {"complex": 1 + 2j, "ellipsis": ...},
    cyclic(),
    deep(500),  # cut at to_jsonable's depth when expanded
]


@pytest.mark.parametrize("value", PLAIN, ids=range(len(PLAIN)))
def test_a_marshalled_value_expands_to_what_to_jsonable_makes(value: Any) -> None:
    for redact in (REDACT, frozenset()):
        kept, is_marshalled = captured(value, redact)
        assert is_marshalled
        assert type(kept) is bytes
        expanded = unmarshalled(kept, redact)
        assert json.dumps(expanded, allow_nan=False) == json.dumps(to_jsonable(value, redact), allow_nan=False)


def test_what_marshal_cannot_write_is_copied_and_redacted_at_once() -> None:
    for value in (
        {"when": datetime.date(2026, 12, 3), "token": "t"},
        OrderedDict(token="t", a=1),
        [type("Name", (str,), {})("x"), {"secret": 1}],
    ):
        kept, is_marshalled = captured(value, REDACT)
        assert not is_marshalled
        assert kept == to_jsonable(value, REDACT)
        assert REDACTED in json.dumps(kept)
    too_deep = deep(5000)  # beyond marshal's depth: copied (and cut) at once
    assert captured(too_deep) == (to_jsonable(too_deep), False)


def test_scalars_stay_as_they_are() -> None:
    for value in ("text", 3, True, None):
        assert captured(value) == (value, False)
    kept, is_marshalled = captured(b"raw")  # bytes a user records are data like any other
    assert is_marshalled
    assert unmarshalled(kept) == "raw"


def test_a_span_entered_again_does_not_capture_its_input_twice(events: list[Any]) -> None:
    described = span("again", input={"q": [1, 2]})
    with described:
        pass
    with described, described:  # a copy of a started span: its input is marshal's bytes already
        pass
    assert [e["properties"]["$ai_input_state"] for e in events if e["event"] == "$ai_span"] == [{"q": [1, 2]}] * 3


def test_an_update_replaces_what_was_captured_and_how(events: list[Any]) -> None:
    with span("s", input={"a": 1}) as s:
        s.update(input="plain now", output={"b": [2]})
        s.update(output=datetime.date(2026, 12, 3))  # not plain data: copied now
    props = one(events, "$ai_span")["properties"]
    assert props["$ai_input_state"] == "plain now"
    assert props["$ai_output_state"] == "2026-12-03"


def test_later_changes_to_the_users_objects_do_not_reach_the_event(events: list[Any]) -> None:
    messages = [{"role": "user", "content": "first"}]
    with span("s", input=messages) as s:
        result = {"docs": ["a"]}
        s.update(output=result)
        messages.append({"role": "user", "content": "appended later"})
        messages[0]["content"] = "rewritten"
        result["docs"].append("b")
    props = one(events, "$ai_span")["properties"]
    assert props["$ai_input_state"] == [{"role": "user", "content": "first"}]
    assert props["$ai_output_state"] == {"docs": ["a"]}


class Keep(SocketExporter):
    """The socket exporter's frames, kept instead of written."""

    def __init__(self) -> None:
        super().__init__("/nonexistent", "/nonexistent")
        self.frames: list[bytes] = []

    def _write(self, data: bytes, events: int) -> None:
        self.frames.append(data)


def test_frames_carry_the_bytes_and_the_expanding_side_redacts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    keep = Keep()
    monkeypatch.setattr(_destination, "exporter", lambda: keep)
    with span("call", input={"headers": {"Authorization": "Bearer s3cret"}, "q": "x"}) as s:
        s.update(output=[{"role": "assistant", "content": "ok"}])
    data = b"".join(keep.frames)
    assert b"s3cret" in data  # the bytes travel as captured: redaction is the expander's
    frames, errors = _frames.Reader().feed(data)
    assert not errors
    ((kind, payload),) = frames
    assert kind == _frames.EVENTS
    (record,) = payload["spans"]
    assert record[MASK] & INPUT_MARSHALLED
    assert record[MASK] & OUTPUT_MARSHALLED
    assert isinstance(record[INPUT], bytes)
    event = expand(payload["trace"], record)
    assert event["properties"]["$ai_input_state"] == {"headers": {"Authorization": REDACTED}, "q": "x"}
    assert "s3cret" not in json.dumps(event)


def test_a_marshalled_payload_that_is_not_marshal_data_is_rejected_not_raised() -> None:
    good = _frames.encode(_frames.END, {"request_id": "r", "trace_id": "t"}, marshalled=True)
    bad = _frames.HEADER.pack(_frames.MAGIC, _frames.VERSION, _frames.EVENTS | _frames.MARSHALLED, 3) + b"\xff\x00\x01"
    frames, errors = _frames.Reader().feed(bad + good)
    assert frames == [(_frames.END, {"request_id": "r", "trace_id": "t"})]
    assert len(errors) == 1
    assert "not JSON nor marshal data" in errors[0]
