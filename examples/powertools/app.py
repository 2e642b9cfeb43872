"""An API Gateway function using Powertools for AWS Lambda, traced with posthog-lambda.

- Logger: every JSON log line written inside the trace carries ``posthog_trace_id`` and
  ``posthog_span_id``, so CloudWatch Logs Insights can find the lines of a PostHog trace.
- Tracer and Metrics work as usual, beside the PostHog trace.
- ``@event_source`` hands the handler an ``APIGatewayProxyEvent``; the trace still records the
  raw event (headers such as ``Authorization`` redacted).
- The trace's user is the Cognito user (the ``sub`` claim) of the request, its session the
  ``X-Session-Id`` header.

The model is a deterministic stand-in (no network, no API key). Deploy with the
posthog-lambda layer and aws-lambda-powertools with its tracer extra (Powertools' own layer
has both), behind a REST API with a Cognito user pool authorizer.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from posthog_lambda import generation, posthog_traced, span
from posthog_lambda.powertools import correlate_logs, from_event

logger = Logger(service="support-bot")
tracer = Tracer(service="support-bot")
metrics = Metrics(namespace="SupportBot", service="support-bot")
correlate_logs(logger)

MODEL = "gpt-4o-mini"
NOTES = {
    "layer": "A Lambda layer is extracted to /opt in the function's execution environment.",
    "extension": "A Lambda extension runs beside the function and can work after the response.",
}


@tracer.capture_method
def find_notes(question: str) -> list[str]:
    with span("retrieve", input=question) as s:
        found = [text for key, text in NOTES.items() if key in question.lower()]
        s.update(output=found)
    return found


def answer(question: str, notes: list[str]) -> str:
    messages = [
        {"role": "system", "content": "Answer from these notes: " + " ".join(notes)},
        {"role": "user", "content": question},
    ]
    with generation("answer", model=MODEL, provider="openai", input=messages) as g:
        reply = notes[0] if notes else "I have no notes on that."
        g.update(
            output=reply,
            input_tokens=sum(len(m["content"].split()) for m in messages),
            output_tokens=len(reply.split()),
        )
    return reply


# Outermost, so that what the Powertools decorators do (the metrics flush, the subsegment) is
# inside the trace too; any order works.
@posthog_traced(
    name="ask",
    distinct_id=from_event("requestContext.authorizer.claims.sub"),
    session_id=from_event('headers."X-Session-Id"'),
)
@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=APIGatewayProxyEvent)
def handler(event: APIGatewayProxyEvent, context: LambdaContext) -> dict[str, Any]:
    metrics.add_metric(name="Questions", unit=MetricUnit.Count, value=1)
    question = str((event.json_body or {}).get("question", "")).strip()
    if not question:
        logger.warning("empty question")
        return {"statusCode": 400, "body": json.dumps({"error": "ask a question"})}
    notes = find_notes(question)
    logger.info("question received", extra={"notes_found": len(notes)})
    return {"statusCode": 200, "body": json.dumps({"answer": answer(question, notes)})}
