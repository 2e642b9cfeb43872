"""OpenTelemetry GenAI spans as PostHog events (``posthog_lambda_contract.genai``): the current
conventions, the older names instrumentations still emit, and records that cannot be read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from posthog_lambda_contract import genai, records
from posthog_lambda_contract.events import ANONYMOUS, DISTINCT_ID, PRIVACY, REDACT, SESSION_ID, TRACE_ID

HEADER = {TRACE_ID: "trace-1", DISTINCT_ID: "trace-1", ANONYMOUS: True}
END_US = 1_767_225_600_000_000


def record(
    attributes: dict[str, Any],
    events: tuple[Any, ...] = (),
    *,
    name: str = "chat gpt-4o",
    parent: str | None = "span-0",
    error: str | None = None,
    mask: int = genai.RECORDS_INPUT | genai.RECORDS_OUTPUT,
    latency_ns: int = 1_500_000_000,
) -> tuple[Any, ...]:
    return (
        genai.SPAN,
        name,
        parent,
        END_US,
        latency_ns,
        "00f067aa0ba902b7",
        error,
        mask,
        attributes,
        events,
    )


def props(attributes: dict[str, Any], events: tuple[Any, ...] = (), header: dict[str, Any] = HEADER, **kw: Any) -> Any:
    event = records.expand(header, record(attributes, events, **kw))
    return event["event"], event["properties"]


CURRENT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.request.temperature": 0.5,
    "gen_ai.request.max_tokens": 100,
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 7,
    "gen_ai.usage.cache_read.input_tokens": 4,
    "gen_ai.usage.cache_creation.input_tokens": 2,
    "gen_ai.usage.reasoning.output_tokens": 3,
    "gen_ai.response.finish_reasons": ("tool_calls",),
    "gen_ai.response.time_to_first_chunk": 0.25,
    "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
    "gen_ai.input.messages": json.dumps(
        [
            {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "sunny"}]},
        ]
    ),
    "gen_ai.output.messages": json.dumps(
        [
            {
                "role": "assistant",
                "parts": [
                    {"type": "text", "content": "Let me check."},
                    {"type": "tool_call", "id": "call_2", "name": "forecast", "arguments": {"city": "Paris"}},
                ],
                "finish_reason": "tool_calls",
            }
        ]
    ),
    "gen_ai.tool.definitions": json.dumps([{"type": "function", "name": "forecast"}]),
    "customer.tier": "gold",
}


def test_a_chat_span_in_the_current_conventions() -> None:
    kind, p = props(CURRENT)
    assert kind == "$ai_generation"
    assert p["$ai_trace_id"] == "trace-1"
    assert p["$ai_span_id"] == p["$ai_generation_id"] == "00f067aa0ba902b7"
    assert p["$ai_parent_id"] == "span-0"
    assert p["$ai_latency"] == 1.5
    assert (p["$ai_model"], p["$ai_provider"]) == ("gpt-4o-2024-08-06", "openai")
    assert (p["$ai_input_tokens"], p["$ai_output_tokens"]) == (12, 7)
    assert (p["$ai_cache_read_input_tokens"], p["$ai_cache_creation_input_tokens"]) == (4, 2)
    assert p["$ai_reasoning_tokens"] == 3
    assert p["$ai_tokens_source"] == "sdk"  # the instrumentation read them from the provider's answer
    assert (p["$ai_lib"], p["$ai_lib_version"]) == ("posthog-lambda", "0.1.0")
    assert p["$ai_model_parameters"] == {"temperature": 0.5, "max_tokens": 100}
    assert (p["$ai_temperature"], p["$ai_max_tokens"]) == (0.5, 100)
    assert p["$ai_stop_reason"] == "tool_calls"
    assert p["$ai_time_to_first_token"] == 0.25
    assert p["$ai_stream"] is True
    assert p["$ai_input"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert p["$ai_output_choices"] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"type": "function", "id": "call_2", "function": {"name": "forecast", "arguments": '{"city": "Paris"}'}}
            ],
        }
    ]
    assert p["$ai_tools"] == [{"type": "function", "name": "forecast"}]
    assert p["$ai_is_error"] is False
    # Attributes outside the GenAI namespaces are the user's properties; content never is.
    assert p["customer.tier"] == "gold"
    assert not [k for k in p if k.startswith("gen_ai.")]


def test_the_older_names_openllmetry_and_earlier_conventions_emit() -> None:
    kind, p = props(
        {
            "llm.request.type": "chat",
            "gen_ai.system": "OpenAI",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 9,
            "gen_ai.usage.completion_tokens": 5,
            "llm.usage.total_tokens": 14,
            "gen_ai.usage.cache_read_input_tokens": 1,
            "llm.is_streaming": False,
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "Be brief.",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": "Hi",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "",
            "gen_ai.completion.0.tool_calls.0.id": "call_9",
            "gen_ai.completion.0.tool_calls.0.name": "lookup",
            "gen_ai.completion.0.tool_calls.0.arguments": '{"q": 1}',
            "llm.request.functions.0.name": "lookup",
            "llm.request.functions.0.description": "Looks up",
        }
    )
    assert kind == "$ai_generation"
    assert (p["$ai_provider"], p["$ai_model"]) == ("openai", "gpt-4o-mini")
    assert (p["$ai_input_tokens"], p["$ai_output_tokens"], p["$ai_total_tokens"]) == (9, 5, 14)
    assert p["$ai_cache_read_input_tokens"] == 1
    assert p["$ai_stream"] is False
    assert p["$ai_input"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert p["$ai_output_choices"] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "id": "call_9", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
            ],
        }
    ]
    assert p["$ai_tools"] == [{"type": "function", "function": {"name": "lookup", "description": "Looks up"}}]


def test_prompts_and_completions_as_span_events() -> None:
    events = (
        (
            "gen_ai.content.prompt",
            END_US - 1_000_000,
            {"gen_ai.prompt": json.dumps([{"role": "user", "content": "Hi"}])},
        ),
        ("gen_ai.content.completion.chunk", END_US - 900_000, None),
        ("gen_ai.content.completion.chunk", END_US - 800_000, None),
        (
            "gen_ai.content.completion",
            END_US,
            {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "Yo"}])},
        ),
    )
    _, p = props({"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic"}, events)
    assert p["$ai_input"] == [{"role": "user", "content": "Hi"}]
    assert p["$ai_output_choices"] == [{"role": "assistant", "content": "Yo"}]
    # Started 1.5 s before its end; its first chunk came 0.9 s before the end.
    assert p["$ai_time_to_first_token"] == pytest.approx(0.6)
    assert p["$ai_stream"] is True


def test_one_event_per_message_as_the_v1_28_conventions_put_them() -> None:
    events = (
        ("gen_ai.system.message", END_US, {"content": "Be brief."}),
        ("gen_ai.user.message", END_US, {"content": "Hi"}),
        ("gen_ai.choice", END_US, {"index": 0, "message": json.dumps({"content": "Yo"}), "finish_reason": "stop"}),
    )
    _, p = props({"gen_ai.operation.name": "chat"}, events)
    assert p["$ai_input"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert p["$ai_output_choices"] == [{"role": "assistant", "content": "Yo"}]


def test_embeddings_take_their_input_as_text() -> None:
    one = {"gen_ai.operation.name": "embeddings", "gen_ai.prompt.0.content": "hello"}
    kind, p = props(one)
    assert (kind, p["$ai_input"]) == ("$ai_embedding", "hello")
    assert "$ai_generation_id" not in p
    two = {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": t}]} for t in ("a", "b")]
        ),
    }
    assert props(two)[1]["$ai_input"] == ["a", "b"]


@pytest.mark.parametrize(
    ("attributes", "name", "state"),
    [
        (
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "forecast",
                "gen_ai.tool.call.arguments": '{"city": "Paris"}',
                "gen_ai.tool.call.result": "sunny",
            },
            "forecast",
            ({"city": "Paris"}, "sunny"),
        ),
        (
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"},
            "planner",
            (None, None),
        ),
        (
            {
                "traceloop.span.kind": "workflow",
                "traceloop.entity.name": "answer",
                "traceloop.entity.input": '{"args": ["q"]}',
                "traceloop.entity.output": '"done"',
            },
            "answer",
            ({"args": ["q"]}, "done"),
        ),
    ],
)
def test_agent_tool_and_workflow_operations_are_spans(
    attributes: dict[str, Any], name: str, state: tuple[Any, Any]
) -> None:
    kind, p = props(attributes, name="raw span name")
    assert kind == "$ai_span"
    assert p["$ai_span_name"] == name
    assert (p.get("$ai_input_state"), p.get("$ai_output_state")) == state
    assert "$ai_model" not in p


def test_an_error_takes_the_status_or_the_exception_event() -> None:
    _, described = props({"gen_ai.operation.name": "chat"}, error="rate limited")
    assert (described["$ai_is_error"], described["$ai_error"]) == (True, "rate limited")
    exception = ("exception", END_US, {"exception.type": "openai.APIError", "exception.message": "boom"})
    _, from_event = props({"gen_ai.operation.name": "chat"}, (exception,), error="")
    assert from_event["$ai_error"] == "openai.APIError: boom"
    _, bare = props({"gen_ai.operation.name": "chat", "error.type": "timeout"}, error="")
    assert bare["$ai_error"] == "timeout"


def test_inputs_and_outputs_follow_the_mask_privacy_and_redaction() -> None:
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "content": "secret?", "headers": {"Authorization": "k"}}]
        ),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": "yes"}]),
    }
    _, none = props(attributes, mask=0)
    assert "$ai_input" not in none
    assert "$ai_output_choices" not in none
    _, private = props(attributes, header={**HEADER, PRIVACY: True})
    assert "$ai_input" not in private
    assert "$ai_output_choices" not in private
    _, redacted = props(attributes, header={**HEADER, REDACT: ("authorization",)})
    assert redacted["$ai_input"][0]["headers"] == {"Authorization": "[REDACTED]"}


def test_a_span_says_who_and_which_session_only_where_its_trace_does_not() -> None:
    attributes = {"gen_ai.operation.name": "chat", "posthog.distinct_id": "user-7", "session.id": "s-1"}
    event = records.expand(HEADER, record(attributes))
    assert event["distinct_id"] == "user-7"
    assert "$process_person_profile" not in event["properties"]
    assert event["properties"]["$ai_session_id"] == "s-1"
    known = {TRACE_ID: "t", DISTINCT_ID: "handler-user", SESSION_ID: "handler-session"}
    event = records.expand(known, record(attributes))
    assert event["distinct_id"] == "handler-user"
    assert event["properties"]["$ai_session_id"] == "handler-session"


def test_a_span_at_the_top_of_its_trace_points_at_the_trace() -> None:
    _, p = props({"gen_ai.operation.name": "chat"}, parent=None)
    assert p["$ai_parent_id"] == "trace-1"


def test_what_makes_a_span_genai() -> None:
    assert genai.is_genai({"gen_ai.system": "openai"})
    assert genai.is_genai({"llm.request.type": "chat"})
    assert genai.is_genai({"traceloop.span.kind": "task"})
    assert not genai.is_genai({"http.method": "GET", "db.system": "dynamodb"})


# The scopes real instrumentations name their tracers (OpenLLMetry's and OpenInference's after
# their modules; the frameworks' own tracers as they call them).
FRAMEWORK_SCOPES = [
    ("opentelemetry.instrumentation.langchain", "langchain"),
    ("openinference.instrumentation.langchain", "langchain"),
    ("opentelemetry.instrumentation.llamaindex", "llamaindex"),
    ("openinference.instrumentation.llama_index", "llamaindex"),
    ("opentelemetry.instrumentation.crewai.instrumentation", "crewai"),
    ("openinference.instrumentation.crewai", "crewai"),
    ("opentelemetry.instrumentation.openai_agents", "openai-agents"),
    ("openinference.instrumentation.openai_agents", "openai-agents"),
    ("haystack", "haystack"),
    ("opentelemetry.instrumentation.haystack", "haystack"),
    ("openinference.instrumentation.dspy", "dspy"),
    ("pydantic-ai", "pydantic-ai"),
    ("openinference.instrumentation.pydantic_ai", "pydantic-ai"),
    ("strands.telemetry.tracer", "strands-agents"),
    ("gcp.vertex.agent", "google-adk"),
    ("openinference.instrumentation.google_adk", "google-adk"),
    ("autogen-core", "autogen"),
    ("openinference.instrumentation.autogen_agentchat", "autogen"),
    ("openinference.instrumentation.smolagents", "smolagents"),
    ("openinference.instrumentation.agno", "agno"),
    ("opentelemetry.instrumentation.agno", "agno"),
    ("openinference.instrumentation.claude_agent_sdk", "claude-agent-sdk"),
    ("OpenInference.Instrumentation.LangChain", "langchain"),
]


@pytest.mark.parametrize(("scope", "named"), FRAMEWORK_SCOPES)
def test_a_frameworks_instrumentation_names_it(scope: str, named: str) -> None:
    assert genai.framework(scope, {}) == named


@pytest.mark.parametrize(
    "scope",
    [
        # Provider SDKs' instrumentations: not frameworks, as posthog-python's own wrappers say.
        "opentelemetry.instrumentation.openai_v2",
        "opentelemetry.instrumentation.openai.v1",
        "openinference.instrumentation.openai",
        "opentelemetry.instrumentation.anthropic",
        "openinference.instrumentation.anthropic",
        "opentelemetry.instrumentation.bedrock",
        "opentelemetry.instrumentation.botocore",
        "openinference.instrumentation.bedrock",
        "opentelemetry.instrumentation.vertexai",
        "opentelemetry.instrumentation.google_genai",
        "openinference.instrumentation.google_genai",
        "opentelemetry.instrumentation.cohere",
        "opentelemetry.instrumentation.mistralai",
        "openinference.instrumentation.mistralai",
        "opentelemetry.instrumentation.groq",
        "opentelemetry.instrumentation.ollama",
        # A framework's name inside another word, or only part of a name of several words.
        "app.diagnostics",
        "opentelemetry.instrumentation.agnostic",
        "dspyx",
        "langchainish.tracer",
        "llama.cpp",
        "pydantic",
        "claude.sdk",
        "google.genai",
        "test",
        "",
        None,
    ],
)
def test_other_scopes_name_no_framework(scope: str | None) -> None:
    assert genai.framework(scope, {}) is None


def test_a_spans_own_framework_wins() -> None:
    own = {"$ai_framework": "langgraph"}
    assert genai.framework("opentelemetry.instrumentation.langchain", own) == "langgraph"
    assert genai.framework(None, own) == "langgraph"
    assert genai.framework("openinference.instrumentation.crewai", {"$ai_framework": ""}) == "crewai"
    langchain = {"gen_ai.operation.name": "chat", genai.SCOPE_NAME: "opentelemetry.instrumentation.langchain"}
    assert props({**langchain, "$ai_framework": "langgraph"})[1]["$ai_framework"] == "langgraph"
    assert props({**langchain, "$ai_framework": 7})[1]["$ai_framework"] == 7  # passed through as it is


def test_the_scope_names_the_events_framework_and_is_no_property_itself() -> None:
    for attributes, kind in ((CURRENT, "$ai_generation"), ({"gen_ai.operation.name": "invoke_agent"}, "$ai_span")):
        scoped = {**attributes, genai.SCOPE_NAME: "openinference.instrumentation.agno", "app.tier": "gold"}
        made, p = props(scoped)
        assert (made, p["$ai_framework"]) == (kind, "agno")
        assert genai.SCOPE_NAME not in p
        assert p["app.tier"] == "gold"  # the span's other attributes stay properties
    _, provider = props({**CURRENT, genai.SCOPE_NAME: "opentelemetry.instrumentation.openai_v2"})
    assert "$ai_framework" not in provider
    assert genai.SCOPE_NAME not in provider
    _, unscoped = props(CURRENT)
    assert "$ai_framework" not in unscoped


def test_scope_names_are_read_the_same_however_many_and_long() -> None:
    for n in range(100):  # past the names kept
        assert genai.framework(f"app.module{n}", {}) is None
    assert genai.framework("openinference.instrumentation.dspy.later", {}) == "dspy"
    long = "opentelemetry.instrumentation.langchain." + "x" * 1_000
    assert genai.framework(long, {}) == genai.framework(long, {}) == "langchain"
    assert long not in genai._NAMED  # a span's own attribute can be any size: none is kept


@pytest.mark.parametrize("hostile", [7, ("langchain",), {"name": "langchain"}])
def test_a_scope_name_that_is_not_one_names_nothing(hostile: Any) -> None:
    _, p = props({**CURRENT, genai.SCOPE_NAME: hostile})
    assert "$ai_framework" not in p
    assert genai.SCOPE_NAME not in p


@pytest.mark.parametrize(
    "hostile",
    [
        (genai.SPAN, "x"),
        (genai.SPAN, "x", None, "not a time", 1, None, None, 0, {}, ()),
        (genai.SPAN, "x", None, END_US, 1, None, None, 0, "not a dict", ()),
        (genai.SPAN, "x", None, END_US, 1, None, None, 0, {}, (("only", "two"),)),
        (genai.SPAN, "x", None, END_US, 1, None, None, 0, {1: "key not a string"}, ()),
        (genai.SPAN, "x", None, END_US, 1, None, None, 0, {}, ((1, END_US, None),)),
    ],
)
def test_a_record_that_cannot_be_read_raises_what_the_reader_counts(hostile: tuple[Any, ...]) -> None:
    with pytest.raises((KeyError, IndexError, TypeError, ValueError, AttributeError)):
        records.expand(HEADER, hostile)


def test_hostile_content_is_kept_as_text_not_a_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    _, p = props({"gen_ai.operation.name": "chat", "gen_ai.input.messages": deep, "gen_ai.usage.input_tokens": "lots"})
    assert p["$ai_input"] == deep
    assert "$ai_input_tokens" not in p


def test_records_knows_the_kind_without_loading_the_module() -> None:
    assert records.OTEL_SPAN == genai.SPAN
