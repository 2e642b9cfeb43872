"""examples/powertools/app.py runs as written: one trace per request, under the Cognito user,
with Logger, Tracer, Metrics and event_source all doing their part."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aws_lambda_powertools import Tracer
from aws_lambda_powertools.tracing import tracer as tracer_module

from posthog_lambda.testing import trace_tree_problems
from tests.helpers import LambdaContext, by_kind, one
from tests.powertools.conftest import emf_lines
from tests.powertools.fakes import COGNITO_SUB, RecordingProvider, api_gateway_event, fake_xray_sdk

APP = Path(__file__).resolve().parents[2] / "examples" / "powertools" / "app.py"


class Example:
    def __init__(self, module: ModuleType, xray: RecordingProvider, log: io.StringIO) -> None:
        self.module = module
        self.xray = xray
        self.log = log

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Example]:
    # Tracer() imports aws-xray-sdk, which is not installed here: give it a recorder that
    # keeps what the Tracer decorators write.
    xray = RecordingProvider()
    for name, module in fake_xray_sdk(xray).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(tracer_module, "aws_xray_sdk", sys.modules["aws_xray_sdk"])
    Tracer._reset_config()
    spec = importlib.util.spec_from_file_location(f"powertools_example_{uuid.uuid4().hex}", APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The Logger writes to stdout, as on Lambda; read its lines from memory instead.
    log = io.StringIO()
    module.logger.registered_handler.setStream(log)
    yield Example(module, xray, log)
    Tracer._reset_config()


def test_a_question_becomes_one_trace_joined_to_its_logs(
    example: Example, events: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    event = api_gateway_event(body=json.dumps({"question": "What is a Lambda layer?"}))

    response = example.module.handler(event, LambdaContext("req-7"))

    assert response["statusCode"] == 200
    reply = json.loads(response["body"])["answer"]
    assert reply == example.module.NOTES["layer"]

    # The trace: named, under the Cognito user and the session header, a tree.
    assert trace_tree_problems(events) == []
    trace = one(events, "$ai_trace")
    props = trace["properties"]
    trace_id = props["$ai_trace_id"]
    assert props["$ai_span_name"] == "ask"
    assert {e["distinct_id"] for e in events} == {COGNITO_SUB}
    assert props["$ai_session_id"] == "conv-42"
    assert props["$ai_input_state"]["headers"]["Authorization"] == "[REDACTED]"
    assert props["$ai_input_state"]["requestContext"]["requestId"] == event["requestContext"]["requestId"]
    retrieve = one(events, "$ai_span", "retrieve")["properties"]
    assert retrieve["$ai_output_state"] == [reply]
    generated = one(events, "$ai_generation")["properties"]
    assert generated["$ai_model"] == "gpt-4o-mini"
    assert generated["$ai_output_choices"] == [{"role": "assistant", "content": reply}]
    assert generated["$ai_input_tokens"] > 0

    # Logger: the line has the Lambda context and names the trace.
    [line] = [entry for entry in example.log_lines() if entry["message"] == "question received"]
    assert line["function_request_id"] == "req-7"
    assert line["notes_found"] == 1
    assert line["posthog_trace_id"] == trace_id
    assert line["posthog_span_id"] == trace_id

    # Tracer: the handler's subsegment and the traced method's, inside the PostHog trace.
    names = [segment.name for segment in example.xray.segments]
    assert names == ["## handler", f"## {example.module.__name__}.find_notes"]
    handler_segment = example.xray.segments[0]
    assert "ColdStart" in handler_segment.annotations
    assert handler_segment.metadata[("support-bot", "handler response")] is response
    assert {segment.posthog_trace_id for segment in example.xray.segments} == {trace_id}

    # Metrics: flushed to stdout in the embedded metric format.
    [document] = emf_lines(capsys.readouterr().out)
    assert document["Questions"] == [1.0]
    assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "SupportBot"


def test_an_anonymous_empty_request(example: Example, events: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    event = api_gateway_event(body=None)
    del event["requestContext"]["authorizer"]

    response = example.module.handler(event, LambdaContext())

    assert response["statusCode"] == 400
    trace = one(events, "$ai_trace")
    assert trace["distinct_id"] == trace["properties"]["$ai_trace_id"]
    assert trace["properties"]["$process_person_profile"] is False
    assert by_kind(events, "$ai_generation") == []
    [warning] = [entry for entry in example.log_lines() if entry["message"] == "empty question"]
    assert warning["posthog_trace_id"] == trace["properties"]["$ai_trace_id"]
    assert emf_lines(capsys.readouterr().out)[0]["Questions"] == [1.0]
