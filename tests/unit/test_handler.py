"""@posthog_traced: one $ai_trace per invocation, with Lambda properties; results and
exceptions pass through unchanged."""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import Any

import pytest

from posthog_lambda import configure, current_span, posthog_traced, span
from posthog_lambda.testing import reset
from tests.helpers import LambdaContext, by_kind, one

API_GATEWAY_EVENT = {
    "resource": "/ask",
    "httpMethod": "POST",
    "headers": {"Authorization": "Bearer eyJhbGciOi.secret", "Content-Type": "application/json"},
    "body": '{"question": "capital of France?"}',
}


def test_trace_event_has_posthog_fields_and_lambda_properties(
    events: list[Any], context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")

    @posthog_traced(name="ask", session_id="conv-7")
    def handler(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"answer": "Paris"}

    handler({"question": "capital of France?"}, context)

    trace = one(events, "$ai_trace")
    props = trace["properties"]
    assert props["$ai_span_name"] == "ask"
    assert props["$ai_input_state"] == {"question": "capital of France?"}
    assert props["$ai_output_state"] == {"answer": "Paris"}
    assert props["$ai_is_error"] is False
    assert "$ai_error" not in props
    assert props["$ai_session_id"] == "conv-7"
    assert isinstance(props["$ai_latency"], float)
    assert 0 <= props["$ai_latency"] < 5
    assert props["lambda_request_id"] == "req-1"
    assert props["lambda_function_name"] == "ask"
    assert props["lambda_function_version"] == "$LATEST"
    assert props["lambda_memory_mb"] == 512
    assert props["lambda_region"] == "eu-west-1"
    assert props["lambda_xray_trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert props["lambda_function_arn"].endswith(":function:ask")
    # Only PostHog's own properties carry a $.
    assert all(not k.startswith("$") for k in props if k.startswith("lambda"))
    assert trace["uuid"]
    assert trace["timestamp"].endswith("+00:00")


def test_default_name_is_the_qualified_name(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        return None

    handler({}, None)
    assert one(events, "$ai_trace")["properties"]["$ai_span_name"].endswith("handler")
    assert "<locals>" in one(events, "$ai_trace")["properties"]["$ai_span_name"]


def test_cold_start_only_on_first_invocation(events: list[Any], context: LambdaContext) -> None:
    reset()  # a new process: its first invocation is the cold start

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        return None

    handler({}, context)
    handler({}, context)
    assert [e["properties"]["lambda_cold_start"] for e in by_kind(events, "$ai_trace")] == [True, False]


def test_provisioned_concurrency_is_never_a_cold_start(
    events: list[Any], context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    reset()  # a new process: its first invocation is the cold start
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency")

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        return None

    handler({}, context)
    assert one(events, "$ai_trace")["properties"]["lambda_cold_start"] is False


def test_return_value_is_the_same_object_with_and_without_the_decorator(events: list[Any]) -> None:
    sentinel = {"statusCode": 200, "body": object()}

    def plain(event: Any, context: Any) -> Any:
        return sentinel

    traced = posthog_traced(plain)
    assert traced({}, None) is plain({}, None) is sentinel
    assert traced.__name__ == "plain"
    assert traced.__wrapped__ is plain


def _raise_value_error(event: Any) -> None:
    raise ValueError(f"bad question: {event['q']}")


def test_handler_exception_reraised_with_identity_and_traceback(events: list[Any], context: LambdaContext) -> None:
    raised: list[BaseException] = []

    @posthog_traced
    def handler(event: Any, ctx: Any) -> None:
        with span("validate"):
            try:
                _raise_value_error(event)
            except ValueError as exc:
                raised.append(exc)
                raise

    with pytest.raises(ValueError, match="bad question: x") as info:
        handler({"q": "x"}, context)

    assert info.value is raised[0]
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    # The original frames are all still there, innermost last.
    assert frames[-2:] == ["handler", "_raise_value_error"]

    trace = one(events, "$ai_trace")["properties"]
    assert trace["$ai_is_error"] is True
    assert trace["$ai_error"] == "ValueError: bad question: x"
    failing = one(events, "$ai_span", "validate")["properties"]
    assert failing["$ai_is_error"] is True
    assert failing["$ai_error"] == "ValueError: bad question: x"

    exception = one(events, "$exception")
    assert exception["distinct_id"] == one(events, "$ai_trace")["distinct_id"]
    props = exception["properties"]
    assert props["$ai_trace_id"] == trace["$ai_trace_id"]
    assert props["$exception_level"] == "error"
    [entry] = props["$exception_list"]
    assert entry["type"] == "ValueError"
    assert entry["value"] == "bad question: x"
    assert entry["mechanism"]["handled"] is False
    stack = entry["stacktrace"]
    assert stack["type"] == "raw"
    functions = [f["function"] for f in stack["frames"]]
    assert functions[-2:] == ["handler", "_raise_value_error"]
    last = stack["frames"][-1]
    assert last["abs_path"] == __file__
    assert last["lineno"] == _raise_value_error.__code__.co_firstlineno + 1
    assert last["context_line"] == "raise ValueError(f\"bad question: {event['q']}\")"
    assert last["in_app"] is True
    # The library's own wrapper frames are left out.
    assert not any("posthog_lambda" in f["abs_path"] for f in stack["frames"])


def test_exception_chain_is_listed_cause_after_wrapper(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("lookup failed") from exc

    with pytest.raises(RuntimeError):
        handler({}, None)
    chain = one(events, "$exception")["properties"]["$exception_list"]
    assert [e["type"] for e in chain] == ["RuntimeError", "KeyError"]
    assert chain[1]["mechanism"]["source"] == "__cause__"
    assert chain[1]["mechanism"]["parent_id"] == 0


def test_async_handler(events: list[Any]) -> None:
    @posthog_traced
    async def handler(event: Any, context: Any) -> str:
        with span("inner"):
            await asyncio.sleep(0)
        return "done"

    assert asyncio.run(handler({"a": 1}, None)) == "done"
    trace = one(events, "$ai_trace")["properties"]
    inner = one(events, "$ai_span", "inner")["properties"]
    assert inner["$ai_parent_id"] == trace["$ai_trace_id"]
    assert trace["$ai_output_state"] == "done"


def test_async_handler_exception_passes_through(events: list[Any]) -> None:
    class Boom(Exception):
        pass

    @posthog_traced
    async def handler(event: Any, context: Any) -> None:
        raise Boom("no")

    with pytest.raises(Boom):
        asyncio.run(handler({}, None))
    assert one(events, "$ai_trace")["properties"]["$ai_error"] == "Boom: no"
    assert one(events, "$exception")["properties"]["$exception_list"][0]["type"] == "Boom"


def test_method_handler_takes_event_after_self(events: list[Any]) -> None:
    class App:
        @posthog_traced
        def handle(self, event: Any, context: Any) -> int:
            return 1

    App().handle({"q": "hi"}, None)
    assert one(events, "$ai_trace")["properties"]["$ai_input_state"] == {"q": "hi"}


def test_keyword_arguments(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        return None

    handler(event={"k": 1}, context=LambdaContext("req-kw"))
    props = one(events, "$ai_trace")["properties"]
    assert props["$ai_input_state"] == {"k": 1}
    assert props["lambda_request_id"] == "req-kw"


def test_each_invocation_is_its_own_trace(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with span("step"):
            pass
        return current_span().trace_id

    first = handler({}, LambdaContext("a"))
    second = handler({}, LambdaContext("b"))
    assert first != second
    traces = by_kind(events, "$ai_trace")
    assert [t["properties"]["$ai_trace_id"] for t in traces] == [first, second]
    assert [s["properties"]["$ai_trace_id"] for s in by_kind(events, "$ai_span")] == [first, second]
    assert [s["properties"]["lambda_request_id"] for s in by_kind(events, "$ai_span")] == ["a", "b"]
    # Nothing leaks out of an invocation.
    assert not current_span().is_recording()


def test_nested_traced_function_is_a_span_of_the_running_trace(events: list[Any]) -> None:
    @posthog_traced(name="tool")
    def tool(event: Any, context: Any) -> str:
        return "ok"

    @posthog_traced(name="outer")
    def handler(event: Any, context: Any) -> str:
        return tool({"x": 1}, context)

    handler({}, None)
    trace = one(events, "$ai_trace")["properties"]
    nested = one(events, "$ai_span", "tool")["properties"]
    assert nested["$ai_parent_id"] == trace["$ai_trace_id"]
    assert nested["$ai_input_state"] == {"x": 1}


def test_capture_input_off_per_decorator(events: list[Any]) -> None:
    @posthog_traced(capture_input=False)
    def handler(event: Any, context: Any) -> str:
        return "out"

    handler({"secret": "x"}, None)
    props = one(events, "$ai_trace")["properties"]
    assert "$ai_input_state" not in props
    assert props["$ai_output_state"] == "out"


def test_capture_output_off_by_environment(events: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_LAMBDA_CAPTURE_OUTPUT", "false")

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with span("inner") as s:
            s.update(output="inner out")
        return "out"

    handler({"a": 1}, None)
    props = one(events, "$ai_trace")["properties"]
    assert props["$ai_input_state"] == {"a": 1}
    assert "$ai_output_state" not in props
    assert "$ai_output_state" not in one(events, "$ai_span")["properties"]


def test_explicit_option_wins_over_environment(events: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_LAMBDA_CAPTURE_OUTPUT", "false")

    @posthog_traced(capture_output=True)
    def handler(event: Any, context: Any) -> str:
        return "out"

    handler({}, None)
    assert one(events, "$ai_trace")["properties"]["$ai_output_state"] == "out"


def test_disabled_is_a_pass_through(events: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_LAMBDA_ENABLED", "false")

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with span("inner") as s:
            s.update(output="x")
        return "ok"

    assert handler({}, None) == "ok"
    assert events == []


def test_configure_disable_after_decoration_takes_effect(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        return "ok"

    configure(enabled=False)
    assert handler({}, None) == "ok"
    assert events == []


@pytest.mark.parametrize(
    ("option", "value"),
    [("distinct_id", 42), ("capture_input", "yes"), ("properties", ["a"]), ("groups", "org"), ("name", 3)],
)
def test_bad_decorator_options_are_a_clear_error(option: str, value: Any) -> None:
    with pytest.raises(TypeError, match=option):
        posthog_traced(**{option: value})


def test_module_level_handler_in_a_fresh_interpreter_has_no_state(tmp_path: Any) -> None:
    """A handler module that imports the package and runs twice prints two distinct traces."""
    import subprocess

    code = (
        "from posthog_lambda import posthog_traced\n"
        "from posthog_lambda.testing import capture_events\n"
        "@posthog_traced\n"
        "def h(e, c):\n    return e\n"
        "with capture_events() as ev:\n    h(1, None); h(2, None)\n"
        "print(len({e['properties']['$ai_trace_id'] for e in ev}))\n"
        "print(sorted(e['properties']['lambda_cold_start'] for e in ev))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": "src"}
    )
    assert out.stdout.split("\n")[:2] == ["2", "[False, True]"]


def test_an_exception_whose_str_raises_is_still_recorded(events: list[Any]) -> None:
    class Odd(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with span("inner"):
            raise Odd()

    with pytest.raises(Odd):
        handler({}, None)
    assert one(events, "$ai_span", "inner")["properties"]["$ai_error"] == "Odd"
    assert one(events, "$ai_trace")["properties"]["$ai_error"] == "Odd"
    assert one(events, "$exception")["properties"]["$exception_list"][0]["value"] == "<str() failed>"
