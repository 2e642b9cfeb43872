from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools import Logger, Metrics, Tracer

from tests.powertools.fakes import RecordingProvider


class LogLines:
    """A Powertools Logger writing JSON lines into memory."""

    def __init__(self, service: str) -> None:
        self.stream = io.StringIO()
        self.logger = Logger(service=service, stream=self.stream)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def line(self, message: str) -> dict[str, Any]:
        found = [line for line in self.lines() if line["message"] == message]
        assert len(found) == 1, f"expected one log line {message!r}, got {self.lines()}"
        return found[0]


@pytest.fixture
def logs() -> LogLines:
    # Powertools configures one logging.Logger per service name, once: a fresh name per test
    # gives each test its own handler and stream.
    return LogLines(f"svc-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def xray() -> RecordingProvider:
    return RecordingProvider()


@pytest.fixture
def tracer(xray: RecordingProvider) -> Iterator[Tracer]:
    yield Tracer(service="ask", provider=xray, auto_patch=False, disabled=False)
    Tracer._reset_config()  # Tracer keeps its configuration on the class


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    metrics = Metrics(namespace="PostHogLambdaTests", service="ask")
    yield metrics
    metrics.clear_metrics()


def emf_lines(stdout: str) -> list[dict[str, Any]]:
    """The CloudWatch embedded metric format documents Metrics printed."""
    documents = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            document = json.loads(line)
            if "_aws" in document:
                documents.append(document)
    return documents
