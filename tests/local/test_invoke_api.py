"""Lambda's Invoke API in front of local environments (``InvokeApi``), called with a real boto3
``lambda`` client, and the client context that ``invoke`` (and so the API) hands the runtime:
real environments running the real awslambdaric, real HTTP.

Handlers that must be caught in the middle of an invocation wait at a gate: they connect to a
socket the test listens on and read one byte, which the test sends when it has checked what it
wanted, so nothing here waits by sleeping."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from posthog_lambda.local import InvokeApi, LambdaEnvironment

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

    Connect = Callable[[InvokeApi], LambdaClient]

LMI = "lambda-managed-instances"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

APP = textwrap.dedent(
    """
    import base64, http.client, json, os, socket, time, urllib.parse

    def handler(event, context):
        client_context = context.client_context
        return {
            "event": event,
            "custom": client_context.custom if client_context else None,
            "env": client_context.env if client_context else None,
            "w3c": context.w3c() if hasattr(context, "w3c") else None,
        }

    def fail(event, context):
        raise ValueError("bad input: " + json.dumps(event))

    def slow(event, context):
        time.sleep(event["seconds"])
        return "late"

    def _pass_gate(port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.recv(1)

    def gated(event, context):
        _pass_gate(event["gate"])
        if "name" in event:
            with open("/tmp/" + event["name"], "w") as f:
                f.write(json.dumps(event))
        return {"passed": event.get("name"), "requestId": context.aws_request_id}

    def call(event, context):
        # One function invoking another as it would on AWS, over the Invoke API (with the standard
        # library: the runtime's import path has no boto3).
        api = urllib.parse.urlsplit(event["api"])
        connection = http.client.HTTPConnection(api.hostname, api.port, timeout=30)
        client_context = {"custom": {"caller": context.function_name}}
        connection.request(
            "POST",
            "/2015-03-31/functions/" + event["target"] + "/invocations",
            body=json.dumps(event["payload"]),
            headers={"X-Amz-Client-Context": base64.b64encode(json.dumps(client_context).encode()).decode()},
        )
        response = connection.getresponse()
        return {"status": response.status, "response": json.loads(response.read())}
    """
)


@pytest.fixture
def function_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


class Gate:
    """Where gated handlers wait: each connects, and goes on once it is sent a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(20)
        self.port = self._listener.getsockname()[1]

    def wait_for_caller(self) -> socket.socket:
        """The connection of the next handler to reach the gate (it is running, and waits)."""
        connection, _ = self._listener.accept()
        return connection

    def close(self) -> None:
        self._listener.close()


def release(connection: socket.socket) -> None:
    with connection:
        connection.sendall(b"x")


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.close()


@pytest.fixture
def connect() -> Iterator[Callable[[InvokeApi], LambdaClient]]:
    """Makes a boto3 ``lambda`` client for an API; each is closed at the test's end. Every test
    reads each response's ``Payload``, as callers must: an unread one keeps its connection
    checked out, and its socket meets the garbage collector still open, in whichever later test
    that is (a ResourceWarning, which ``filterwarnings = error`` makes that test's failure)."""
    clients: list[LambdaClient] = []

    def connect(api: InvokeApi) -> LambdaClient:
        # One attempt per call: a 5xx or 429 that botocore would retry in silence fails at once.
        client = boto3.client(
            "lambda",
            endpoint_url=api.url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(retries={"total_max_attempts": 1}),
        )
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def encoded(client_context: Any) -> str:
    return base64.b64encode(json.dumps(client_context).encode()).decode()


def request(api: InvokeApi, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request to the API with nothing but the standard library: status, headers, body."""
    host, port = api.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


# -- client context, straight to the environment ----------------------------------------------------


CLIENT_CONTEXT = {
    "custom": {"tenant": "acme", "attempt": 2},
    "env": {"locale": "en_GB"},
    "w3c": {"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
}


def test_invoke_hands_the_client_context_to_the_handler_on_demand(function_dir: Path) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env:
        given = env.invoke({"n": 1}, client_context=CLIENT_CONTEXT)
        without = env.invoke({"n": 2})
    assert given.status == "success"
    assert given.payload == {
        "event": {"n": 1},
        "custom": {"tenant": "acme", "attempt": 2},
        "env": {"locale": "en_GB"},
        "w3c": {"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
    }
    # The next invocation has none: a client context belongs to one invocation only.
    assert without.payload == {"event": {"n": 2}, "custom": None, "env": None, "w3c": {}}


def test_invoke_hands_the_client_context_to_a_managed_instances_worker(function_dir: Path) -> None:
    with LambdaEnvironment(function_dir, "app.handler", lifecycle=LMI, max_concurrency=2) as env:
        result = env.invoke({"n": 1}, client_context=CLIENT_CONTEXT)
    assert result.status == "success", result.error
    assert result.payload["custom"] == {"tenant": "acme", "attempt": 2}
    assert result.payload["env"] == {"locale": "en_GB"}
    assert result.payload["w3c"] == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}


def test_a_client_context_that_is_no_json_object_is_refused_before_anything_runs(function_dir: Path) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env:
        with pytest.raises(TypeError, match="client_context"):
            env.invoke({}, client_context=["not", "an", "object"])  # type: ignore[arg-type]
        assert env.pids() == {}
        assert env.invoke({}, client_context={"custom": {"k": "v"}}).payload["custom"] == {"k": "v"}


# -- the Invoke API ----------------------------------------------------------------------------------


def test_request_response_returns_the_functions_response(function_dir: Path, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        response = connect(api).invoke(FunctionName="echo", Payload=json.dumps({"question": "hi", "n": [1, 2]}))
        payload = json.loads(response["Payload"].read())
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    assert payload == {"event": {"question": "hi", "n": [1, 2]}, "custom": None, "env": None, "w3c": {}}


def test_an_empty_payload_is_a_null_event(function_dir: Path, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        response = connect(api).invoke(FunctionName="echo")
    assert json.loads(response["Payload"].read())["event"] is None


def test_the_client_context_reaches_the_handler_as_custom_and_w3c(function_dir: Path, connect: Connect) -> None:
    client_context = {"custom": {"user": "u1"}, "w3c": {"traceparent": TRACEPARENT}}
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        response = connect(api).invoke(FunctionName="echo", ClientContext=encoded(client_context), Payload=b"{}")
        payload = json.loads(response["Payload"].read())
    assert payload["custom"] == {"user": "u1"}
    assert payload["w3c"] == {"traceparent": TRACEPARENT}


def test_a_handler_that_raises_is_an_unhandled_function_error_with_the_error_as_payload(
    function_dir: Path, connect: Connect
) -> None:
    with LambdaEnvironment(function_dir, "app.fail") as env, InvokeApi({"fail": env}) as api:
        response = connect(api).invoke(FunctionName="fail", Payload=json.dumps({"x": 1}))
        payload = json.loads(response["Payload"].read())
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert payload["errorType"] == "ValueError"
    assert payload["errorMessage"] == 'bad input: {"x": 1}'
    assert payload["stackTrace"]


def test_a_timeout_is_an_unhandled_function_error_too(function_dir: Path, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.slow", timeout_s=0.5) as env, InvokeApi({"slow": env}) as api:
        response = connect(api).invoke(FunctionName="slow", Payload=json.dumps({"seconds": 5}))
        payload = json.loads(response["Payload"].read())
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert payload == {"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out after 0.50 seconds"}


def test_event_is_accepted_at_once_and_invoked_in_the_background(
    function_dir: Path, gate: Gate, connect: Connect
) -> None:
    with LambdaEnvironment(function_dir, "app.gated") as env, InvokeApi({"writer": env}) as api:
        event = {"gate": gate.port, "name": "event.json"}
        response = connect(api).invoke(FunctionName="writer", InvocationType="Event", Payload=json.dumps(event))
        assert response["StatusCode"] == 202
        assert response["Payload"].read() == b""
        # Answered while the handler is still to finish: it waits at the gate.
        handler = gate.wait_for_caller()
        assert not api.wait_for_events(timeout=0)
        assert not (env.tmp_dir / "event.json").exists()
        release(handler)
        assert api.wait_for_events(timeout=20)
        assert json.loads((env.tmp_dir / "event.json").read_text()) == event
    [(name, result)] = api.event_results
    assert name == "writer"
    assert result.status == "success"
    assert result.payload["passed"] == "event.json"


def test_invocations_of_one_on_demand_environment_take_turns(function_dir: Path, gate: Gate, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.gated") as env, InvokeApi({"writer": env}) as api:
        client = connect(api)
        accepted = client.invoke(
            FunctionName="writer", InvocationType="Event", Payload=json.dumps({"gate": gate.port, "name": "1"})
        )
        assert accepted["Payload"].read() == b""
        first = gate.wait_for_caller()
        # The second waits for the environment, which the first has, and is handed out after it.
        accepted = client.invoke(
            FunctionName="writer", InvocationType="Event", Payload=json.dumps({"gate": gate.port, "name": "2"})
        )
        assert accepted["Payload"].read() == b""
        release(first)
        release(gate.wait_for_caller())
        assert api.wait_for_events(timeout=20)
    results = [result for _, result in api.event_results]
    assert [r.status for r in results] == ["success", "success"]
    assert [r.payload["passed"] for r in results] == ["1", "2"]
    assert [r.payload["requestId"] for r in results] == [r.request_id for r in results]


def test_a_managed_instances_environment_takes_invocations_at_once(
    function_dir: Path, gate: Gate, connect: Connect
) -> None:
    with (
        LambdaEnvironment(function_dir, "app.gated", lifecycle=LMI, max_concurrency=2) as env,
        InvokeApi({"gated": env}) as api,
    ):
        env.init()
        assert env.wait_for_workers()
        client = connect(api)
        with ThreadPoolExecutor(max_workers=2) as pool:
            calls = [
                pool.submit(client.invoke, FunctionName="gated", Payload=json.dumps({"gate": gate.port}))
                for _ in range(2)
            ]
            # Both handlers are running at the same time: each waits at the gate for the other.
            handlers = [gate.wait_for_caller(), gate.wait_for_caller()]
            for handler in handlers:
                release(handler)
            responses = [call.result(timeout=20) for call in calls]
    payloads = [json.loads(r["Payload"].read()) for r in responses]
    assert all("FunctionError" not in r for r in responses)
    assert len({p["requestId"] for p in payloads}) == 2


def test_managed_instances_with_no_worker_free_are_throttled(function_dir: Path, gate: Gate, connect: Connect) -> None:
    with (
        LambdaEnvironment(function_dir, "app.gated", lifecycle=LMI, max_concurrency=1) as env,
        InvokeApi({"gated": env}) as api,
    ):
        env.init()
        assert env.wait_for_workers()
        client = connect(api)
        with ThreadPoolExecutor(max_workers=1) as pool:
            busy = pool.submit(client.invoke, FunctionName="gated", Payload=json.dumps({"gate": gate.port}))
            handler = gate.wait_for_caller()
            with pytest.raises(client.exceptions.TooManyRequestsException) as throttled:
                client.invoke(FunctionName="gated", Payload=b"{}")
            release(handler)
            served = busy.result(timeout=20)
    assert "FunctionError" not in served
    assert json.loads(served["Payload"].read())["passed"] is None
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert throttled.value.response["Reason"] == "ConcurrentInvocationLimitExceeded"


def test_dry_run_answers_204_and_invokes_nothing(function_dir: Path, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        response = connect(api).invoke(FunctionName="echo", InvocationType="DryRun", Payload=b"{}")
        assert response["StatusCode"] == 204
        assert response["Payload"].read() == b""
        assert env.pids() == {}
        assert env.timeline == []


@pytest.mark.parametrize(
    "client_context",
    [
        "not base64!",
        base64.b64encode(b"not json").decode(),
        encoded(["a", "list"]),
        encoded({"custom": {"padding": "x" * 3000}}),
    ],
    ids=["not-base64", "not-json", "not-an-object", "too-long"],
)
def test_a_bad_client_context_is_invalid_request_content(
    function_dir: Path, client_context: str, connect: Connect
) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        client = connect(api)
        with pytest.raises(client.exceptions.InvalidRequestContentException) as refused:
            client.invoke(FunctionName="echo", ClientContext=client_context, Payload=b"{}")
        assert env.pids() == {}
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["Type"] == "User"


def test_a_client_context_of_3583_bytes_is_taken(function_dir: Path, connect: Connect) -> None:
    base = len(encoded({"custom": {"padding": ""}}))
    # Base64 grows by 4 characters for each 3 bytes: pad to the largest size not above the limit.
    padding = "x" * ((3583 - base) // 4 * 3)
    client_context = encoded({"custom": {"padding": padding}})
    assert 3580 <= len(client_context) <= 3583
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        response = connect(api).invoke(FunctionName="echo", ClientContext=client_context, Payload=b"{}")
    assert json.loads(response["Payload"].read())["custom"] == {"padding": padding}


def test_a_payload_that_is_not_json_is_invalid_request_content(function_dir: Path, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        client = connect(api)
        with pytest.raises(client.exceptions.InvalidRequestContentException, match="Could not parse"):
            client.invoke(FunctionName="echo", Payload=b"{not json")


def test_a_payload_above_the_limit_is_request_too_large(function_dir: Path, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        client = connect(api)
        with pytest.raises(client.exceptions.RequestTooLargeException):
            client.invoke(FunctionName="echo", Payload=json.dumps("x" * (6 * 1024 * 1024)))
        with pytest.raises(client.exceptions.RequestTooLargeException):
            client.invoke(FunctionName="echo", InvocationType="Event", Payload=json.dumps("x" * (1024 * 1024)))
        # The connection goes on serving: the body was read to its end.
        response = client.invoke(FunctionName="echo", Payload=b'{"small": true}')
    assert json.loads(response["Payload"].read())["event"] == {"small": True}


def test_an_unknown_function_is_resource_not_found(function_dir: Path, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        client = connect(api)
        with pytest.raises(client.exceptions.ResourceNotFoundException) as missing:
            client.invoke(FunctionName="nope", Payload=b"{}")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "nope" in missing.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("function_name", "qualifier"),
    [
        ("arn:aws:lambda:us-east-1:123456789012:function:echo", None),
        ("arn:aws:lambda:us-east-1:123456789012:function:echo:live", None),
        ("123456789012:function:echo", None),
        ("echo:7", None),
        ("echo", "$LATEST"),
    ],
)
def test_a_function_is_found_by_arn_partial_arn_and_with_a_qualifier(
    function_dir: Path, function_name: str, qualifier: str | None, connect: Connect
) -> None:
    extra = {} if qualifier is None else {"Qualifier": qualifier}
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        response = connect(api).invoke(FunctionName=function_name, Payload=b'{"n": 1}', **extra)  # type: ignore[arg-type]
    assert json.loads(response["Payload"].read())["event"] == {"n": 1}


def test_an_unknown_invocation_type_is_an_invalid_parameter(function_dir: Path, connect: Connect) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        client = connect(api)
        with pytest.raises(client.exceptions.InvalidParameterValueException, match="invocationType"):
            client.invoke(FunctionName="echo", InvocationType="Sometimes", Payload=b"{}")  # type: ignore[arg-type]


def test_other_paths_and_methods_get_json_errors_and_the_server_goes_on(function_dir: Path) -> None:
    with LambdaEnvironment(function_dir, "app.handler") as env, InvokeApi({"echo": env}) as api:
        status, headers, body = request(api, "GET", "/2015-03-31/functions/echo/invocations")
        assert (status, headers["allow"], json.loads(body)["Type"]) == (405, "POST", "User")
        status, headers, body = request(api, "POST", "/2015-03-31/functions/echo/configuration", b"{}")
        assert (status, headers["x-amzn-errortype"]) == (404, "UnknownOperationException")
        assert "message" in json.loads(body)
        status, headers, body = request(api, "BREW", "/")
        assert status == 501
        assert "message" in json.loads(body)
        status, _, body = request(api, "POST", "/2015-03-31/functions/echo/invocations", b'{"still": "up"}')
    assert status == 200
    assert json.loads(body)["event"] == {"still": "up"}


def test_a_failure_while_answering_is_a_service_exception_logged_once(
    function_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Never started: invoking it fails inside the API, not in a function.
    unstarted = LambdaEnvironment(function_dir, "app.handler")
    # Its own logger's level: posthog_lambda's, set by any earlier in-process use of the library,
    # is above CRITICAL unless POSTHOG_LAMBDA_DEBUG is set.
    logger = "posthog_lambda.local.emulator.invoke_api"
    with InvokeApi({"unstarted": unstarted}) as api, caplog.at_level(logging.ERROR, logger=logger):
        status, headers, body = request(api, "POST", "/2015-03-31/functions/unstarted/invocations", b"{}")
        assert (status, headers["x-amzn-errortype"], json.loads(body)["Type"]) == (500, "ServiceException", "Service")
        failures = [r for r in caplog.records if r.name.startswith("posthog_lambda.local")]
        assert len(failures) == 1
        assert failures[0].exc_info is not None
        # The server is still there.
        status, headers, _ = request(api, "POST", "/2015-03-31/functions/other/invocations", b"{}")
    assert (status, headers["x-amzn-errortype"]) == (404, "ResourceNotFoundException")


def test_a_function_invokes_another_through_the_api(function_dir: Path, connect: Connect) -> None:
    with (
        LambdaEnvironment(function_dir, "app.call", function_name="caller") as caller,
        LambdaEnvironment(function_dir, "app.handler", function_name="callee") as callee,
        InvokeApi({"caller": caller, "callee": callee}) as api,
    ):
        event = {"api": api.url, "target": "callee", "payload": {"question": "hi"}}
        response = connect(api).invoke(FunctionName="caller", Payload=json.dumps(event))
        payload = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, payload
    assert payload == {
        "status": 200,
        "response": {"event": {"question": "hi"}, "custom": {"caller": "caller"}, "env": None, "w3c": {}},
    }


def test_functions_must_be_environments(function_dir: Path) -> None:
    with pytest.raises(TypeError, match="LambdaEnvironment"):
        InvokeApi({"echo": object()})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="non-empty"):
        InvokeApi({"": LambdaEnvironment(function_dir, "app.handler")})
