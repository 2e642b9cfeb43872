"""``posthog_lambda.aws``: the boto3 helpers write the trace where the receiving function's
``@posthog_traced`` finds it. Real boto3 clients, answered by botocore's Stubber: what is
checked is what boto3 validated and serialized, and each carrier written is then fed, in the
event Lambda would make of it, to a traced handler that must continue the sender's trace."""

from __future__ import annotations

import base64
import copy
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from posthog_lambda import aws, dropped_counts, posthog_traced, span
from posthog_lambda._propagation import read
from posthog_lambda.testing import trace_tree_problems
from tests.helpers import LambdaContext, W3CContext, by_kind, one, sns_message, sns_record, sqs_record

NOT_SENT = "trace_context_not_sent"
QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:jobs"
MACHINE = "arn:aws:states:eu-west-1:123456789012:stateMachine:jobs"
WHEN = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RESULT = object()

pytestmark = pytest.mark.usefixtures("events")  # every test captures what is emitted


@dataclass
class Stubbed:
    """A real client whose requests are answered by a Stubber, and what it was asked."""

    client: Any
    stubber: Stubber
    params: list[dict[str, Any]] = field(default_factory=list)
    """Each call's parameters as boto3 received them (and then validated and serialized)."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Each call's serialized request: headers, body."""

    def respond(self, method: str, response: dict[str, Any]) -> dict[str, Any]:
        self.stubber.add_response(method, response)
        return response


@pytest.fixture
def stubbed() -> Iterator[Callable[[str], Stubbed]]:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1"
    )
    made: list[Stubbed] = []

    def make(service: str) -> Stubbed:
        client: Any = session.client(service)  # type: ignore[call-overload]
        record = Stubbed(client, Stubber(client))
        client.meta.events.register(
            "before-parameter-build.*.*", lambda params, **_: record.params.append(copy.deepcopy(params))
        )
        client.meta.events.register("before-call.*.*", lambda params, **_: record.requests.append(params))
        record.stubber.activate()
        made.append(record)
        return record

    yield make
    for record in made:
        record.stubber.deactivate()
        record.stubber.assert_no_pending_responses()


@dataclass
class Sent:
    result: Any
    span_id: str
    trace_id: str


def traced(call: Callable[[], Any]) -> Sent:
    """``call()`` inside ``with span("send")`` of a traced handler A."""

    @posthog_traced(name="a", distinct_id="user-42", session_id="sess-7")
    def a(event: Any, context: Any) -> Sent:
        with span("send") as sending:
            return Sent(call(), sending.span_id, sending.trace_id)

    return a({}, None)


def assert_carrier(carrier: dict[str, Any], sent: Sent) -> None:
    assert set(carrier) >= {"traceparent", "baggage"}
    parent = read(carrier)
    assert parent is not None
    assert (parent.trace_id, parent.span_id) == (sent.trace_id, sent.span_id)
    assert (parent.distinct_id, parent.session_id) == ("user-42", "sess-7")


def carrier_of(attributes: dict[str, Any]) -> dict[str, str]:
    """The carrier in message attributes as boto3 takes them."""
    assert attributes["traceparent"]["DataType"] == "String"
    assert attributes["baggage"]["DataType"] == "String"
    return {name: attributes[name]["StringValue"] for name in ("traceparent", "baggage")}


def receive(events: list[Any], event: Any, context: Any = None) -> list[Any]:
    """Handler B; the events it emitted."""

    @posthog_traced(name="b")
    def b(event: Any, context: Any) -> Any:
        with span("b-child"):
            pass
        return RESULT

    before = len(events)
    assert b(event, context) is RESULT
    return events[before:]


def assert_continues(events: list[Any], b_events: list[Any], sent: Sent) -> None:
    assert b_events
    assert by_kind(b_events, "$ai_trace") == []
    assert {e["properties"]["$ai_trace_id"] for e in b_events} == {sent.trace_id}
    root = one(b_events, "$ai_span", "b")
    assert root["properties"]["lambda_root"] is True
    assert root["properties"]["$ai_parent_id"] == sent.span_id
    assert one(b_events, "$ai_span", "b-child")["properties"]["$ai_parent_id"] == root["properties"]["$ai_span_id"]
    assert {e["distinct_id"] for e in b_events} == {"user-42"}
    assert {e["properties"]["$ai_session_id"] for e in b_events} == {"sess-7"}
    assert trace_tree_problems(events) == []
    assert len(by_kind(events, "$ai_trace")) == 1


# -- the Lambda events each service makes of what was sent ------------------------------------


class ClientContextContext(LambdaContext):
    def __init__(self, decoded: dict[str, Any]) -> None:
        super().__init__()
        self.client_context = SimpleNamespace(
            custom=decoded.get("custom"), env=decoded.get("env"), client=decoded.get("client")
        )


def decoded_client_context(value: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(value, validate=True))
    return decoded


def encoded_client_context(value: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def sns_attributes(body: dict[str, str], prefix: str = "") -> dict[str, Any]:
    """Message attributes from an SNS query-protocol body."""
    found: dict[str, Any] = {}
    n = 1
    while f"{prefix}MessageAttributes.entry.{n}.Name" in body:
        entry = f"{prefix}MessageAttributes.entry.{n}"
        found[body[f"{entry}.Name"]] = {
            "DataType": body[f"{entry}.Value.DataType"],
            "StringValue": body[f"{entry}.Value.StringValue"],
        }
        n += 1
    return found


# -- SQS ----------------------------------------------------------------------------------------


def test_send_message_adds_string_attributes(events: list[Any], stubbed: Callable[[str], Stubbed]) -> None:
    sqs = stubbed("sqs")
    response = sqs.respond("send_message", {"MessageId": "m-1"})
    given = {
        "QueueUrl": QUEUE,
        "MessageBody": "job",
        "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": "acme"}},
    }
    before = copy.deepcopy(given)
    tenant = given["MessageAttributes"]

    sent = traced(lambda: aws.send_message(sqs.client, **given))

    assert sent.result is response
    assert given == before
    assert given["MessageAttributes"] is tenant
    [params] = sqs.params
    assert set(params["MessageAttributes"]) == {"tenant", "traceparent", "baggage"}
    assert params["MessageAttributes"]["tenant"] == {"DataType": "String", "StringValue": "acme"}
    assert (params["QueueUrl"], params["MessageBody"]) == (QUEUE, "job")
    assert_carrier(carrier_of(params["MessageAttributes"]), sent)
    serialized = json.loads(sqs.requests[0]["body"])["MessageAttributes"]
    assert serialized == params["MessageAttributes"]
    assert dropped_counts() == {}

    assert_continues(events, receive(events, {"Records": [sqs_record(params["MessageAttributes"])]}), sent)


def test_send_message_without_attributes(events: list[Any], stubbed: Callable[[str], Stubbed]) -> None:
    sqs = stubbed("sqs")
    sqs.respond("send_message", {"MessageId": "m-1"})
    sent = traced(lambda: aws.send_message(sqs.client, QueueUrl=QUEUE, MessageBody="job"))
    assert set(sqs.params[0]["MessageAttributes"]) == {"traceparent", "baggage"}
    assert_carrier(carrier_of(sqs.params[0]["MessageAttributes"]), sent)


def _attributes(n: int) -> dict[str, Any]:
    return {f"a{i}": {"DataType": "String", "StringValue": str(i)} for i in range(n)}


def test_send_message_with_eight_attributes_fills_the_ten(stubbed: Callable[[str], Stubbed]) -> None:
    sqs = stubbed("sqs")
    sqs.respond("send_message", {"MessageId": "m-1"})
    sent = traced(
        lambda: aws.send_message(sqs.client, QueueUrl=QUEUE, MessageBody="job", MessageAttributes=_attributes(8))
    )
    assert len(sqs.params[0]["MessageAttributes"]) == 10
    assert_carrier(carrier_of(sqs.params[0]["MessageAttributes"]), sent)
    assert dropped_counts() == {}


def test_send_message_with_nine_attributes_goes_without(stubbed: Callable[[str], Stubbed]) -> None:
    sqs = stubbed("sqs")
    response = sqs.respond("send_message", {"MessageId": "m-1"})
    given = {"QueueUrl": QUEUE, "MessageBody": "job", "MessageAttributes": _attributes(9)}
    sent = traced(lambda: aws.send_message(sqs.client, **given))
    assert sent.result is response
    assert sqs.params == [given]
    assert dropped_counts() == {NOT_SENT: 1}


def test_send_message_batch_writes_each_entry(events: list[Any], stubbed: Callable[[str], Stubbed]) -> None:
    sqs = stubbed("sqs")
    response = sqs.respond(
        "send_message_batch",
        {
            "Successful": [{"Id": str(i), "MessageId": f"m-{i}", "MD5OfMessageBody": "x"} for i in range(3)],
            "Failed": [],
        },
    )
    entries = [
        {"Id": "0", "MessageBody": "one"},
        {"Id": "1", "MessageBody": "two", "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": "a"}}},
        {"Id": "2", "MessageBody": "full", "MessageAttributes": _attributes(9)},
    ]
    before = copy.deepcopy(entries)
    sent = traced(lambda: aws.send_message_batch(sqs.client, QueueUrl=QUEUE, Entries=entries))

    assert sent.result is response
    assert entries == before
    written = sqs.params[0]["Entries"]
    assert [e["MessageBody"] for e in written] == ["one", "two", "full"]
    assert set(written[0]["MessageAttributes"]) == {"traceparent", "baggage"}
    assert set(written[1]["MessageAttributes"]) == {"tenant", "traceparent", "baggage"}
    assert written[2] == before[2]
    for entry in written[:2]:
        assert_carrier(carrier_of(entry["MessageAttributes"]), sent)
    assert json.loads(sqs.requests[0]["body"])["Entries"] == written
    assert dropped_counts() == {NOT_SENT: 1}

    records = [sqs_record(entry.get("MessageAttributes", {})) for entry in written]
    assert_continues(events, receive(events, {"Records": records}), sent)


# -- SNS ----------------------------------------------------------------------------------------


def test_publish_adds_string_attributes(events: list[Any], stubbed: Callable[[str], Stubbed]) -> None:
    sns = stubbed("sns")
    response = sns.respond("publish", {"MessageId": "m-1"})
    given = {
        "TopicArn": TOPIC,
        "Message": "job",
        "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": "acme"}},
    }
    before = copy.deepcopy(given)
    sent = traced(lambda: aws.publish(sns.client, **given))

    assert sent.result is response
    assert given == before
    attributes = sns.params[0]["MessageAttributes"]
    assert set(attributes) == {"tenant", "traceparent", "baggage"}
    assert_carrier(carrier_of(attributes), sent)
    assert sns_attributes(sns.requests[0]["body"]) == attributes
    assert dropped_counts() == {}

    assert_continues(events, receive(events, {"Records": [sns_record(attributes)]}), sent)
    # The same message delivered to an SQS queue subscribed without raw delivery.
    envelope = sqs_record({}, body=json.dumps(sns_message(attributes)))
    assert_continues(events, receive(events, {"Records": [envelope]}), sent)


def test_publish_with_nine_attributes_goes_without(stubbed: Callable[[str], Stubbed]) -> None:
    sns = stubbed("sns")
    response = sns.respond("publish", {"MessageId": "m-1"})
    given = {"TopicArn": TOPIC, "Message": "job", "MessageAttributes": _attributes(9)}
    sent = traced(lambda: aws.publish(sns.client, **given))
    assert sent.result is response
    assert sns.params == [given]
    assert dropped_counts() == {NOT_SENT: 1}


def test_publish_batch_writes_each_entry(events: list[Any], stubbed: Callable[[str], Stubbed]) -> None:
    sns = stubbed("sns")
    response = sns.respond("publish_batch", {"Successful": [{"Id": "0"}, {"Id": "1"}], "Failed": []})
    entries = [
        {"Id": "0", "Message": "one"},
        {"Id": "1", "Message": "two", "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": "a"}}},
    ]
    before = copy.deepcopy(entries)
    sent = traced(lambda: aws.publish_batch(sns.client, TopicArn=TOPIC, PublishBatchRequestEntries=entries))

    assert sent.result is response
    assert entries == before
    written = sns.params[0]["PublishBatchRequestEntries"]
    assert set(written[0]["MessageAttributes"]) == {"traceparent", "baggage"}
    assert set(written[1]["MessageAttributes"]) == {"tenant", "traceparent", "baggage"}
    body = sns.requests[0]["body"]
    for n, entry in enumerate(written, 1):
        assert_carrier(carrier_of(entry["MessageAttributes"]), sent)
        assert sns_attributes(body, f"PublishBatchRequestEntries.member.{n}.") == entry["MessageAttributes"]
    assert dropped_counts() == {}

    records = [sns_record(entry["MessageAttributes"]) for entry in written]
    assert_continues(events, receive(events, {"Records": records}), sent)


# -- Lambda -------------------------------------------------------------------------------------


def test_invoke_puts_the_carrier_in_the_client_context(events: list[Any], stubbed: Callable[[str], Stubbed]) -> None:
    lam = stubbed("lambda")
    response = lam.respond("invoke", {"StatusCode": 200})
    sent = traced(lambda: aws.invoke(lam.client, FunctionName="worker", Payload=b'{"job": 1}'))

    assert sent.result is response
    [params] = lam.params
    assert params["Payload"] == b'{"job": 1}'
    assert lam.requests[0]["body"] == b'{"job": 1}'
    header = lam.requests[0]["headers"]["X-Amz-Client-Context"]
    assert header == params["ClientContext"]
    assert len(header) <= 3583
    context = decoded_client_context(header)
    assert set(context) == {"custom", "w3c"}
    assert context["custom"] == context["w3c"]
    assert set(context["w3c"]) == {"traceparent", "baggage"}
    assert_carrier(context["w3c"], sent)
    assert dropped_counts() == {}

    payload = json.loads(params["Payload"])
    assert_continues(events, receive(events, payload, W3CContext(context["w3c"])), sent)
    assert_continues(events, receive(events, payload, ClientContextContext(context)), sent)


def test_invoke_merges_a_given_client_context(events: list[Any], stubbed: Callable[[str], Stubbed]) -> None:
    lam = stubbed("lambda")
    lam.respond("invoke", {"StatusCode": 200})
    given = {"custom": {"app": "mobile", "build": "7"}, "env": {"locale": "fr"}, "client": {"installation_id": "i"}}
    encoded = encoded_client_context(given)
    sent = traced(
        lambda: aws.invoke(lam.client, FunctionName="worker", InvocationType="RequestResponse", ClientContext=encoded)
    )
    context = decoded_client_context(lam.params[0]["ClientContext"])
    assert context["env"] == {"locale": "fr"}
    assert context["client"] == {"installation_id": "i"}
    assert {k: context["custom"][k] for k in ("app", "build")} == {"app": "mobile", "build": "7"}
    assert_carrier(context["custom"], sent)
    assert_carrier(context["w3c"], sent)
    assert dropped_counts() == {}

    assert_continues(events, receive(events, {}, ClientContextContext(context)), sent)


def test_invoke_with_a_client_context_too_large_goes_without(stubbed: Callable[[str], Stubbed]) -> None:
    lam = stubbed("lambda")
    response = lam.respond("invoke", {"StatusCode": 200})
    encoded = encoded_client_context({"custom": {"pad": "x" * 2400}})
    assert len(encoded) < 3583
    given = {"FunctionName": "worker", "ClientContext": encoded}
    sent = traced(lambda: aws.invoke(lam.client, **given))
    assert sent.result is response
    assert lam.params == [given]
    assert lam.requests[0]["headers"]["X-Amz-Client-Context"] == encoded
    assert dropped_counts() == {NOT_SENT: 1}


@pytest.mark.parametrize(
    "client_context",
    ["not base64!!", base64.b64encode(b"hello").decode(), base64.b64encode(b"[1, 2]").decode(), "e30"],
    ids=["not-base64", "not-json", "not-an-object", "unpadded"],
)
def test_invoke_with_an_unreadable_client_context_passes_it_through(
    stubbed: Callable[[str], Stubbed], client_context: str
) -> None:
    lam = stubbed("lambda")
    response = lam.respond("invoke", {"StatusCode": 200})
    given = {"FunctionName": "worker", "Payload": b"{}", "ClientContext": client_context}
    sent = traced(lambda: aws.invoke(lam.client, **given))
    assert sent.result is response
    assert lam.params == [given]
    assert dropped_counts() == {NOT_SENT: 1}


@pytest.mark.parametrize(
    "payload", [b'{"job": 1, "name": "\xc3\xa9"}', '{"job": 1, "name": "é"}'], ids=["bytes", "str"]
)
def test_invoke_event_puts_the_carrier_in_the_payload(
    events: list[Any], stubbed: Callable[[str], Stubbed], payload: bytes | str
) -> None:
    lam = stubbed("lambda")
    response = lam.respond("invoke", {"StatusCode": 202})
    sent = traced(lambda: aws.invoke(lam.client, FunctionName="worker", InvocationType="Event", Payload=payload))
    assert sent.result is response
    [params] = lam.params
    assert "ClientContext" not in params
    assert "X-Amz-Client-Context" not in lam.requests[0]["headers"]
    document = json.loads(lam.requests[0]["body"])
    assert {k: document[k] for k in ("job", "name")} == {"job": 1, "name": "é"}
    assert set(document) == {"job", "name", "_posthog"}
    assert_carrier(document["_posthog"], sent)
    assert dropped_counts() == {}

    assert_continues(events, receive(events, document, LambdaContext()), sent)


def test_invoke_event_leaves_a_given_client_context_alone(stubbed: Callable[[str], Stubbed]) -> None:
    lam = stubbed("lambda")
    lam.respond("invoke", {"StatusCode": 202})
    encoded = encoded_client_context({"custom": {"app": "mobile"}})
    sent = traced(
        lambda: aws.invoke(lam.client, FunctionName="w", InvocationType="Event", Payload=b"{}", ClientContext=encoded)
    )
    assert lam.params[0]["ClientContext"] == encoded
    assert_carrier(json.loads(lam.params[0]["Payload"])["_posthog"], sent)


@pytest.mark.parametrize(
    "payload",
    [b"[1, 2]", b"not json", "42", b'"a string"', b"null"],
    ids=["array", "not-json", "number", "string", "null"],
)
def test_invoke_event_with_a_payload_that_is_not_an_object_goes_without(
    stubbed: Callable[[str], Stubbed], payload: bytes | str
) -> None:
    lam = stubbed("lambda")
    response = lam.respond("invoke", {"StatusCode": 202})
    given = {"FunctionName": "worker", "InvocationType": "Event", "Payload": payload}
    sent = traced(lambda: aws.invoke(lam.client, **given))
    assert sent.result is response
    assert lam.params == [given]
    assert dropped_counts() == {NOT_SENT: 1}


def test_invoke_event_with_a_stream_payload_goes_without(stubbed: Callable[[str], Stubbed]) -> None:
    lam = stubbed("lambda")
    lam.respond("invoke", {"StatusCode": 202})
    stream = io.BytesIO(b'{"job": 1}')
    traced(lambda: aws.invoke(lam.client, FunctionName="worker", InvocationType="Event", Payload=stream))
    assert lam.requests[0]["body"] is stream
    assert stream.read() == b'{"job": 1}'  # not consumed
    assert dropped_counts() == {NOT_SENT: 1}


# -- Step Functions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "response"),
    [
        ("start_execution", {"executionArn": f"{MACHINE}:x", "startDate": WHEN}),
        (
            "start_sync_execution",
            {"executionArn": f"{MACHINE}:x", "startDate": WHEN, "stopDate": WHEN, "status": "SUCCEEDED"},
        ),
    ],
)
@pytest.mark.parametrize("given", ['{"order": 17, "items": [1, 2]}', None], ids=["input", "no-input"])
def test_start_execution_puts_the_carrier_in_the_input(
    events: list[Any],
    stubbed: Callable[[str], Stubbed],
    method: str,
    response: dict[str, Any],
    given: str | None,
) -> None:
    sfn = stubbed("stepfunctions")
    answer = sfn.respond(method, response)
    kwargs: dict[str, Any] = {"stateMachineArn": MACHINE, "name": "run-1"}
    if given is not None:
        kwargs["input"] = given
    before = dict(kwargs)
    sent = traced(lambda: getattr(aws, method)(sfn.client, **kwargs))

    assert sent.result is answer
    assert kwargs == before
    document = json.loads(json.loads(sfn.requests[0]["body"])["input"])
    expected = {} if given is None else json.loads(given)
    assert {k: v for k, v in document.items() if k != "_posthog"} == expected
    assert_carrier(document["_posthog"], sent)
    assert dropped_counts() == {}

    # A Lambda task given the state's input (the default payload).
    assert_continues(events, receive(events, document, LambdaContext()), sent)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        # Re-encoding would turn 1e400 into Infinity (not JSON) and round the long number.
        ('{"big": 1e400, "exact": 1.00000000000000000001 }', '{"big": 1e400, "exact": 1.00000000000000000001,'),
        ("{ }", "{"),
        ('\n  {"a": {"b": []}}\n', '\n  {"a": {"b": []},'),
    ],
    ids=["numbers", "empty", "whitespace"],
)
def test_start_execution_keeps_the_input_as_written(stubbed: Callable[[str], Stubbed], given: str, kept: str) -> None:
    sfn = stubbed("stepfunctions")
    sfn.respond("start_execution", {"executionArn": f"{MACHINE}:x", "startDate": WHEN})
    sent = traced(lambda: aws.start_execution(sfn.client, stateMachineArn=MACHINE, input=given))
    written = json.loads(sfn.requests[0]["body"])["input"]
    assert written.startswith(kept)
    assert written.endswith("}")
    assert_carrier(json.loads(written)["_posthog"], sent)
    assert dropped_counts() == {}


def test_start_execution_replaces_a_carrier_already_in_the_input(stubbed: Callable[[str], Stubbed]) -> None:
    sfn = stubbed("stepfunctions")
    sfn.respond("start_execution", {"executionArn": f"{MACHINE}:x", "startDate": WHEN})
    given = json.dumps({"q": 1, "_posthog": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}})
    sent = traced(lambda: aws.start_execution(sfn.client, stateMachineArn=MACHINE, input=given))
    written = json.loads(sfn.requests[0]["body"])["input"]
    assert written.count('"_posthog"') == 1
    assert_carrier(json.loads(written)["_posthog"], sent)


@pytest.mark.parametrize("given", ["[1, 2]", "not json", '"text"'])
def test_start_execution_with_an_input_that_is_not_an_object_goes_without(
    stubbed: Callable[[str], Stubbed], given: str
) -> None:
    sfn = stubbed("stepfunctions")
    answer = sfn.respond("start_execution", {"executionArn": f"{MACHINE}:x", "startDate": WHEN})
    kwargs = {"stateMachineArn": MACHINE, "input": given}
    sent = traced(lambda: aws.start_execution(sfn.client, **kwargs))
    assert sent.result is answer
    assert sfn.params == [kwargs]
    assert dropped_counts() == {NOT_SENT: 1}


# -- every helper alike -------------------------------------------------------------------------

CALLS: dict[str, tuple[str, Callable[..., Any], dict[str, Any], dict[str, Any], str, str]] = {
    # name: (service, helper, kwargs, response, error code, client method)
    "send_message": (
        "sqs",
        aws.send_message,
        {"QueueUrl": QUEUE, "MessageBody": "job", "MessageAttributes": _attributes(2)},
        {"MessageId": "m-1"},
        "QueueDoesNotExist",
        "send_message",
    ),
    "send_message_batch": (
        "sqs",
        aws.send_message_batch,
        {"QueueUrl": QUEUE, "Entries": [{"Id": "0", "MessageBody": "job"}]},
        {"Successful": [], "Failed": []},
        "TooManyEntriesInBatchRequest",
        "send_message_batch",
    ),
    "publish": (
        "sns",
        aws.publish,
        {"TopicArn": TOPIC, "Message": "job"},
        {"MessageId": "m-1"},
        "NotFound",
        "publish",
    ),
    "publish_batch": (
        "sns",
        aws.publish_batch,
        {"TopicArn": TOPIC, "PublishBatchRequestEntries": [{"Id": "0", "Message": "job"}]},
        {"Successful": [], "Failed": []},
        "NotFound",
        "publish_batch",
    ),
    "invoke": (
        "lambda",
        aws.invoke,
        {"FunctionName": "worker", "Payload": b"{}", "ClientContext": encoded_client_context({"custom": {"a": 1}})},
        {"StatusCode": 200},
        "ResourceNotFoundException",
        "invoke",
    ),
    "invoke_event": (
        "lambda",
        aws.invoke,
        {"FunctionName": "worker", "InvocationType": "Event", "Payload": b'{"job": 1}'},
        {"StatusCode": 202},
        "TooManyRequestsException",
        "invoke",
    ),
    "start_execution": (
        "stepfunctions",
        aws.start_execution,
        {"stateMachineArn": MACHINE, "input": '{"order": 17}'},
        {"executionArn": f"{MACHINE}:x", "startDate": WHEN},
        "StateMachineDoesNotExist",
        "start_execution",
    ),
    "start_sync_execution": (
        "stepfunctions",
        aws.start_sync_execution,
        {"stateMachineArn": MACHINE},
        {"executionArn": f"{MACHINE}:x", "startDate": WHEN, "stopDate": WHEN, "status": "SUCCEEDED"},
        "StateMachineDoesNotExist",
        "start_sync_execution",
    ),
}


@pytest.mark.parametrize("name", CALLS)
def test_outside_a_trace_the_request_goes_as_given(
    events: list[Any], stubbed: Callable[[str], Stubbed], name: str
) -> None:
    service, helper, kwargs, response, _, method = CALLS[name]
    client = stubbed(service)
    answer = client.respond(method, copy.deepcopy(response))
    given = copy.deepcopy(kwargs)
    assert helper(client.client, **given) is answer
    assert client.params == [kwargs]
    assert given == kwargs
    assert dropped_counts() == {}
    assert events == []


@pytest.mark.parametrize("name", CALLS)
def test_a_client_error_passes_through_unchanged(
    events: list[Any], stubbed: Callable[[str], Stubbed], name: str
) -> None:
    service, helper, kwargs, _, code, method = CALLS[name]
    client = stubbed(service)
    client.stubber.add_client_error(method, service_error_code=code, service_message="no", http_status_code=400)
    client.stubber.add_client_error(method, service_error_code=code, service_message="no", http_status_code=400)

    with pytest.raises(ClientError) as outside:
        helper(client.client, **copy.deepcopy(kwargs))
    assert outside.value.response["Error"]["Code"] == code

    raised: list[BaseException] = []

    @posthog_traced(name="a")
    def a(event: Any, context: Any) -> None:
        with span("send"):
            try:
                helper(client.client, **copy.deepcopy(kwargs))
            except ClientError as exc:
                raised.append(exc)
                raise

    with pytest.raises(ClientError) as inside:
        a({}, None)
    assert inside.value is raised[0]
    assert inside.value.response["Error"] == {"Code": code, "Message": "no"}
    assert one(events, "$ai_span", "send")["properties"]["$ai_is_error"] is True
    assert code in one(events, "$ai_trace")["properties"]["$ai_error"]
    assert dropped_counts() == {}
    assert len(client.params) == 2


@pytest.mark.parametrize("name", CALLS)
def test_inside_a_trace_every_helper_writes_a_carrier(stubbed: Callable[[str], Stubbed], name: str) -> None:
    service, helper, kwargs, response, _, method = CALLS[name]
    client = stubbed(service)
    answer = client.respond(method, copy.deepcopy(response))
    given = copy.deepcopy(kwargs)
    sent = traced(lambda: helper(client.client, **given))
    assert sent.result is answer
    assert given == kwargs
    [params] = client.params
    assert params != kwargs
    text = json.dumps(params, default=lambda b: b.decode() if isinstance(b, bytes) else str(b))
    if "ClientContext" in params and params.get("InvocationType") != "Event":
        text = json.dumps(decoded_client_context(params["ClientContext"]))
    assert sent.trace_id in text
    assert sent.span_id in text
    assert dropped_counts() == {}
