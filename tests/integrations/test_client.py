"""``posthog_client()`` on its own: the contract posthog-python's wrappers rely on, cleaning of
values as posthog-python does, bad input, and staying cheap to import."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pydantic
import pytest

from posthog_lambda import configure, dropped_counts, posthog_client, posthog_traced, span
from tests.helpers import one
from tests.integrations.fake_llm import FakeLLM

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


@dataclasses.dataclass
class Retrieved:
    doc_id: uuid.UUID
    score: decimal.Decimal
    tags: set[str]


class Usage(pydantic.BaseModel):
    prompt_tokens: int
    at: datetime.datetime


def test_it_is_truthy_and_stateless() -> None:
    client = posthog_client()
    # posthog-python's wrappers fall back to the global posthog client on a falsy object.
    assert bool(client) is True
    assert posthog_client() is client
    assert client.enable_full_ai_capture is False
    assert client.enable_exception_autocapture is False
    client.flush()
    client.shutdown()


def test_values_are_cleaned_as_posthog_python_cleans_them(events: list[Any]) -> None:
    doc = uuid.UUID("12345678-1234-5678-1234-567812345678")
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        posthog_client().capture(
            event="$ai_generation",
            distinct_id=None,
            properties={
                "retrieved": Retrieved(doc, decimal.Decimal("0.25"), {"b", "a"}),
                "usage": Usage(prompt_tokens=3, at=when),
                "cost": decimal.Decimal("1.50"),
                "span_ref": doc,
            },
        )

    handler({}, None)
    props = one(events, "$ai_generation")["properties"]
    assert props["retrieved"] == {"doc_id": str(doc), "score": 0.25, "tags": ["a", "b"]}
    assert props["usage"] == {"prompt_tokens": 3, "at": "2026-01-02T03:04:05Z"}
    assert props["cost"] == 1.5
    assert props["span_ref"] == str(doc)


def test_capture_returns_the_event_uuid_and_honours_the_callers(events: list[Any]) -> None:
    chosen = "0190f3a1-0000-7000-8000-000000000001"
    when = datetime.datetime(2026, 5, 6, 7, 8, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    with span("outer"):
        made = posthog_client().capture(event="tool_called", distinct_id="u1", properties={"tool": "search"})
        kept = posthog_client().capture("tool_called", distinct_id="u1", uuid=uuid.UUID(chosen), timestamp=when)
    first, second = (e for e in events if e["event"] == "tool_called")
    assert made == first["uuid"]
    assert kept == second["uuid"] == chosen
    assert second["timestamp"] == "2026-05-06T05:08:09+00:00"
    assert first["distinct_id"] == second["distinct_id"] == "u1"
    # Not an LLM event, but still part of the span's trace.
    assert first["properties"]["$ai_trace_id"] == one(events, "$ai_span")["properties"]["$ai_trace_id"]


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda c: c.capture(), "invalid_event"),
        (lambda c: c.capture(event=""), "invalid_event"),
        (lambda c: c.capture(event="$ai_generation", properties=["not", "a", "mapping"]), "invalid_event"),
        (lambda c: c.capture("u1", "$ai_generation"), "invalid_capture_call"),
    ],
)
def test_bad_input_is_dropped_with_a_reason_never_raised(call: Any, reason: str, events: list[Any]) -> None:
    before = dropped_counts().get(reason, 0)
    assert call(posthog_client()) is None
    assert dropped_counts()[reason] == before + 1
    assert events == []


def test_bad_parts_are_dropped_and_the_event_kept(events: list[Any]) -> None:
    before = dict(dropped_counts())
    posthog_client().capture(event="e", distinct_id=object(), groups=["x"], timestamp=3.5)
    assert len(events) == 1
    assert "$groups" not in events[0]["properties"]
    for reason in ("invalid_distinct_id", "invalid_groups", "invalid_timestamp"):
        assert dropped_counts()[reason] == before.get(reason, 0) + 1


def test_a_failure_inside_is_counted_not_raised(events: list[Any]) -> None:
    class Exploding(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("boom")

        def __len__(self) -> int:
            return 1

    before = dropped_counts().get("capture_failed", 0)
    assert posthog_client().capture(event="e", properties=Exploding()) is None
    assert dropped_counts()["capture_failed"] == before + 1
    assert events == []


def test_disabled_records_nothing(events: list[Any]) -> None:
    configure(enabled=False)
    assert posthog_client().capture(event="$ai_generation", properties={"$ai_model": "m"}) is None
    assert events == []


def test_privacy_mode_follows_the_running_trace() -> None:
    seen: list[bool] = []

    @posthog_traced(privacy_mode=True)
    def private(event: Any, context: Any) -> None:
        seen.append(posthog_client().privacy_mode)

    @posthog_traced(privacy_mode=False)
    def public(event: Any, context: Any) -> None:
        seen.append(posthog_client().privacy_mode)

    configure(privacy_mode=True)
    public({}, None)
    private({}, None)
    seen.append(posthog_client().privacy_mode)
    assert seen == [False, True, True]


def run(code: str) -> str:
    env = {"PYTHONPATH": SRC, "PATH": os.environ["PATH"]}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout


def test_using_it_never_imports_posthog_or_an_sdk() -> None:
    code = (
        "import sys\n"
        "from posthog_lambda import posthog_client\n"
        "posthog_client().capture(event='$ai_generation', properties={'$ai_model': 'm'})\n"
        "third = ('posthog', 'openai', 'anthropic', 'langchain_core', 'pydantic')\n"
        "print(sorted(m for m in third if m in sys.modules))\n"
    )
    assert run(code).split() == ["[]"]


def test_made_before_posthog_was_imported_it_times_streams_from_the_first_event_on(llm: FakeLLM) -> None:
    code = textwrap.dedent(
        f"""
        from posthog_lambda import posthog_client, configure
        from posthog_lambda.testing import capture_events
        client = posthog_client()  # before posthog.ai is imported: nothing to wrap yet
        from posthog.ai.openai import OpenAI
        oai = OpenAI(posthog_client=client, base_url={llm.openai_url!r}, api_key="k", max_retries=0)
        messages = [{{"role": "user", "content": "hi"}}]
        with capture_events() as events:
            list(oai.chat.completions.create(model="m", messages=messages, stream=True))
            oai.chat.completions.create(model="m", messages=messages)
            list(oai.chat.completions.create(model="m", messages=messages, stream=True))
        print([("$ai_time_to_first_token" in e["properties"]) for e in events])
        """
    )
    assert run(code).split("\n")[0] == "[False, False, True]"
