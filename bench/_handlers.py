"""The handler every end-to-end benchmark runs, written four ways: untraced, with posthog-lambda,
with posthog-python's Client, with Langfuse. Each does the same work: ``event["spans"]`` spans
(default 10) and ``event["generations"]`` generations (default 2), each recording the question
as input and a small output, and returns ``{"total": ...}``.
"""

from __future__ import annotations

UNTRACED = """
def handler(event, context):
    total = 0
    for step in range(event.get("spans", 10)):
        total += step
    for call in range(event.get("generations", 2)):
        total += 1
    return {"total": total}
"""

POSTHOG_LAMBDA = """
from posthog_lambda import generation, posthog_traced, span

@posthog_traced
def handler(event, context):
    total = 0
    for step in range(event.get("spans", 10)):
        with span(f"step-{step}", input=event["q"]) as s:
            total += step
            s.update(output=total)
    for call in range(event.get("generations", 2)):
        with generation("answer", model="gpt-4o", provider="openai", input=event["q"]) as g:
            total += 1
            g.update(output="Paris", input_tokens=12, output_tokens=3)
    return {"total": total}
"""

# What posthog-python's documentation tells serverless users to do: capture, then flush() before
# returning. The span ids, parents and latencies are what a user has to make for PostHog's trace
# view to draw the same tree; posthog-lambda makes them too.
POSTHOG_PYTHON = """
import os, time, uuid
from posthog import Posthog

client = Posthog(os.environ["POSTHOG_API_KEY"], host=os.environ["POSTHOG_HOST"])

def handler(event, context):
    trace_id = str(uuid.uuid4())
    started = time.perf_counter()
    total = 0
    for step in range(event.get("spans", 10)):
        began = time.perf_counter()
        total += step
        client.capture("$ai_span", distinct_id=trace_id, properties={
            "$ai_trace_id": trace_id, "$ai_span_id": str(uuid.uuid4()), "$ai_parent_id": trace_id,
            "$ai_span_name": f"step-{step}", "$ai_input_state": event["q"], "$ai_output_state": total,
            "$ai_latency": time.perf_counter() - began})
    for call in range(event.get("generations", 2)):
        began = time.perf_counter()
        total += 1
        client.capture("$ai_generation", distinct_id=trace_id, properties={
            "$ai_trace_id": trace_id, "$ai_span_id": str(uuid.uuid4()), "$ai_parent_id": trace_id,
            "$ai_span_name": "answer", "$ai_model": "gpt-4o", "$ai_provider": "openai",
            "$ai_input": [{"role": "user", "content": event["q"]}],
            "$ai_output_choices": [{"role": "assistant", "content": "Paris"}],
            "$ai_input_tokens": 12, "$ai_output_tokens": 3, "$ai_latency": time.perf_counter() - began})
    client.capture("$ai_trace", distinct_id=trace_id, properties={
        "$ai_trace_id": trace_id, "$ai_span_name": "handler", "$ai_input_state": event,
        "$ai_output_state": {"total": total}, "$ai_latency": time.perf_counter() - started})
    client.flush()
    return {"total": total}
"""

# What Langfuse's documentation tells Lambda users to do: @observe, then flush() before returning
# (after the outermost observation has ended, so that it is exported too).
LANGFUSE = """
from langfuse import Langfuse, observe

langfuse = Langfuse()  # LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_BASE_URL from the environment

@observe(name="step")
def step(question, n):
    return n

@observe(name="answer", as_type="generation")
def answer(question):
    langfuse.update_current_generation(model="gpt-4o", usage_details={"input": 12, "output": 3})
    return "Paris"

@observe(name="handler")
def traced(event):
    total = 0
    for n in range(event.get("spans", 10)):
        total += step(event["q"], n)
    for call in range(event.get("generations", 2)):
        answer(event["q"])
        total += 1
    return {"total": total}

def handler(event, context):
    try:
        return traced(event)
    finally:
        langfuse.flush()
"""


def expected_total(spans: int = 10, generations: int = 2) -> int:
    """What every version of the handler returns under ``"total"``."""
    return spans * (spans - 1) // 2 + generations


def _realistic(source: str) -> str:
    """``source`` with the payloads real apps record (``_payloads``) defined at its top."""
    import _payloads

    values = "".join(f"{name} = {getattr(_payloads, name)!r}\n" for name in ("QUERY", "RESULTS", "MESSAGES", "CHOICES"))
    return values + source


# The same work as UNTRACED and POSTHOG_LAMBDA, with the shapes a small RAG handler records: each
# span a retrieval query in and its results out (dicts), each generation a system and a user
# message in and an assistant message with a tool call out.
UNTRACED_REALISTIC = _realistic(
    """
def handler(event, context):
    total = 0
    for step in range(event.get("spans", 10)):
        found = {**RESULTS, "step": step}
        total += step
    for call in range(event.get("generations", 2)):
        reply = CHOICES
        total += 1
    return {"total": total}
"""
)

POSTHOG_LAMBDA_REALISTIC = _realistic(
    """
from posthog_lambda import generation, posthog_traced, span

@posthog_traced
def handler(event, context):
    total = 0
    for step in range(event.get("spans", 10)):
        with span(f"retrieve-{step}", input=QUERY) as s:
            found = {**RESULTS, "step": step}
            total += step
            s.update(output=found)
    for call in range(event.get("generations", 2)):
        with generation("answer", model="gpt-4o-mini", provider="openai", input=MESSAGES) as g:
            reply = CHOICES
            total += 1
            g.update(output=reply, input_tokens=120, output_tokens=48)
    return {"total": total}
"""
)
