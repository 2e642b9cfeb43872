"""End to end: posthog-python's AI wrappers in a function running in the local Lambda
environment with the built layer, the SDKs talking to the fake provider, the events going
through the extension to the local PostHog. The examples under examples/ are the functions."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda.testing import trace_tree_problems
from tests.e2e.conftest import Deployment
from tests.e2e.test_delivery import from_function
from tests.integrations.conftest import FIRST_TOKEN_DELAY_S, sdk_environment
from tests.integrations.fake_llm import DEFAULT_REPLY, FakeLLM, count_tokens

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXTENSION_AGENT = "posthog-lambda-extension/"


def received(deployment: Deployment, count: int) -> list[dict[str, Any]]:
    """The function's events, once ``count`` of them arrived; each sent by the extension."""
    deployment.posthog.wait_for_events(count, timeout=10, predicate=from_function)
    events = [e.event for e in deployment.posthog.events if from_function(e)]
    assert len(events) == count, [e["event"] for e in events]
    agents = {r.headers.get("user-agent", "") for r in deployment.posthog.requests}
    assert agents
    assert all(agent.startswith(EXTENSION_AGENT) for agent in agents), agents
    return events


def named(events: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        e["properties"]
        for e in events
        if e["event"] == kind and (name is None or e["properties"].get("$ai_span_name") == name)
    ]


def invoke_example(deployment: Deployment, llm: FakeLLM, example: str) -> Any:
    shutil.copy(EXAMPLES / example / "app.py", deployment.function / "app.py")
    event = json.loads((EXAMPLES / example / "event.json").read_text())
    with deployment.environment(timeout_s=10, **sdk_environment(llm)) as env:
        result = env.invoke(event)
    assert result.status == "success", result.error
    return result.payload


def check_trace(events: list[dict[str, Any]], streamed_under: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The trace tree is whole, everything is the handler's trace and user, and the streamed
    generation sits under the span ``streamed_under`` with its time to first token."""
    assert trace_tree_problems(events) == []
    (trace,) = named(events, "$ai_trace", "ask")
    (outer,) = named(events, "$ai_span", streamed_under)
    trace_id = trace["$ai_trace_id"]
    assert {e["properties"]["$ai_trace_id"] for e in events} == {trace_id}
    assert {e["distinct_id"] for e in events} == {"user-1"}
    generations = named(events, "$ai_generation")
    for props in generations:
        assert props["$ai_output_tokens"] == count_tokens(DEFAULT_REPLY)
        assert props["$ai_input_tokens"] > 0
        assert props["$ai_latency"] > 0
        assert "$process_person_profile" not in props
    assert outer["$ai_parent_id"] == trace_id
    return outer, generations


def test_openai_example(ai_deployment: Deployment, llm: FakeLLM) -> None:
    assert invoke_example(ai_deployment, llm, "openai_wrapper") == {"answer": DEFAULT_REPLY}
    events = received(ai_deployment, 4)
    draft, (streamed, final) = check_trace(events, "draft")
    assert streamed["$ai_parent_id"] == draft["$ai_span_id"]
    assert final["$ai_parent_id"] == draft["$ai_parent_id"]  # the trace: it ran after the span
    for props in (streamed, final):
        assert (props["$ai_provider"], props["$ai_model"]) == ("openai", "gpt-4o-mini")
    assert FIRST_TOKEN_DELAY_S <= streamed["$ai_time_to_first_token"] < streamed["$ai_latency"]
    assert "$ai_time_to_first_token" not in final
    assert streamed["$ai_input_tokens"] == count_tokens("What is a Lambda layer?")


def test_anthropic_example(ai_deployment: Deployment, llm: FakeLLM) -> None:
    assert invoke_example(ai_deployment, llm, "anthropic_wrapper") == {"answer": DEFAULT_REPLY}
    events = received(ai_deployment, 4)
    draft, (streamed, final) = check_trace(events, "draft")
    assert streamed["$ai_parent_id"] == draft["$ai_span_id"]
    for props in (streamed, final):
        assert (props["$ai_provider"], props["$ai_model"]) == ("anthropic", "claude-haiku-4-5")
    assert FIRST_TOKEN_DELAY_S <= streamed["$ai_time_to_first_token"] < streamed["$ai_latency"]
    assert final["$ai_input_tokens"] == count_tokens("Answer in one short sentence.") + count_tokens(
        f"What is a Lambda layer?\n\nA draft answer: {DEFAULT_REPLY}"
    )


def test_langchain_example(ai_deployment: Deployment, llm: FakeLLM) -> None:
    assert invoke_example(ai_deployment, llm, "langchain_callback") == {"answer": DEFAULT_REPLY}
    events = received(ai_deployment, 6)
    assert trace_tree_problems(events) == []
    (answer,) = named(events, "$ai_span", "answer")
    (sequence,) = named(events, "$ai_span", "RunnableSequence")
    (generation,) = named(events, "$ai_generation")
    assert sequence["$ai_parent_id"] == answer["$ai_span_id"]
    assert generation["$ai_parent_id"] == sequence["$ai_span_id"]
    assert (generation["$ai_provider"], generation["$ai_model"]) == ("openai", "gpt-4o-mini")
    assert generation["$ai_output_tokens"] == count_tokens(DEFAULT_REPLY)
    assert len(named(events, "$ai_trace")) == 1
    assert {e["distinct_id"] for e in events} == {"user-1"}


PRIVATE = textwrap.dedent(
    """
    from posthog.ai.openai import OpenAI
    from posthog_lambda import posthog_client, posthog_traced, span

    client = OpenAI(posthog_client=posthog_client())

    def ask(event):
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": event["question"]}],
            stream=True,
            posthog_properties={"headers": {"Authorization": "Bearer live-secret"}},
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    @posthog_traced(privacy_mode=True, distinct_id="user-p")
    def traced(event, context):
        with span("private"):
            return ask(event)

    def handler(event, context):
        return traced(event, context) if event.get("traced") else ask(event)
    """
)


def test_privacy_mode_and_redaction_through_the_extension(ai_deployment: Deployment, llm: FakeLLM) -> None:
    ai_deployment.code(PRIVATE)
    with ai_deployment.environment(timeout_s=10, **sdk_environment(llm)) as env:
        traced = env.invoke({"question": "my private question", "traced": True})
        untraced = env.invoke({"question": "a plain question"})
    assert traced.status == untraced.status == "success"
    events = received(ai_deployment, 4)
    (inside,) = [p for p in named(events, "$ai_generation") if p.get("$ai_parent_id")]
    (outside,) = [p for p in named(events, "$ai_generation") if not p.get("$ai_parent_id")]
    text = json.dumps(events)
    assert "my private question" not in text
    assert "live-secret" not in text
    assert "$ai_input" not in inside
    assert "$ai_output_choices" not in inside
    assert inside["headers"] == {"Authorization": "[REDACTED]"}
    assert inside["$ai_parent_id"] == named(events, "$ai_span", "private")[0]["$ai_span_id"]
    assert FIRST_TOKEN_DELAY_S <= inside["$ai_time_to_first_token"] < inside["$ai_latency"]
    # Outside a traced handler: its own event, privacy mode off, redaction still on.
    assert outside["$ai_input"] == [{"role": "user", "content": "a plain question"}]
    assert outside["headers"] == {"Authorization": "[REDACTED]"}
    assert outside["$ai_trace_id"] != inside["$ai_trace_id"]
    assert FIRST_TOKEN_DELAY_S <= outside["$ai_time_to_first_token"] < outside["$ai_latency"]


@pytest.mark.parametrize("example", ["openai_wrapper", "anthropic_wrapper", "langchain_callback"])
def test_each_example_has_an_event_file_its_handler_takes(example: str) -> None:
    event = json.loads((EXAMPLES / example / "event.json").read_text())
    assert isinstance(event.get("question"), str)
    assert event.get("user") == "user-1"
