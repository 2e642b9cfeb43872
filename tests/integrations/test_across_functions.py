"""End to end: one trace across two functions, each in the local Lambda environment with the built
layer and its extension. Function A (traced) sends with boto3, through ``posthog_lambda.aws``'s
one-line helpers, to moto standing in for SQS, SNS and Step Functions, or to the local
environment's Lambda Invoke API for a direct invoke; the test hands what A sent to function B as
Lambda would (an SQS or SNS event, a Step Functions task's input); the local PostHog then holds
one trace with B's spans under A's sending span."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from posthog_lambda.local import InvokeApi, LambdaEnvironment
from posthog_lambda.local.emulator.sandbox import link_distributions
from posthog_lambda.testing import trace_tree_problems
from tests.e2e.conftest import Deployment
from tests.e2e.test_delivery import from_function
from tests.integrations.conftest import with_dependencies

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}

SENDER = textwrap.dedent(
    """
    import json
    import os

    import boto3
    from posthog_lambda import aws, posthog_traced, span

    @posthog_traced(distinct_id="user-7", session_id="session-7")
    def handler(event, context):
        with span("enqueue"):
            via = event["via"]
            if via == "sqs":
                aws.send_message(boto3.client("sqs"), QueueUrl=event["queue"], MessageBody="summarise")
            elif via == "sqs-batch":
                entries = [{"Id": str(i), "MessageBody": f"part {i}"} for i in range(2)]
                aws.send_message_batch(boto3.client("sqs"), QueueUrl=event["queue"], Entries=entries)
            elif via == "sns":
                aws.publish(boto3.client("sns"), TopicArn=event["topic"], Message="summarise")
            elif via == "stepfunctions":
                aws.start_execution(
                    boto3.client("stepfunctions"),
                    stateMachineArn=event["machine"],
                    input=json.dumps({"question": "what is up?"}),
                )
            elif via == "invoke":
                client = boto3.client("lambda", endpoint_url=os.environ["INVOKE_API"])
                answer = aws.invoke(client, FunctionName="worker", Payload=json.dumps({"question": "hi"}))
                return json.loads(answer["Payload"].read())
        return "sent"
    """
)

WORKER = textwrap.dedent(
    """
    from posthog_lambda import generation, posthog_traced, span

    @posthog_traced
    def handler(event, context):
        with span("work"):
            with generation("answer", model="gpt-4o-mini", provider="openai") as g:
                g.update(output="done", input_tokens=12, output_tokens=3)
        return "worked"
    """
)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        while _clients:
            _clients.popitem()[1].close()
        server.stop()


_clients: dict[tuple[str, str], Any] = {}
"""The test's own clients of moto, one per service: closed with the server (an unclosed one's
socket would be a ResourceWarning in whichever later test the garbage collector runs)."""


def client(service: str, moto_url: str) -> Any:
    key = (service, moto_url)
    if key not in _clients:
        _clients[key] = boto3.client(service, endpoint_url=moto_url, **CREDENTIALS)  # type: ignore[call-overload]
    return _clients[key]


class Functions:
    """The sender and the worker, both with the layer, boto3 bundled as ``pip install --target``
    would, sending to the same local PostHog."""

    def __init__(self, deployment: Deployment, moto_url: str) -> None:
        self.deployment = deployment
        deployment.code(SENDER)
        link_distributions(deployment.function, with_dependencies(["boto3"]))
        self.worker_dir = deployment.root / "worker"
        self.worker_dir.mkdir()
        (self.worker_dir / "app.py").write_text(WORKER)
        self.env = {
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }

    def sender(self, **env: str) -> LambdaEnvironment:
        return self.deployment.environment(timeout_s=10, **self.env, **env)

    def worker(self, **env: str) -> LambdaEnvironment:
        d = self.deployment
        variables = {
            **env,
            "POSTHOG_API_KEY": "phc_local",
            "POSTHOG_HOST": d.posthog.url,
            "POSTHOG_LAMBDA_FLUSH": "end",
            "POSTHOG_LAMBDA_SOCKET": str(d.root / "worker.sock"),
            "POSTHOG_LAMBDA_SPOOL_DIR": str(d.root / "worker-spool"),
        }
        return LambdaEnvironment(
            self.worker_dir,
            "app.handler",
            layer_dir=d.layer,
            env=variables,
            function_name="worker",
            timeout_s=10,
            share=[d.root],
        )

    def events(self, count: int) -> list[dict[str, Any]]:
        posthog = self.deployment.posthog
        posthog.wait_for_events(count, timeout=15, predicate=from_function)
        events = [e.event for e in posthog.events if from_function(e)]
        assert len(events) == count, [(e["event"], e["properties"].get("$ai_span_name")) for e in events]
        return events


@pytest.fixture
def functions(deployment: Deployment, moto_url: str) -> Functions:
    return Functions(deployment, moto_url)


def sqs_event(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """A received SQS message as Lambda's event source mapping hands it to a function."""
    attributes = {
        name: {
            "stringValue": value.get("StringValue"),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value["DataType"],
        }
        for name, value in message.get("MessageAttributes", {}).items()
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def queue(moto_url: str, name: str) -> tuple[str, str]:
    sqs = client("sqs", moto_url)
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def receive(moto_url: str, url: str, count: int) -> list[dict[str, Any]]:
    sqs = client("sqs", moto_url)
    messages = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
    ).get("Messages", [])
    assert len(messages) == count, messages
    return list(messages)


def check_one_trace(events: list[dict[str, Any]], worker_roots: int = 1) -> None:
    """A's trace and span, and under A's sending span B's root(s), each holding B's spans."""
    assert not trace_tree_problems(events), trace_tree_problems(events)
    traces = [e for e in events if e["event"] == "$ai_trace"]
    assert len(traces) == 1, [t["properties"]["$ai_span_name"] for t in traces]  # A's alone
    trace_id = traces[0]["properties"]["$ai_trace_id"]
    assert {e["properties"]["$ai_trace_id"] for e in events} == {trace_id}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_name.setdefault(str(event["properties"].get("$ai_span_name")), []).append(event["properties"])
    (enqueue,) = by_name["enqueue"]
    roots = by_name["app.handler"] if "app.handler" in by_name else by_name["handler"]
    roots = [r for r in roots if r.get("lambda_root")]
    assert len(roots) == worker_roots
    for root in roots:
        assert root["$ai_parent_id"] == enqueue["$ai_span_id"]
        assert root["lambda_function_name"] == "worker"
        assert root["lambda_billed_duration_ms"] > 0  # Lambda's figures, on the root span
    root_ids = {r["$ai_span_id"] for r in roots}
    assert {w["$ai_parent_id"] for w in by_name["work"]} <= root_ids
    assert len(by_name["work"]) == worker_roots
    work_ids = {w["$ai_span_id"] for w in by_name["work"]}
    assert {g["$ai_parent_id"] for g in by_name["answer"]} <= work_ids
    for event in events:
        assert event["distinct_id"] == "user-7"
        assert event["properties"]["$ai_session_id"] == "session-7"


def test_sqs_message_continues_the_trace(functions: Functions, moto_url: str) -> None:
    url, arn = queue(moto_url, "work")
    with functions.sender() as sender:
        sent = sender.invoke({"via": "sqs", "queue": url})
    assert sent.status == "success", sent.error
    (message,) = receive(moto_url, url, 1)
    with functions.worker() as worker:
        done = worker.invoke({"Records": [sqs_event(message, arn)]})
    assert done.status == "success", done.error
    assert done.payload == "worked"
    check_one_trace(functions.events(2 + 3))


def test_sqs_batch_of_one_trace_continues_it(functions: Functions, moto_url: str) -> None:
    url, arn = queue(moto_url, "batch")
    with functions.sender() as sender:
        assert sender.invoke({"via": "sqs-batch", "queue": url}).status == "success"
    messages = receive(moto_url, url, 2)
    with functions.worker() as worker:
        assert worker.invoke({"Records": [sqs_event(m, arn) for m in messages]}).status == "success"
    check_one_trace(functions.events(2 + 3))


def test_sqs_batch_of_two_traces_is_a_trace_of_its_own(functions: Functions, moto_url: str) -> None:
    url, arn = queue(moto_url, "mixed")
    with functions.sender() as sender:
        for _ in range(2):
            assert sender.invoke({"via": "sqs", "queue": url}).status == "success"
    messages = receive(moto_url, url, 2)
    with functions.worker() as worker:
        assert worker.invoke({"Records": [sqs_event(m, arn) for m in messages]}).status == "success"
    events = functions.events(2 * 2 + 3)
    assert not trace_tree_problems(events)
    traces = [e["properties"] for e in events if e["event"] == "$ai_trace"]
    senders = [t["$ai_trace_id"] for t in traces if t["lambda_function_name"] != "worker"]
    (own,) = [t for t in traces if t["lambda_function_name"] == "worker"]
    assert own["$ai_trace_id"] not in senders
    assert sorted(own["linked_trace_ids"]) == sorted(senders)
    work = [e["properties"] for e in events if e["properties"].get("$ai_span_name") == "work"]
    assert [w["$ai_trace_id"] for w in work] == [own["$ai_trace_id"]]


def test_sns_message_through_sqs_continues_the_trace(functions: Functions, moto_url: str) -> None:
    url, arn = queue(moto_url, "from-topic")
    sns = client("sns", moto_url)
    topic = sns.create_topic(Name="work")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)  # not raw: the SNS envelope is the body
    with functions.sender() as sender:
        assert sender.invoke({"via": "sns", "topic": topic}).status == "success"
    (message,) = receive(moto_url, url, 1)
    assert json.loads(message["Body"])["Type"] == "Notification"
    with functions.worker() as worker:
        assert worker.invoke({"Records": [sqs_event(message, arn)]}).status == "success"
    check_one_trace(functions.events(2 + 3))


def test_step_functions_input_continues_the_trace(functions: Functions, moto_url: str) -> None:
    sfn = client("stepfunctions", moto_url)
    definition = {"StartAt": "Work", "States": {"Work": {"Type": "Pass", "End": True}}}
    machine = sfn.create_state_machine(
        name="agent", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/agent"
    )["stateMachineArn"]
    with functions.sender() as sender:
        assert sender.invoke({"via": "stepfunctions", "machine": machine}).status == "success"
    (execution,) = sfn.list_executions(stateMachineArn=machine)["executions"]
    task_input = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert task_input["question"] == "what is up?"
    # A Lambda task whose payload is the state's input ("Payload.$": "$", the default).
    with functions.worker() as worker:
        assert worker.invoke(task_input).status == "success"
    check_one_trace(functions.events(2 + 3))


def test_direct_invoke_continues_the_trace(functions: Functions) -> None:
    with functions.worker() as worker, InvokeApi({"worker": worker}) as api:
        with functions.sender(INVOKE_API=api.url) as sender:
            sent = sender.invoke({"via": "invoke"})
        assert sent.status == "success", sent.error
        assert sent.payload == "worked"
    check_one_trace(functions.events(2 + 3))


def test_hostile_carrier_starts_a_fresh_trace(functions: Functions) -> None:
    hostile = {
        "headers": {"traceparent": "00-" + "z" * 32 + "-" + "0" * 16 + "-01", "baggage": "posthog.trace_id=%zz"},
        "_posthog": {"traceparent": ["not", "a", "string"]},
    }
    with functions.worker(POSTHOG_LAMBDA_DEBUG="true") as worker:
        done = worker.invoke(hostile)
        assert done.status == "success", done.error
        assert done.payload == "worked"
    events = functions.events(3)
    assert not trace_tree_problems(events)
    (trace,) = [e["properties"] for e in events if e["event"] == "$ai_trace"]
    assert not any(e["properties"].get("lambda_root") for e in events)
    assert {e["properties"]["$ai_trace_id"] for e in events} == {trace["$ai_trace_id"]}
    logs = "\n".join(done.logs)
    assert "dropped 1 (trace_context_invalid, 1 so far): baggage value has a bad percent escape" in logs, logs
