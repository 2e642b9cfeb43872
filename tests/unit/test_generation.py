"""generation() and embedding(): every $ai_generation field, streaming, bad values."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from posthog_lambda import dropped_counts, embedding, generation, posthog_traced, span
from tests.helpers import one

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]


def test_all_generation_fields(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with (
            span("agent"),
            generation(
                "answer",
                model="gpt-4o",
                provider="openai",
                input=MESSAGES,
                model_parameters={"temperature": 0.2, "max_completion_tokens": 64, "top_p": 1},
                base_url="https://api.openai.com/v1",
            ) as g,
        ):
            g.update(
                output="Paris.",
                input_tokens=21,
                output_tokens=3,
                cache_read_input_tokens=5,
                cache_creation_input_tokens=2,
                reasoning_tokens=7,
                stop_reason="stop",
                http_status=200,
                input_cost_usd=Decimal("0.0000525"),
                output_cost_usd=0.00003,
                total_cost_usd=0.0000825,
                tools=[{"type": "function", "function": {"name": "search"}}],
                properties={"team": "search"},
            )

    handler({}, None)
    gen = one(events, "$ai_generation")["properties"]
    agent = one(events, "$ai_span", "agent")["properties"]
    assert gen["$ai_generation_id"] == gen["$ai_span_id"]
    assert gen["$ai_parent_id"] == agent["$ai_span_id"]
    assert gen["$ai_span_name"] == "answer"
    assert gen["$ai_model"] == "gpt-4o"
    assert gen["$ai_provider"] == "openai"
    assert gen["$ai_input"] == MESSAGES
    assert gen["$ai_output_choices"] == [{"role": "assistant", "content": "Paris."}]
    assert "$ai_input_state" not in gen
    assert "$ai_output_state" not in gen
    assert gen["$ai_input_tokens"] == 21
    assert gen["$ai_output_tokens"] == 3
    assert gen["$ai_cache_read_input_tokens"] == 5
    assert gen["$ai_cache_creation_input_tokens"] == 2
    assert gen["$ai_reasoning_tokens"] == 7
    assert gen["$ai_stop_reason"] == "stop"
    assert gen["$ai_http_status"] == 200
    assert gen["$ai_base_url"] == "https://api.openai.com/v1"
    assert gen["$ai_input_cost_usd"] == 0.0000525
    assert gen["$ai_output_cost_usd"] == 0.00003
    assert gen["$ai_total_cost_usd"] == 0.0000825
    assert gen["$ai_tools"] == [{"type": "function", "function": {"name": "search"}}]
    assert gen["$ai_temperature"] == 0.2
    assert gen["$ai_max_tokens"] == 64
    assert gen["$ai_model_parameters"] == {"temperature": 0.2, "max_completion_tokens": 64, "top_p": 1}
    assert gen["team"] == "search"
    assert gen["$ai_is_error"] is False
    assert isinstance(gen["$ai_latency"], float)


def test_streaming_sets_time_to_first_token_and_joins_text(events: list[Any]) -> None:
    with generation("stream", model="claude", provider="anthropic", input="hi") as g:
        time.sleep(0.02)  # the model "thinks" before the first chunk: the TTFT must show it
        for delta in ("Bon", "jour"):
            g.chunk(delta)
        g.update(output_tokens=2)
    gen = one(events, "$ai_generation")["properties"]
    assert gen["$ai_stream"] is True
    assert 0.02 <= gen["$ai_time_to_first_token"] <= gen["$ai_latency"]
    assert gen["$ai_output_choices"] == [{"role": "assistant", "content": "Bonjour"}]
    assert gen["$ai_input"] == [{"role": "user", "content": "hi"}]


def test_explicit_output_wins_over_chunks_and_non_text_chunks_only_time(events: list[Any]) -> None:
    with generation("s1") as g:
        g.chunk({"delta": "obj"})
        g.chunk("text")
        g.update(output=[{"role": "assistant", "content": "final"}])
    gen = one(events, "$ai_generation")["properties"]
    assert gen["$ai_output_choices"] == [{"role": "assistant", "content": "final"}]
    assert "$ai_time_to_first_token" in gen


def test_non_streaming_generation_has_no_ttft(events: list[Any]) -> None:
    with generation("plain", model_parameters={"stream": False}) as g:
        g.update(output="x")
    gen = one(events, "$ai_generation")["properties"]
    assert "$ai_time_to_first_token" not in gen
    assert gen["$ai_stream"] is False


def test_invalid_numbers_are_dropped_counted_and_the_rest_kept(events: list[Any]) -> None:
    before = dropped_counts().get("invalid_generation_field", 0)
    with generation("bad") as g:
        g.update(input_tokens="many", output_tokens=2.5, total_cost_usd=float("nan"), http_status="503")
        g.update(model="m")
    gen = one(events, "$ai_generation")["properties"]
    assert "$ai_input_tokens" not in gen
    assert "$ai_output_tokens" not in gen
    assert "$ai_total_cost_usd" not in gen
    assert gen["$ai_http_status"] == 503  # a numeric string is a number
    assert gen["$ai_model"] == "m"
    assert dropped_counts()["invalid_generation_field"] - before == 3


def test_generation_error(events: list[Any]) -> None:
    try:
        with generation("fails", model="m") as g:
            g.update(http_status=429)
            raise RuntimeError("429 Too Many Requests")
    except RuntimeError:
        pass
    gen = one(events, "$ai_generation")["properties"]
    assert gen["$ai_is_error"] is True
    assert gen["$ai_error"] == "RuntimeError: 429 Too Many Requests"
    assert gen["$ai_http_status"] == 429


def test_generation_as_decorator(events: list[Any]) -> None:
    @generation("call", model="gpt-4o-mini", provider="openai")
    def call(prompt: str) -> str:
        return "ok"

    call("hello")
    gen = one(events, "$ai_generation")["properties"]
    assert gen["$ai_input"] == [{"prompt": "hello"}]
    assert gen["$ai_output_choices"] == [{"role": "assistant", "content": "ok"}]


def test_embedding(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with embedding("embed", model="text-embedding-3-small", provider="openai", input=["a", "b"]) as e:
            e.update(input_tokens=2, total_cost_usd=0.00001)

    handler({}, None)
    emb = one(events, "$ai_embedding")["properties"]
    assert emb["$ai_input"] == ["a", "b"]  # not turned into chat messages
    assert emb["$ai_model"] == "text-embedding-3-small"
    assert emb["$ai_input_tokens"] == 2
    assert emb["$ai_total_cost_usd"] == 0.00001
    assert emb["$ai_parent_id"] == emb["$ai_trace_id"]
    assert "$ai_generation_id" not in emb
