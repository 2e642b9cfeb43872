"""A failure inside the library never reaches the handler; losses are counted."""

from __future__ import annotations

from typing import Any

import pytest

from posthog_lambda import (
    _handler,
    _processor,
    _spans,
    configure,
    dropped_counts,
    generation,
    posthog_traced,
    span,
)
from posthog_lambda.testing import capture_events
from posthog_lambda_contract import jsonable as _jsonable
from posthog_lambda_contract import records as _records
from tests.helpers import one


def _boom(*_: Any, **__: Any) -> Any:
    raise RuntimeError("library bug")


RESULT = {"statusCode": 200}


def _handler_with_spans() -> Any:
    @posthog_traced
    def handler(event: Any, context: Any) -> Any:
        with span("s", input="x") as s:
            s.update(output="y")
        with generation("g", model="m") as g:
            g.chunk("a")
            g.update(input_tokens=1)
        return RESULT

    return handler


@pytest.mark.parametrize(
    ("target", "attribute"),
    [
        (_handler, "lambda_properties"),  # starting the trace
        (_processor.Batch, "close"),  # ending the trace
        (_records, "expand"),  # building events
        (_handler, "take_first_invocation"),
        (_handler, "_handler_arguments"),
        (_spans.Span, "_record"),
    ],
)
def test_library_failure_never_reaches_the_handler(
    target: Any, attribute: str, monkeypatch: pytest.MonkeyPatch, library_logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(target, attribute, _boom)
    with capture_events():
        assert _handler_with_spans()({"q": 1}, None) is RESULT
    assert "library bug" in library_logs.text


def test_a_value_that_cannot_be_converted_is_described_not_raised(
    events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_jsonable, "_convert_unsafe", _boom)
    assert _handler_with_spans()({"q": 1}, None) is RESULT
    assert one(events, "$ai_trace")["properties"]["$ai_input_state"] == "<unserializable dict: RuntimeError>"


def test_user_exception_still_passes_through_when_the_library_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_records, "expand", _boom)

    class Mine(Exception):
        pass

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        raise Mine("user error")

    with capture_events(), pytest.raises(Mine, match="user error"):
        handler({}, None)


def test_sink_that_raises_is_counted_not_raised() -> None:
    class Broken:
        def send(self, events: Any) -> None:
            raise ConnectionError("down")

    configure(sink=Broken())
    before = dropped_counts().get("sink_error", 0)
    assert _handler_with_spans()({}, None) is RESULT
    assert dropped_counts()["sink_error"] - before == 3


def test_distinct_id_callable_that_raises(events: list[Any]) -> None:
    @posthog_traced(distinct_id=lambda e, c: e["user"]["id"])
    def handler(event: Any, context: Any) -> str:
        return "ok"

    assert handler({}, None) == "ok"
    [trace] = events
    assert trace["distinct_id"] == trace["properties"]["$ai_trace_id"]


def test_no_destination_counts_drops() -> None:
    before = dropped_counts().get("no_destination", 0)
    _handler_with_spans()({}, None)
    assert dropped_counts()["no_destination"] - before == 3


def test_configure_rejects_bad_values_clearly() -> None:
    with pytest.raises(TypeError, match="privacy_mode"):
        configure(privacy_mode="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sink"):
        configure(sink=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="redact_keys"):
        configure(redact_keys="password")
    with pytest.raises(TypeError, match="max_event_bytes"):
        configure(max_event_bytes=True)
