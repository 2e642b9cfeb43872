"""Anything a handler passes becomes valid JSON; serialization never raises."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import uuid
from collections import OrderedDict, deque
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import pydantic

from posthog_lambda import configure, dropped_counts, span
from posthog_lambda_contract.jsonable import to_jsonable
from tests.helpers import one


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Doc:
    id: int
    text: str
    tags: set[str]


class Answer(pydantic.BaseModel):
    text: str
    at: datetime.datetime
    score: Decimal


class Opaque:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<Opaque thing>"


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class HostileModel:
    def model_dump(self, **_: Any) -> Any:
        raise ValueError("dump exploded")


def test_awkward_values_become_strict_json(events: list[Any]) -> None:
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    value = {
        "when": datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC),
        "day": datetime.date(2026, 11, 27),
        "dynamo_int": Decimal("42"),
        "dynamo_float": Decimal("1.5"),
        "dynamo_nan": Decimal("NaN"),
        "raw": b"\x00\xffbinary",
        "text_bytes": b"hello",
        "tags": {"b", "a"},
        "mixed_set": {1, "x"},
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "doc": Doc(1, "t", {"z"}),
        "model": Answer(text="Paris", at=datetime.datetime(2026, 1, 1), score=Decimal("0.5")),
        "nan": float("nan"),
        "inf": float("inf"),
        "neg_inf": float("-inf"),
        "color": Color.RED,
        "path": PurePosixPath("/tmp/x"),
        "opaque": Opaque(),
        "hostile": Hostile(),
        "hostile_model": HostileModel(),
        "cyclic": cyclic,
        "tuple": (1, 2),
        "deque": deque([1]),
        "ordered": OrderedDict(a=1),
        1: "int key",
        (1, 2): "tuple key",
        "delta": datetime.timedelta(seconds=1.5),
        "error": KeyError("k"),
        "type": int,
    }
    with span("weird", input=value):
        pass
    got = one(events, "$ai_span")["properties"]["$ai_input_state"]
    json.dumps(got, allow_nan=False)  # strict JSON, as PostHog requires
    assert got["when"] == "2026-11-27T12:00:00+00:00"
    assert got["day"] == "2026-11-27"
    assert got["dynamo_int"] == 42
    assert isinstance(got["dynamo_int"], int)
    assert got["dynamo_float"] == 1.5
    assert got["dynamo_nan"] == "NaN"
    assert got["raw"] == "base64:AP9iaW5hcnk="
    assert got["text_bytes"] == "hello"
    assert got["tags"] == ["a", "b"]
    assert sorted(map(str, got["mixed_set"])) == ["1", "x"]
    assert got["id"] == "12345678-1234-5678-1234-567812345678"
    assert got["doc"] == {"id": 1, "text": "t", "tags": ["z"]}
    assert got["model"] == {"text": "Paris", "at": "2026-01-01T00:00:00", "score": "0.5"}
    assert (got["nan"], got["inf"], got["neg_inf"]) == ("NaN", "Infinity", "-Infinity")
    assert got["color"] == "red"
    assert got["path"] == "/tmp/x"
    assert got["opaque"] == "<Opaque thing>"
    assert got["hostile"] == "<unserializable Hostile: RuntimeError>"
    assert got["hostile_model"] == "<unserializable HostileModel: ValueError>"
    assert got["cyclic"] == {"name": "loop", "self": "<circular reference>"}
    assert got["tuple"] == [1, 2]
    assert got["deque"] == [1]
    assert got["ordered"] == {"a": 1}
    assert got["1"] == "int key"
    assert got["[1, 2]"] == "tuple key"
    assert got["delta"] == 1.5
    assert got["error"] == "KeyError: 'k'"
    assert got["type"] == "<class 'int'>"


def test_deep_nesting_is_cut_not_a_recursion_error() -> None:
    deep: Any = "bottom"
    for _ in range(5000):
        deep = [deep]
    out = to_jsonable(deep)
    json.dumps(out)
    assert "<max depth reached>" in json.dumps(out)


def test_shared_but_not_cyclic_objects_are_repeated() -> None:
    shared = {"a": 1}
    assert to_jsonable([shared, shared]) == [{"a": 1}, {"a": 1}]


def test_subclasses_of_builtins_become_plain() -> None:
    class Name(str):
        def __str__(self) -> str:
            return "changed"

    class Count(int):
        pass

    out = to_jsonable({"n": Name("x"), "c": Count(3)})
    assert out == {"n": "x", "c": 3}
    assert type(out["n"]) is str
    assert type(out["c"]) is int


def test_captured_values_do_not_follow_later_mutation(events: list[Any]) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with span("s", input=messages):
        messages.append({"role": "assistant", "content": "later"})
    assert one(events, "$ai_span")["properties"]["$ai_input_state"] == [{"role": "user", "content": "hi"}]


def test_a_lone_surrogate_is_replaced_not_the_end_of_the_trace(events: list[Any]) -> None:
    # json.loads makes one of an escaped "\udce9" (as a request body or queue message may carry),
    # and surrogateescape decoding of bytes that are not UTF-8 does too: no UTF-8 can hold it.
    latin1 = json.loads('"caf\\udce9"')
    with span("s", input={"q": latin1, json.loads('"\\ud800k"'): 1, "pair": "\ud83d" + "\ude00"}) as s:
        s.update(output=b"caf\xe9".decode("utf-8", "surrogateescape"))
    props = one(events, "$ai_span")["properties"]
    assert props["$ai_input_state"] == {"q": "caf\ufffd", "\ufffdk": 1, "pair": "\U0001f600"}
    assert props["$ai_output_state"] == "caf\ufffd"
    assert dropped_counts() == {}


def test_a_sink_of_ones_own_gets_only_text_utf_8_can_hold() -> None:
    # A sink that writes its events as UTF-8 (a file, a log line, a queue) once raised on a
    # lone surrogate, and the whole trace was counted as sink_error.
    written: list[bytes] = []

    class Utf8Lines:
        def send(self, events: Any) -> None:
            written.extend(json.dumps(e, ensure_ascii=False).encode("utf-8") for e in events)

    configure(sink=Utf8Lines())
    with span("s", input={"q": json.loads('"caf\\udce9"'), "pair": "\ud83d" + "\ude00", "plain": "café 🙂"}):
        pass
    (line,) = written
    state = json.loads(line)["properties"]["$ai_input_state"]
    assert state == {"q": "caf\ufffd", "pair": "\U0001f600", "plain": "café 🙂"}
    assert dropped_counts() == {}
