"""End to end: OpenTelemetry GenAI spans from the real instrumentations (the OpenTelemetry
project's ``openai-v2`` and OpenLLMetry's ``openai``), driving the real ``openai`` SDK against
the fake provider, in a function running in the local Lambda environment with the built layer;
the spans reach the local PostHog through the extension as ``$ai_*`` events."""

from __future__ import annotations

import json
import socket
import textwrap
from collections import Counter
from typing import Any

import pytest

from posthog_lambda.local.emulator.sandbox import link_distributions
from posthog_lambda.testing import trace_tree_problems
from tests.e2e.conftest import Deployment
from tests.integrations.conftest import FIRST_TOKEN_DELAY_S, bundle_sdks, sdk_environment, with_dependencies
from tests.integrations.fake_llm import DEFAULT_REPLY, FakeLLM, count_tokens
from tests.integrations.test_lambda import named, received

OTEL_SDKS = (
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-openai-v2",
    "opentelemetry-instrumentation-openai",
    "opentelemetry-exporter-otlp-proto-http",
)

INSTRUMENTATIONS = {
    # The OpenTelemetry project's own, with the latest conventions and content on the span.
    "openai-v2": {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_only",
    },
    # Traceloop's OpenLLMetry, as installed (it records content by default).
    "openllmetry": {},
}

APP = textwrap.dedent(
    """
    import os

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from posthog_lambda import posthog_traced, span
    from posthog_lambda.otel import PostHogLambdaSpanProcessor

    provider = TracerProvider()
    if os.environ["ROUTE"] == "otlp":
        # An app already exporting OTLP, unchanged: the exporter's default endpoint is localhost.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(PostHogLambdaSpanProcessor())
    trace.set_tracer_provider(provider)
    if os.environ["INSTRUMENTATION"] == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    else:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    OpenAIInstrumentor().instrument()

    import openai

    client = openai.OpenAI()

    def ask(question):
        with span("draft"):
            stream = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": question}],
                stream=True,
                stream_options={"include_usage": True},
            )
            draft = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        with trace.get_tracer("app").start_as_current_span("not genai"):
            final = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": "Answer in one short sentence."},
                    {"role": "user", "content": question},
                ],
                temperature=0.2,
            )
        client.embeddings.create(model="text-embedding-3-small", input=question)
        provider.force_flush()  # as OpenTelemetry on Lambda does before returning (a no-op for ours)
        return {"answer": final.choices[0].message.content, "draft": draft}

    @posthog_traced(name="ask", distinct_id="user-1")
    def traced(event, context):
        return ask(event["question"])

    @posthog_traced(name="ask", distinct_id="user-1", privacy_mode=True)
    def private(event, context):
        return ask(event["question"])

    def handler(event, context):
        return (private if event.get("private") else traced)(event, context)
    """
)


@pytest.fixture
def otel_deployment(ai_deployment: Deployment) -> Deployment:
    names = [n for n in with_dependencies(OTEL_SDKS) if not (ai_deployment.function / n).exists()]
    link_distributions(ai_deployment.function, names)
    bundle_sdks(ai_deployment.function)
    ai_deployment.code(APP)
    return ai_deployment


ROUTES = ("processor", "otlp")
"""posthog_lambda.otel's span processor, or the app's own OTLP/HTTP exporter to the extension."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(deployment: Deployment, llm: FakeLLM, instrumentation: str, route: str, **event: Any) -> list[dict[str, Any]]:
    environment = {
        **sdk_environment(llm),
        **INSTRUMENTATIONS[instrumentation],
        "INSTRUMENTATION": instrumentation,
        "ROUTE": route,
    }
    if route == "otlp":
        # The exporter's own variable, and the extension's, agreeing on a port no other test holds.
        port = free_port()
        environment["POSTHOG_LAMBDA_OTLP_PORT"] = str(port)
        environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://localhost:{port}"
    with deployment.environment(timeout_s=10, **environment) as env:
        result = env.invoke({"question": "What is a Lambda layer?", **event})
    assert result.status == "success", result.error
    assert result.payload == {"answer": DEFAULT_REPLY, "draft": DEFAULT_REPLY}
    return received(deployment, 5)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("instrumentation", sorted(INSTRUMENTATIONS))
def test_genai_spans_join_the_handlers_trace_once_each(
    otel_deployment: Deployment, llm: FakeLLM, instrumentation: str, route: str
) -> None:
    events = run(otel_deployment, llm, instrumentation, route)
    assert Counter(e["event"] for e in events) == {
        "$ai_trace": 1,
        "$ai_span": 1,
        "$ai_generation": 2,
        "$ai_embedding": 1,
    }
    assert len({e["uuid"] for e in events}) == 5
    assert trace_tree_problems(events) == []
    (trace,) = named(events, "$ai_trace", "ask")
    (draft,) = named(events, "$ai_span", "draft")
    trace_id = trace["$ai_trace_id"]
    assert {e["properties"]["$ai_trace_id"] for e in events} == {trace_id}
    assert {e["distinct_id"] for e in events} == {"user-1"}
    streamed, final = sorted(named(events, "$ai_generation"), key=lambda p: "$ai_temperature" in p)
    (embedding,) = named(events, "$ai_embedding")
    # Nested where they ran: the stream in the draft span; the other call's non-GenAI parent is
    # left out, so it sits at the top, as the embedding does.
    assert streamed["$ai_parent_id"] == draft["$ai_span_id"]
    assert final["$ai_parent_id"] == embedding["$ai_parent_id"] == trace_id
    question = "What is a Lambda layer?"
    for props in (streamed, final):
        assert (props["$ai_provider"], props["$ai_model"]) == ("openai", "gpt-4o-mini")
        assert props["$ai_output_tokens"] == count_tokens(DEFAULT_REPLY)
        assert props["$ai_output_choices"] == [{"role": "assistant", "content": DEFAULT_REPLY}]
        assert 0 < props["$ai_latency"] < trace["$ai_latency"]
        assert props["$ai_is_error"] is False
        assert "$ai_framework" not in props  # a provider SDK's instrumentation: no framework
    assert streamed["$ai_input"] == [{"role": "user", "content": question}]
    assert streamed["$ai_input_tokens"] == count_tokens(question)
    assert streamed["$ai_latency"] >= FIRST_TOKEN_DELAY_S
    assert final["$ai_input"] == [
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": question},
    ]
    assert final["$ai_input_tokens"] == count_tokens("Answer in one short sentence.") + count_tokens(question)
    assert final["$ai_temperature"] == 0.2
    assert final["$ai_stop_reason"] == "stop"
    assert (embedding["$ai_model"], embedding["$ai_input_tokens"]) == ("text-embedding-3-small", count_tokens(question))
    if instrumentation == "openllmetry":
        # It records a span event per streamed chunk: the first one times the first token.
        assert streamed["$ai_stream"] is True
        assert 0 < streamed["$ai_time_to_first_token"] < streamed["$ai_latency"]
        assert embedding["$ai_input"] == question


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("instrumentation", sorted(INSTRUMENTATIONS))
def test_privacy_mode_drops_the_messages(
    otel_deployment: Deployment, llm: FakeLLM, instrumentation: str, route: str
) -> None:
    events = run(otel_deployment, llm, instrumentation, route, question="my private question", private=True)
    text = json.dumps(events)
    assert "my private question" not in text
    assert DEFAULT_REPLY not in text
    generations = named(events, "$ai_generation")
    assert len(generations) == 2
    for props in generations:
        assert "$ai_input" not in props
        assert "$ai_output_choices" not in props
        assert props["$ai_output_tokens"] == count_tokens(DEFAULT_REPLY)


HOSTILE = textwrap.dedent(
    """
    import os, socket
    from posthog_lambda import posthog_traced, span

    def send(raw):
        with socket.create_connection(("127.0.0.1", int(os.environ["POSTHOG_LAMBDA_OTLP_PORT"])), timeout=5) as sock:
            sock.sendall(raw)
            return sock.recv(4096).split(b" ", 2)[1].decode()

    def request(body, content_type="application/x-protobuf"):
        head = f"POST /v1/traces HTTP/1.1\\r\\nContent-Type: {content_type}\\r\\n"
        return f"{head}Content-Length: {len(body)}\\r\\n\\r\\n".encode() + body

    @posthog_traced(name="hostile")
    def handler(event, context):
        with span("attack"):
            return [
                send(request(b"\\x0a\\x05\\x01")),  # protobuf cut short
                send(request(b"{not json", "application/json")),
                send(request(b"x" * 10, "text/plain")),
                send(b"GET /v1/traces HTTP/1.1\\r\\n\\r\\n"),
                send(os.urandom(64) + b"\\r\\n\\r\\n"),
            ]
    """
)


def test_hostile_otlp_is_refused_and_counted_and_the_function_goes_on(deployment: Deployment) -> None:
    deployment.code(HOSTILE)
    port = str(free_port())
    with deployment.environment(timeout_s=10, POSTHOG_LAMBDA_OTLP_PORT=port) as env:
        first = env.invoke({})
        second = env.invoke({})
    assert first.status == second.status == "success", first.error
    assert first.payload == ["400", "400", "415", "405", "400"]
    deployment.posthog.wait_for_events(2, timeout=10, predicate=lambda e: e.name == "posthog_lambda_dropped")
    dropped: Counter[str] = Counter()
    for event in deployment.posthog.events:
        if event.name == "posthog_lambda_dropped":
            dropped.update({k: v for k, v in event.properties.items() if k.startswith("otlp_")})
    assert dropped == {"otlp_invalid": 6, "otlp_unsupported": 2, "otlp_not_found": 2}
    traces = [e for e in deployment.posthog.events if e.name == "$ai_trace"]
    assert len(traces) == 2


SNAPSHOT = textwrap.dedent(
    """
    from opentelemetry.sdk.trace import TracerProvider
    from posthog_lambda.otel import PostHogLambdaSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(PostHogLambdaSpanProcessor())
    tracer = provider.get_tracer("app")

    def handler(event, context):  # not traced: each OpenTelemetry trace is a trace of its own
        with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
            pass
        return "ok"
    """
)


def test_on_snapstart_restored_environments_make_different_opentelemetry_ids(otel_deployment: Deployment) -> None:
    otel_deployment.code(SNAPSHOT)
    restored: list[set[str]] = []
    with otel_deployment._environment({}, lifecycle="snap-start", timeout_s=10.0) as env:
        assert env.init().error is None
        for _ in range(2):
            before = {e.uuid for e in otel_deployment.posthog.events}
            assert [env.invoke({}).status for _ in range(3)] == ["success"] * 3
            env.shutdown()
            made = [e for e in otel_deployment.posthog.events if e.uuid not in before and e.name == "$ai_generation"]
            assert len(made) == 3
            restored.append({str(e.event["properties"]["$ai_trace_id"]) for e in made})
    assert all(len(ids) == 3 for ids in restored)
    assert not restored[0] & restored[1], "OpenTelemetry trace ids repeat across restored environments"


UNCHANGED = textwrap.dedent(
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    OpenAIInstrumentor().instrument(tracer_provider=provider)

    import openai

    client = openai.OpenAI()

    def handler(event, context):  # no posthog_lambda at all: an app that already exports OTLP
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": event["question"]}]
        )
        provider.force_flush()
        return answer.choices[0].message.content
    """
)


def test_an_app_exporting_otlp_needs_no_change_and_its_spans_leave_after_each_invocation(
    otel_deployment: Deployment, llm: FakeLLM
) -> None:
    otel_deployment.code(UNCHANGED)
    port = free_port()
    environment = {
        **sdk_environment(llm),
        "POSTHOG_LAMBDA_OTLP_PORT": str(port),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://localhost:{port}",
    }
    with otel_deployment.environment(timeout_s=10, **environment) as env:
        for n in range(2):
            result = env.invoke({"question": f"question {n}"})
            assert (result.status, result.payload) == ("success", DEFAULT_REPLY)
            # Sent after the invocation, before the next one (end mode): not held until SHUTDOWN.
            otel_deployment.posthog.wait_for_events(n + 1, timeout=10, predicate=lambda e: e.name == "$ai_generation")
    generations = [e.event for e in otel_deployment.posthog.events if e.name == "$ai_generation"]
    assert len(generations) == 2
    for n, event in enumerate(generations):
        props = event["properties"]
        assert props["$ai_input"] == [{"role": "user", "content": f"question {n}"}]
        assert props["$ai_output_tokens"] == count_tokens(DEFAULT_REPLY)
        # A trace of its own: OpenTelemetry's trace id, no known user.
        assert event["distinct_id"] == props["$ai_trace_id"] == props["$ai_parent_id"]
        assert len(props["$ai_trace_id"]) == 32
        assert props["$process_person_profile"] is False
