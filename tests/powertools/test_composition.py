"""@posthog_traced composed with each Powertools handler decorator, in both orders: the
result and exceptions pass through unchanged, the trace is whole, and the Powertools
decorator still does its job."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent, event_source

from posthog_lambda import current_span, posthog_traced, span
from posthog_lambda.powertools import correlate_logs, from_event
from posthog_lambda.testing import trace_tree_problems
from tests.helpers import LambdaContext, by_kind, one
from tests.powertools.conftest import LogLines, emf_lines
from tests.powertools.fakes import COGNITO_SUB, RecordingProvider, api_gateway_event

Handler = Callable[[Any, Any], Any]
Decorator = Callable[[Handler], Handler]

RESULT = {"statusCode": 200, "body": '{"answer": "a layer is a zip"}'}


@pytest.fixture(params=["posthog_outermost", "posthog_innermost"])
def order(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def compose(order: str, powertools: Decorator, traced: Decorator, handler: Handler) -> Handler:
    if order == "posthog_outermost":
        return traced(powertools(handler))
    return powertools(traced(handler))


def retrieve() -> None:
    with span("retrieve", input="what is a layer?") as s:
        s.update(output=["A Lambda layer is extracted to /opt."])


def complete_trace(events: list[Any], error: str | None = None) -> dict[str, Any]:
    """The one $ai_trace, after checking the events form one tree with the retrieve span under it."""
    assert trace_tree_problems(events) == []
    trace = one(events, "$ai_trace")
    props = trace["properties"]
    # Named after the user's handler, not a Powertools wrapper (functools.wraps carries it).
    assert props["$ai_span_name"].endswith("<locals>.handler")
    assert props["lambda_request_id"] == "req-1"
    assert {e["properties"]["$ai_trace_id"] for e in events} == {props["$ai_trace_id"]}
    retrieved = one(events, "$ai_span", "retrieve")["properties"]
    assert retrieved["$ai_parent_id"] == props["$ai_trace_id"]
    assert retrieved["$ai_output_state"] == ["A Lambda layer is extracted to /opt."]
    assert props["$ai_is_error"] is (error is not None)
    if error is None:
        assert by_kind(events, "$exception") == []
        assert props["$ai_output_state"] == RESULT
    else:
        assert props["$ai_error"] == error
        exception = one(events, "$exception")["properties"]
        assert exception["$exception_list"][0]["value"] == error.split(": ", 1)[1]
    return trace


def raises_unchanged(handler: Handler, event: Any, context: Any, error: BaseException) -> None:
    with pytest.raises(type(error)) as caught:
        handler(event, context)
    assert caught.value is error
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "handler"  # the frame that raised is still the innermost


# -- Logger ----------------------------------------------------------------------------------


def test_logger_inject_lambda_context(order: str, events: list[Any], context: LambdaContext, logs: LogLines) -> None:
    correlate_logs(logs.logger)

    def handler(event: Any, ctx: Any) -> Any:
        logs.logger.info("answering")
        retrieve()
        return RESULT

    traced = compose(order, logs.logger.inject_lambda_context, posthog_traced, handler)

    assert traced({"question": "what is a layer?"}, context) is RESULT

    trace = complete_trace(events)
    line = logs.line("answering")
    # Powertools' job: the Lambda context keys on every line.
    assert line["function_request_id"] == "req-1"
    assert line["function_name"] == "ask"
    assert line["function_arn"] == context.invoked_function_arn
    assert line["function_memory_size"] == "512"
    assert isinstance(line["cold_start"], bool)
    # And the line names its trace.
    assert line["posthog_trace_id"] == trace["properties"]["$ai_trace_id"]


def test_logger_inject_lambda_context_exception(
    order: str, events: list[Any], context: LambdaContext, logs: LogLines
) -> None:
    error = ValueError("no answer")

    def handler(event: Any, ctx: Any) -> Any:
        retrieve()
        logs.logger.warning("giving up")
        raise error

    traced = compose(order, logs.logger.inject_lambda_context, posthog_traced, handler)

    raises_unchanged(traced, {"question": "?"}, context, error)

    complete_trace(events, error="ValueError: no answer")
    assert logs.line("giving up")["function_request_id"] == "req-1"


# -- Tracer ----------------------------------------------------------------------------------


def test_tracer_capture_lambda_handler(
    order: str, events: list[Any], context: LambdaContext, tracer: Tracer, xray: RecordingProvider
) -> None:
    def handler(event: Any, ctx: Any) -> Any:
        retrieve()
        return RESULT

    traced = compose(order, tracer.capture_lambda_handler, posthog_traced, handler)

    assert traced({"question": "what is a layer?"}, context) is RESULT

    trace = complete_trace(events)
    # Tracer's job: a "## handler" subsegment, annotated, with the response as metadata.
    [segment] = xray.segments
    assert segment.name == "## handler"
    assert segment.closed
    assert isinstance(segment.annotations["ColdStart"], bool)
    assert segment.annotations["Service"] == "ask"
    assert segment.metadata[("ask", "handler response")] is RESULT
    # Outermost, the trace is already current when the subsegment opens; innermost, not yet.
    expected = trace["properties"]["$ai_trace_id"] if order == "posthog_outermost" else ""
    assert segment.posthog_trace_id == expected


def test_tracer_capture_lambda_handler_exception(
    order: str, events: list[Any], context: LambdaContext, tracer: Tracer, xray: RecordingProvider
) -> None:
    error = ValueError("no answer")

    def handler(event: Any, ctx: Any) -> Any:
        retrieve()
        raise error

    traced = compose(order, tracer.capture_lambda_handler, posthog_traced, handler)

    raises_unchanged(traced, {"question": "?"}, context, error)

    complete_trace(events, error="ValueError: no answer")
    [segment] = xray.segments
    assert segment.metadata[("ask", "handler error")] is error
    assert "ColdStart" in segment.annotations


# -- Metrics ---------------------------------------------------------------------------------


def test_metrics_log_metrics(
    order: str, events: list[Any], context: LambdaContext, metrics: Metrics, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(event: Any, ctx: Any) -> Any:
        retrieve()
        metrics.add_metric(name="Answers", unit=MetricUnit.Count, value=1)
        return RESULT

    traced = compose(order, metrics.log_metrics, posthog_traced, handler)

    assert traced({"question": "what is a layer?"}, context) is RESULT

    complete_trace(events)
    # Metrics' job: the metric flushed to stdout in the embedded metric format.
    [document] = emf_lines(capsys.readouterr().out)
    assert document["Answers"] == [1.0]
    assert document["service"] == "ask"
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "PostHogLambdaTests"
    assert directive["Metrics"] == [{"Name": "Answers", "Unit": "Count"}]


def test_metrics_log_metrics_exception(
    order: str, events: list[Any], context: LambdaContext, metrics: Metrics, capsys: pytest.CaptureFixture[str]
) -> None:
    error = ValueError("no answer")

    def handler(event: Any, ctx: Any) -> Any:
        retrieve()
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
        raise error

    traced = compose(order, metrics.log_metrics, posthog_traced, handler)

    raises_unchanged(traced, {"question": "?"}, context, error)

    complete_trace(events, error="ValueError: no answer")
    # Flushed on the way out, even though the handler raised.
    [document] = emf_lines(capsys.readouterr().out)
    assert document["Failures"] == [1.0]


# -- event_source ----------------------------------------------------------------------------


def test_event_source_data_class(order: str, events: list[Any], context: LambdaContext) -> None:
    seen: list[Any] = []

    def handler(event: APIGatewayProxyEvent, ctx: Any) -> Any:
        seen.append(event)
        retrieve()
        return RESULT

    traced = compose(
        order,
        event_source(data_class=APIGatewayProxyEvent),
        posthog_traced(distinct_id=from_event("requestContext.authorizer.claims.sub")),
        handler,
    )
    raw = api_gateway_event()

    assert traced(raw, context) is RESULT

    # event_source's job: the handler gets the data class, over the same raw event.
    [event] = seen
    assert isinstance(event, APIGatewayProxyEvent)
    assert event.raw_event is raw
    assert event.request_context.authorizer.claims["sub"] == COGNITO_SUB
    trace = complete_trace(events)
    # Either way, the trace records the raw event (redacted), not the data class's repr, and
    # from_event reads the raw event too.
    expected = api_gateway_event()
    expected["headers"]["Authorization"] = expected["multiValueHeaders"]["Authorization"] = "[REDACTED]"
    assert trace["properties"]["$ai_input_state"] == expected
    assert {e["distinct_id"] for e in events} == {COGNITO_SUB}


def test_event_source_data_class_exception(order: str, events: list[Any], context: LambdaContext) -> None:
    error = ValueError("no answer")

    def handler(event: APIGatewayProxyEvent, ctx: Any) -> Any:
        assert isinstance(event, APIGatewayProxyEvent)
        retrieve()
        raise error

    traced = compose(order, event_source(data_class=APIGatewayProxyEvent), posthog_traced, handler)

    raises_unchanged(traced, api_gateway_event(), context, error)

    complete_trace(events, error="ValueError: no answer")


# -- all of them -----------------------------------------------------------------------------


def test_all_four_around_the_trace(
    events: list[Any],
    context: LambdaContext,
    logs: LogLines,
    tracer: Tracer,
    xray: RecordingProvider,
    metrics: Metrics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    correlate_logs(logs.logger)
    inside: list[str] = []

    @logs.logger.inject_lambda_context
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    @posthog_traced(distinct_id=from_event("requestContext.authorizer.claims.sub"))
    @event_source(data_class=APIGatewayProxyEvent)
    def handler(event: APIGatewayProxyEvent, ctx: Any) -> Any:
        inside.append(current_span().trace_id)
        logs.logger.info("answering", extra={"path": event.path})
        retrieve()
        metrics.add_metric(name="Answers", unit=MetricUnit.Count, value=1)
        return RESULT

    assert handler(api_gateway_event(), context) is RESULT

    trace = complete_trace(events)
    trace_id = trace["properties"]["$ai_trace_id"]
    assert inside == [trace_id]
    assert trace["distinct_id"] == COGNITO_SUB
    line = logs.line("answering")
    assert (line["posthog_trace_id"], line["function_request_id"], line["path"]) == (trace_id, "req-1", "/ask")
    assert [segment.name for segment in xray.segments] == ["## handler"]
    assert xray.segments[0].metadata[("ask", "handler response")] is RESULT
    assert emf_lines(capsys.readouterr().out)[0]["Answers"] == [1.0]
