"""The library on Lambda Managed Instances: each worker process has its own Init, and a handler
may return after its invocation timed out (the process lives on)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from posthog_lambda import _lambda, posthog_traced, span
from posthog_lambda.testing import reset
from tests.helpers import LambdaContext, one


@pytest.fixture
def managed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lambda, "_managed", True)
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances")
    monkeypatch.setenv("AWS_LAMBDA_MAX_CONCURRENCY", "16")


class LateContext(LambdaContext):
    """An invocation whose deadline is ``left_ms`` from its start."""

    def __init__(self, left_ms: int) -> None:
        super().__init__()
        self._deadline = time.time() + left_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


@pytest.mark.usefixtures("managed")
def test_no_invocation_waits_for_init_but_the_first_in_each_process_is_said(events: list[Any]) -> None:
    reset(cold_start=True)

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        return "ok"

    handler({}, LambdaContext("r1"))
    handler({}, LambdaContext("r2"))
    first, second = (e["properties"] for e in events if e["event"] == "$ai_trace")
    assert first["lambda_cold_start"] is False
    assert first["lambda_first_invocation_in_process"] is True
    assert second["lambda_first_invocation_in_process"] is False
    assert first["lambda_initialization_type"] == "lambda-managed-instances"
    assert first["lambda_max_concurrency"] == 16


def test_elsewhere_the_first_invocation_is_the_cold_start_and_nothing_more_is_said(events: list[Any]) -> None:
    reset(cold_start=True)

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        return "ok"

    handler({}, LambdaContext())
    props = one(events, "$ai_trace")["properties"]
    assert props["lambda_cold_start"] is True
    assert "lambda_first_invocation_in_process" not in props
    assert "lambda_initialization_type" not in props


@pytest.mark.usefixtures("managed")
def test_a_handler_that_returns_after_its_deadline_is_a_timed_out_trace(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with span("slow"):
            while context.get_remaining_time_in_millis() > 0:
                time.sleep(0.005)
            time.sleep(0.01)
        return "late"

    assert handler({}, LateContext(50)) == "late"  # the result still passes through
    props = one(events, "$ai_trace")["properties"]
    assert props["lambda_status"] == "timeout"
    assert props["$ai_is_error"] is True
    assert props["$ai_error"].startswith("Lambda status timeout: the invocation did not finish within its")


@pytest.mark.usefixtures("managed")
def test_a_handler_that_returns_in_time_is_no_timeout(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        return "ok"

    handler({}, LateContext(60_000))
    props = one(events, "$ai_trace")["properties"]
    assert "lambda_status" not in props
    assert props["$ai_is_error"] is False


@pytest.mark.usefixtures("managed")
def test_an_exception_after_the_deadline_keeps_its_error_and_says_timeout(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        while context.get_remaining_time_in_millis() > 0:
            time.sleep(0.005)
        time.sleep(0.01)
        raise ValueError("too late anyway")

    with pytest.raises(ValueError, match="too late anyway"):
        handler({}, LateContext(30))
    props = one(events, "$ai_trace")["properties"]
    assert props["lambda_status"] == "timeout"
    assert props["$ai_error"] == "ValueError: too late anyway"


@pytest.mark.usefixtures("managed")
def test_a_failing_deadline_check_never_reaches_the_handler(
    events: list[Any], monkeypatch: pytest.MonkeyPatch, library_logs: pytest.LogCaptureFixture
) -> None:
    from posthog_lambda._spans import TraceSpan

    def boom(self: Any) -> None:
        raise RuntimeError("library bug")

    monkeypatch.setattr(TraceSpan, "_check_deadline", boom)

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        return "ok"

    assert handler({}, LateContext(60_000)) == "ok"
    assert "library bug" in library_logs.text
    assert one(events, "$ai_trace")["properties"]["$ai_is_error"] is False
