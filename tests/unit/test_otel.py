"""``posthog_lambda.otel``'s span processor in the function's process: which OpenTelemetry spans
leave, which trace they join and under which span, with the real ``opentelemetry-sdk``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer

from posthog_lambda import configure, posthog_traced, span
from posthog_lambda.otel import PostHogLambdaSpanProcessor
from posthog_lambda.testing import trace_tree_problems
from tests.helpers import LambdaContext

CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 3}
AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}


@pytest.fixture
def tracer() -> Iterator[Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(PostHogLambdaSpanProcessor())
    yield provider.get_tracer("test")
    provider.shutdown()


def by_name(events: list[Any]) -> dict[str, dict[str, Any]]:
    return {e["properties"]["$ai_span_name"]: e for e in events}


def test_genai_spans_join_the_handler_under_the_current_span(
    tracer: Tracer, events: list[Any], context: LambdaContext
) -> None:
    @posthog_traced(name="handler", distinct_id="user-1")
    def handler(event: Any, context: Any) -> str:
        with span("retrieve"):
            with tracer.start_as_current_span("chat gpt-4o", attributes=CHAT):
                pass
            with tracer.start_as_current_span("GET /items", attributes={"http.request.method": "GET"}):
                pass
        return "ok"

    assert handler({}, context) == "ok"
    assert trace_tree_problems(events) == []
    found = by_name(events)
    assert set(found) == {"handler", "retrieve", "chat gpt-4o"}  # the HTTP span is left out
    chat = found["chat gpt-4o"]
    assert chat["event"] == "$ai_generation"
    assert chat["distinct_id"] == "user-1"
    assert chat["properties"]["$ai_parent_id"] == found["retrieve"]["properties"]["$ai_span_id"]
    assert chat["properties"]["$ai_trace_id"] == found["handler"]["properties"]["$ai_trace_id"]


def test_nesting_skips_spans_that_are_left_out_and_yields_to_a_span_entered_since(
    tracer: Tracer, events: list[Any], context: LambdaContext
) -> None:
    @posthog_traced(name="handler")
    def handler(event: Any, context: Any) -> None:
        with tracer.start_as_current_span("planner", attributes=AGENT):
            with tracer.start_as_current_span("plain"), tracer.start_as_current_span("first", attributes=CHAT):
                pass
            with span("step"), tracer.start_as_current_span("second", attributes=CHAT):
                pass

    handler({}, context)
    assert trace_tree_problems(events) == []
    found = {name: e["properties"] for name, e in by_name(events).items()}
    assert set(found) == {"handler", "planner", "first", "step", "second"}
    assert found["planner"]["$ai_parent_id"] == found["handler"]["$ai_trace_id"]
    assert found["first"]["$ai_parent_id"] == found["planner"]["$ai_span_id"]  # past "plain"
    assert found["second"]["$ai_parent_id"] == found["step"]["$ai_span_id"]  # the nearer one
    assert by_name(events)["planner"]["event"] == "$ai_span"


def test_outside_a_handler_each_opentelemetry_trace_is_its_own(tracer: Tracer, events: list[Any]) -> None:
    with (
        tracer.start_as_current_span("planner", attributes=AGENT) as agent,
        tracer.start_as_current_span("chat", attributes=CHAT),
    ):
        pass
    assert trace_tree_problems(events) == []
    found = {name: e["properties"] for name, e in by_name(events).items()}
    trace_id = format(agent.get_span_context().trace_id, "032x")
    assert {p["$ai_trace_id"] for p in found.values()} == {trace_id}
    assert found["planner"]["$ai_parent_id"] == trace_id
    assert found["planner"]["$ai_span_id"] == format(agent.get_span_context().span_id, "016x")
    assert found["chat"]["$ai_parent_id"] == found["planner"]["$ai_span_id"]
    assert {e["distinct_id"] for e in events} == {trace_id}
    assert all(p["$process_person_profile"] is False for p in found.values())


def test_all_spans_sends_the_others_as_spans(events: list[Any]) -> None:
    provider = TracerProvider()
    provider.add_span_processor(PostHogLambdaSpanProcessor(all_spans=True))
    with provider.get_tracer("test").start_as_current_span("GET /items", attributes={"http.route": "/items"}):
        pass
    (event,) = events
    assert event["event"] == "$ai_span"
    assert event["properties"]["http.route"] == "/items"


def test_the_environment_asks_for_all_spans_and_an_argument_wins(
    events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTHOG_LAMBDA_OTEL_ALL_SPANS", "true")
    assert PostHogLambdaSpanProcessor().all_spans is True
    assert PostHogLambdaSpanProcessor(all_spans=False).all_spans is False
    monkeypatch.delenv("POSTHOG_LAMBDA_OTEL_ALL_SPANS")
    assert PostHogLambdaSpanProcessor().all_spans is False


def test_capture_input_off_sends_no_messages(tracer: Tracer, events: list[Any]) -> None:
    configure(capture_input=False)
    messages = '[{"role": "user", "content": "hi"}]'
    attributes = {**CHAT, "gen_ai.input.messages": messages, "gen_ai.output.messages": messages}
    with tracer.start_as_current_span("chat", attributes=attributes):
        pass
    (event,) = events
    assert "$ai_input" not in event["properties"]
    assert event["properties"]["$ai_output_choices"] == [{"role": "user", "content": "hi"}]


def test_an_error_is_recorded(tracer: Tracer, events: list[Any]) -> None:
    with pytest.raises(RuntimeError), tracer.start_as_current_span("chat", attributes=CHAT):
        raise RuntimeError("provider down")
    (event,) = events
    assert event["properties"]["$ai_is_error"] is True
    assert "provider down" in event["properties"]["$ai_error"]
    with tracer.start_as_current_span("chat", attributes=CHAT) as described:
        described.set_status(Status(StatusCode.ERROR, "rate limited"))
    assert events[1]["properties"]["$ai_error"] == "rate limited"


def test_a_span_that_outlives_its_handler_is_still_sent_once(
    tracer: Tracer, events: list[Any], context: LambdaContext
) -> None:
    held: list[Any] = []

    @posthog_traced(name="handler")
    def handler(event: Any, context: Any) -> None:
        held.append(tracer.start_span("late chat", attributes=CHAT))

    handler({}, context)
    assert [e["event"] for e in events] == ["$ai_trace"]
    held[0].end()
    assert [e["event"] for e in events] == ["$ai_trace", "$ai_generation"]
    assert events[1]["properties"]["$ai_trace_id"] == events[0]["properties"]["$ai_trace_id"]


def test_past_max_open_the_oldest_is_forgotten_and_its_child_nests_under_the_trace(events: list[Any]) -> None:
    provider = TracerProvider()
    provider.add_span_processor(PostHogLambdaSpanProcessor(max_open=1))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("planner", attributes=AGENT) as agent,
        tracer.start_as_current_span("chat", attributes=CHAT),
    ):
        pass
    found = {name: e["properties"] for name, e in by_name(events).items()}
    assert found["chat"]["$ai_parent_id"] == format(agent.get_span_context().trace_id, "032x")


def test_it_never_raises_into_the_app(tracer: Tracer, library_logs: pytest.LogCaptureFixture) -> None:
    processor = PostHogLambdaSpanProcessor()
    processor.on_start(object())  # type: ignore[arg-type]
    processor.on_end(object())  # type: ignore[arg-type]
    assert "posthog_lambda.otel" in library_logs.text
    assert processor.force_flush() is True


def test_it_composes_with_the_apps_other_processors(events: list[Any]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(PostHogLambdaSpanProcessor())
    with provider.get_tracer("test").start_as_current_span("chat", attributes=CHAT):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["chat"]
    assert [e["event"] for e in events] == ["$ai_generation"]


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What is registered with the runtime's after-restore hooks (a stand-in for
    ``snapshot_restore_py``), in a process that has registered nothing yet."""
    import sys
    import types

    from posthog_lambda import otel

    hooks: list[Any] = []
    module = types.ModuleType("snapshot_restore_py")
    module.register_after_restore = hooks.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    monkeypatch.setattr(otel, "_reseeding", False)
    return hooks


def test_on_snapstart_random_is_reseeded_after_each_restore(
    registered: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    PostHogLambdaSpanProcessor()
    PostHogLambdaSpanProcessor()
    assert registered == [random.seed]  # once per process
    random.seed(7)
    copied = random.getrandbits(64)
    random.seed(7)  # what every restored copy of the snapshot holds
    registered[0]()
    assert random.getrandbits(64) != copied


def test_elsewhere_nothing_is_registered(registered: list[Any]) -> None:
    PostHogLambdaSpanProcessor()
    assert registered == []


def test_the_resource_can_say_who_the_user_is(events: list[Any]) -> None:
    from opentelemetry.sdk.resources import Resource

    for user in ("user-1", "user-2"):  # a provider (and resource) each: neither takes the other's
        provider = TracerProvider(resource=Resource.create({"posthog.distinct_id": user}))
        provider.add_span_processor(PostHogLambdaSpanProcessor())
        with provider.get_tracer("test").start_as_current_span("chat", attributes=CHAT):
            pass
    assert [e["distinct_id"] for e in events] == ["user-1", "user-2"]
    assert "$process_person_profile" not in events[0]["properties"]


def test_the_instrumentation_scope_names_the_framework(events: list[Any]) -> None:
    provider = TracerProvider()
    provider.add_span_processor(PostHogLambdaSpanProcessor())
    with provider.get_tracer("opentelemetry.instrumentation.langchain").start_as_current_span("chat", attributes=CHAT):
        pass
    with provider.get_tracer("opentelemetry.instrumentation.openai_v2").start_as_current_span("chat", attributes=CHAT):
        pass
    langchain, openai = (e["properties"] for e in events)
    assert langchain["$ai_framework"] == "langchain"
    assert "$ai_framework" not in openai  # a provider's SDK is not a framework
    assert "otel.scope.name" not in langchain
    assert "otel.scope.name" not in openai


def test_a_spans_own_scope_name_attribute_is_kept(events: list[Any]) -> None:
    provider = TracerProvider()
    provider.add_span_processor(PostHogLambdaSpanProcessor())
    tracer = provider.get_tracer("opentelemetry.instrumentation.langchain")
    own = {**CHAT, "otel.scope.name": "openinference.instrumentation.crewai"}
    with tracer.start_as_current_span("chat", attributes=own):
        pass
    (event,) = events
    assert event["properties"]["$ai_framework"] == "crewai"


def test_a_span_without_an_instrumentation_scope_is_sent(events: list[Any]) -> None:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    bare = ReadableSpan(
        name="chat", context=SpanContext(1, 2, is_remote=False), attributes=CHAT, start_time=1_000, end_time=2_000
    )
    assert bare.instrumentation_scope is None
    PostHogLambdaSpanProcessor().on_end(bare)
    (event,) = events
    assert event["event"] == "$ai_generation"
    assert "$ai_framework" not in event["properties"]
