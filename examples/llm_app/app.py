"""A small LLM app on Lambda, traced with posthog-lambda: retrieval, a tool, a streamed answer.

The model is a deterministic stand-in (no network, no API key), so the example runs offline in
the local Lambda environment and in CI; swap ``stream_answer`` for a real client to go live.
Everything it imports comes from the standard library and the posthog-lambda layer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from posthog_lambda import generation, posthog_traced, span

MODEL = "gpt-4o-mini"
# USD per token, as the provider publishes them; PostHog also computes cost from model + tokens.
INPUT_PRICE = 0.15 / 1_000_000
OUTPUT_PRICE = 0.60 / 1_000_000

DOCUMENTS = {
    "lambda": "AWS Lambda freezes the execution environment between invocations.",
    "extension": "A Lambda extension runs beside the function and can work after the response.",
    "posthog": "PostHog's LLM analytics shows traces, generations, tokens and cost.",
    "layer": "A Lambda layer is extracted to /opt in the function's execution environment.",
}


def _tokens(text: str) -> int:
    # Roughly what a tokenizer would say; good enough for a deterministic example.
    return max(1, len(re.findall(r"\w+|[^\w\s]", text)))


@span("retrieve")
def retrieve(question: str) -> list[str]:
    words = set(re.findall(r"\w+", question.lower()))
    return [text for key, text in DOCUMENTS.items() if key in words] or [DOCUMENTS["posthog"]]


@span("tool: word count")
def count_words(question: str) -> int:
    return len(question.split())


def stream_answer(messages: list[dict[str, str]], think_s: float = 0.0) -> Iterator[str]:
    """The stand-in model: a deterministic answer, streamed a few words at a time, after
    ``think_s`` seconds (a slow model call)."""
    time.sleep(think_s)
    context = messages[0]["content"].split("\n", 1)[-1]
    answer = f"Based on what I found: {context}"
    words = answer.split(" ")
    for start in range(0, len(words), 3):
        yield " ".join(words[start : start + 3]) + (" " if start + 3 < len(words) else "")


@posthog_traced(
    name="ask",
    distinct_id=lambda event, context: event.get("user"),
    session_id=lambda event, context: event.get("conversation"),
)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    question = str(event.get("question", "")).strip()
    if not question:
        raise ValueError("the question is empty")
    documents = retrieve(question)
    words = count_words(question)
    messages = [
        {"role": "system", "content": "Answer from these notes:\n" + " ".join(documents)},
        {"role": "user", "content": question},
    ]
    with generation(
        "answer",
        model=MODEL,
        provider="openai",
        input=messages,
        model_parameters={"temperature": 0.2, "max_tokens": 256, "stream": True},
    ) as g:
        answer = ""
        for delta in stream_answer(messages, float(event.get("think_s", 0))):
            g.chunk(delta)
            answer += delta
        input_tokens = sum(_tokens(m["content"]) for m in messages)
        output_tokens = _tokens(answer)
        g.update(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            input_cost_usd=input_tokens * INPUT_PRICE,
            output_cost_usd=output_tokens * OUTPUT_PRICE,
            total_cost_usd=input_tokens * INPUT_PRICE + output_tokens * OUTPUT_PRICE,
            stop_reason="stop",
        )
    return {"statusCode": 200, "body": json.dumps({"answer": answer, "question_words": words})}
