"""posthog-python's Anthropic wrapper on Lambda, sending through posthog-lambda's extension.

Each call becomes a ``$ai_generation`` of the invocation's trace, under the span around it:
model, tokens, latency, time to first token for the stream. No flush, no shutdown.
The Anthropic SDK reads ANTHROPIC_API_KEY (and ANTHROPIC_BASE_URL) itself.
Bundle ``posthog`` and ``anthropic`` with the function; posthog_lambda comes from the layer.
"""

from __future__ import annotations

from typing import Any

from posthog.ai.anthropic import Anthropic

from posthog_lambda import posthog_client, posthog_traced, span

MODEL = "claude-haiku-4-5"

client = Anthropic(posthog_client=posthog_client())


@posthog_traced(name="ask", distinct_id=lambda event, context: event.get("user"))
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    question = str(event["question"])
    with (
        span("draft", input=question),
        client.messages.stream(model=MODEL, max_tokens=512, messages=[{"role": "user", "content": question}]) as stream,
    ):
        draft = stream.get_final_text()
    final = client.messages.create(
        model=MODEL,
        max_tokens=128,
        system="Answer in one short sentence.",
        messages=[{"role": "user", "content": f"{question}\n\nA draft answer: {draft}"}],
    )
    return {"answer": "".join(block.text for block in final.content if block.type == "text")}
