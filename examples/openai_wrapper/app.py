"""posthog-python's OpenAI wrapper on Lambda, sending through posthog-lambda's extension.

Each call becomes a ``$ai_generation`` of the invocation's trace, under the span around it:
model, tokens, latency, time to first token for the stream. No flush, no shutdown.
The OpenAI SDK reads OPENAI_API_KEY (and OPENAI_BASE_URL, for another endpoint) itself.
Bundle ``posthog`` and ``openai`` with the function; posthog_lambda comes from the layer.
"""

from __future__ import annotations

from typing import Any

from posthog.ai.openai import OpenAI

from posthog_lambda import posthog_client, posthog_traced, span

MODEL = "gpt-4o-mini"

# Made once per cold start; posthog_client() is what routes the wrapper's events.
client = OpenAI(posthog_client=posthog_client())


@posthog_traced(name="ask", distinct_id=lambda event, context: event.get("user"))
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    question = str(event["question"])
    with span("draft", input=question):
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], stream=True
        )
        draft = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    final = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": question},
            {"role": "assistant", "content": draft},
            {"role": "user", "content": "Say that again in one short sentence."},
        ],
    )
    return {"answer": final.choices[0].message.content}
