"""Shared test helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def layer_build() -> Any:
    """``layer/build.py`` as a module: the one recipe for the layer, its supported runtimes and
    how it finds an interpreter for each."""
    spec = importlib.util.spec_from_file_location("layer_build", ROOT / "layer" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    """The attributes awslambdaric's context object has."""

    def __init__(self, request_id: str = "req-1") -> None:
        self.aws_request_id = request_id
        self.function_name = "ask"
        self.function_version = "$LATEST"
        self.invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:ask"
        self.memory_limit_in_mb = "512"
        self.log_group_name = "/aws/lambda/ask"
        self.log_stream_name = "2026/11/27/[$LATEST]abc"

    def get_remaining_time_in_millis(self) -> int:
        return 3000


class W3CContext(LambdaContext):
    """A context whose ``w3c()`` (awslambdaric 4.2 and later) gives ``fields``."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self._fields = fields

    def w3c(self) -> dict[str, Any]:
        return dict(self._fields)


def message_attributes(carrier: dict[str, Any]) -> dict[str, Any]:
    """A carrier as SQS or SNS message attributes, as boto3 sends them."""
    return {name: {"DataType": "String", "StringValue": value} for name, value in carrier.items()}


def sqs_record(attributes: dict[str, Any], body: str = "job") -> dict[str, Any]:
    """A message sent with ``attributes`` (boto3's form) as it reaches a function in an SQS event."""
    return {
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183"},
        "messageAttributes": {
            name: {
                "stringValue": value["StringValue"],
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in attributes.items()
        },
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:jobs",
        "awsRegion": "eu-west-1",
    }


def sns_message(attributes: dict[str, Any], body: str = "job") -> dict[str, Any]:
    """A message published with ``attributes`` (boto3's form) as SNS delivers it."""
    return {
        "Type": "Notification",
        "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:jobs",
        "Subject": None,
        "Message": body,
        "Timestamp": "2026-11-27T12:00:00.000Z",
        "MessageAttributes": {
            name: {"Type": value["DataType"], "Value": value["StringValue"]} for name, value in attributes.items()
        },
    }


def sns_record(attributes: dict[str, Any]) -> dict[str, Any]:
    """An SNS event's record of that message."""
    return {
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": "arn:aws:sns:eu-west-1:123456789012:jobs:sub",
        "Sns": sns_message(attributes),
    }


def by_kind(events: list[Any], kind: str) -> list[Any]:
    return [e for e in events if e["event"] == kind]


def one(events: list[Any], kind: str, name: str | None = None) -> Any:
    found = [e for e in by_kind(events, kind) if name is None or e["properties"].get("$ai_span_name") == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}: {[e['event'] for e in events]}"
    return found[0]


def built_layer() -> Path:
    """build/layer exactly as `make layer` built it (`make test` builds it first); built here
    with the same recipe only when a test run started without it."""
    built = ROOT / "build" / "layer"
    if not (built / "extensions" / "posthog-lambda").exists():
        layer_build().build(built)
    return built


@dataclasses.dataclass
class CaptureCommand:
    """What ``posthog-lambda capture`` printed: its first line and port while it runs; the rest of
    its output and its exit status once Ctrl-C has stopped it."""

    banner: str
    port: int
    out: str = ""
    err: str = ""
    returncode: int | None = None


# `python -m posthog_lambda` with Ctrl-C at its default, as in a terminal's foreground job: a test
# run started in the background by a script (`make test &`, nohup) hands its children SIGINT
# ignored, and Python then never raises KeyboardInterrupt.
_AS_IN_A_TERMINAL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('posthog_lambda', run_name='__main__', alter_sys=True)"
)


@contextlib.contextmanager
def capture_command(*args: str) -> Iterator[CaptureCommand]:
    """Run ``python -m posthog_lambda capture ARGS`` as a user does and, on leaving the block,
    stop it with Ctrl-C (SIGINT) and keep what it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-c", _AS_IN_A_TERMINAL, "capture", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Bounds the test even if the server never prints or never stops.
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        run = CaptureCommand(banner, int(banner.split("http://127.0.0.1:")[1].split()[0]))
        yield run
        process.send_signal(signal.SIGINT)
        run.out, run.err = process.communicate(timeout=20)
        run.returncode = process.returncode
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.communicate()
