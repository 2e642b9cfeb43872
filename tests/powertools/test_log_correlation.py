"""correlate_logs: Powertools Logger lines inside a trace carry its trace id and span id."""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from posthog_lambda import ContextExecutor, posthog_traced, span
from posthog_lambda.powertools import TraceIdFilter, correlate_logs
from tests.helpers import LambdaContext, one
from tests.powertools.conftest import LogLines


def test_lines_in_a_traced_handler_carry_the_trace_and_enclosing_span(
    events: list[Any], context: LambdaContext, logs: LogLines
) -> None:
    correlate_logs(logs.logger)

    @posthog_traced
    def handler(event: Any, ctx: Any) -> str:
        logs.logger.info("at the top")
        with span("retrieve"):
            logs.logger.info("retrieving")
            with span("rerank"):
                logs.logger.info("reranking")
        return "ok"

    logs.logger.info("before")
    handler({}, context)
    logs.logger.info("after")

    trace_id = one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    retrieve = one(events, "$ai_span", "retrieve")["properties"]["$ai_span_id"]
    rerank = one(events, "$ai_span", "rerank")["properties"]["$ai_span_id"]
    top = logs.line("at the top")
    assert (top["posthog_trace_id"], top["posthog_span_id"]) == (trace_id, trace_id)
    line = logs.line("retrieving")
    assert (line["posthog_trace_id"], line["posthog_span_id"]) == (trace_id, retrieve)
    line = logs.line("reranking")
    assert (line["posthog_trace_id"], line["posthog_span_id"]) == (trace_id, rerank)
    for outside in (logs.line("before"), logs.line("after")):
        assert "posthog_trace_id" not in outside
        assert "posthog_span_id" not in outside
    # The ids are added to the line, nothing else changes.
    assert top["service"] == logs.logger.service
    assert top["level"] == "INFO"


def test_each_invocation_gets_its_own_trace_id(events: list[Any], logs: LogLines) -> None:
    correlate_logs(logs.logger)

    @posthog_traced
    def handler(event: Any, ctx: Any) -> None:
        logs.logger.info(f"invocation {event['n']}")

    handler({"n": 1}, LambdaContext("req-1"))
    handler({"n": 2}, LambdaContext("req-2"))

    trace_ids = [e["properties"]["$ai_trace_id"] for e in events if e["event"] == "$ai_trace"]
    logged = [logs.line(f"invocation {n}")["posthog_trace_id"] for n in (1, 2)]
    assert logged == trace_ids
    assert len(set(trace_ids)) == 2


def test_child_loggers_of_the_service_carry_the_ids_too(events: list[Any], logs: LogLines) -> None:
    correlate_logs(logs.logger)
    child = Logger(service=logs.logger.service, child=True)

    @posthog_traced
    def handler(event: Any, ctx: Any) -> None:
        child.info("from another module")

    handler({}, LambdaContext())

    line = logs.line("from another module")
    assert line["posthog_trace_id"] == one(events, "$ai_trace")["properties"]["$ai_trace_id"]


def test_exception_lines_carry_the_ids(events: list[Any], logs: LogLines) -> None:
    correlate_logs(logs.logger)

    @posthog_traced
    def handler(event: Any, ctx: Any) -> None:
        try:
            raise KeyError("question")
        except KeyError:
            logs.logger.exception("bad request")

    handler({}, LambdaContext())

    line = logs.line("bad request")
    assert line["exception_name"] == "KeyError"
    assert line["posthog_trace_id"] == one(events, "$ai_trace")["properties"]["$ai_trace_id"]


def test_a_span_outside_a_handler_is_a_trace_as_well(events: list[Any], logs: LogLines) -> None:
    correlate_logs(logs.logger)

    with span("batch job"):
        logs.logger.info("working")

    line = logs.line("working")
    job = one(events, "$ai_span", "batch job")["properties"]
    assert (line["posthog_trace_id"], line["posthog_span_id"]) == (job["$ai_trace_id"], job["$ai_span_id"])


def test_threads_see_the_trace_only_when_given_the_context(events: list[Any], logs: LogLines) -> None:
    correlate_logs(logs.logger)

    @posthog_traced
    def handler(event: Any, ctx: Any) -> None:
        with ContextExecutor(max_workers=1) as pool:
            pool.submit(logs.logger.info, "carried").result()
        bare = threading.Thread(target=logs.logger.info, args=("not carried",))
        bare.start()
        bare.join()

    handler({}, LambdaContext())

    trace_id = one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    assert logs.line("carried")["posthog_trace_id"] == trace_id
    assert "posthog_trace_id" not in logs.line("not carried")


def test_an_explicit_value_wins(events: list[Any], logs: LogLines) -> None:
    correlate_logs(logs.logger)

    @posthog_traced
    def handler(event: Any, ctx: Any) -> None:
        logs.logger.info("relayed", extra={"posthog_trace_id": "upstream-trace"})

    handler({}, LambdaContext())

    line = logs.line("relayed")
    assert line["posthog_trace_id"] == "upstream-trace"
    assert line["posthog_span_id"] == one(events, "$ai_trace")["properties"]["$ai_trace_id"]


def test_calling_it_twice_installs_one_filter(logs: LogLines) -> None:
    first = correlate_logs(logs.logger)
    second = correlate_logs(logs.logger)

    assert second is first
    handler = logs.logger.registered_handler
    assert [f for f in handler.filters if isinstance(f, TraceIdFilter)] == [first]
    handler.removeFilter(first)
    assert correlate_logs(logs.logger) is not first


def test_custom_keys_on_a_standard_logging_logger(events: list[Any]) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s trace=%(trace)s span=%(span)s"))
    plain = logging.getLogger("tests.powertools.plain")
    plain.addHandler(handler)
    plain.setLevel(logging.INFO)
    plain.propagate = False
    try:
        correlate_logs(plain, trace_id_key="trace", span_id_key="span")

        @posthog_traced
        def traced(event: Any, ctx: Any) -> None:
            plain.info("hello")

        traced({}, LambdaContext())
    finally:
        plain.removeHandler(handler)
        plain.filters.clear()

    trace_id = one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    assert stream.getvalue() == f"hello trace={trace_id} span={trace_id}\n"


def test_a_failing_span_lookup_never_drops_the_line(logs: LogLines, library_logs: pytest.LogCaptureFixture) -> None:
    correlate_logs(logs.logger)

    class Broken:
        def is_recording(self) -> bool:
            raise RuntimeError("boom")

    from posthog_lambda import _context

    token = _context.current.set(Broken())  # type: ignore[arg-type]
    try:
        logs.logger.info("still logged")
    finally:
        _context.current.reset(token)

    assert "posthog_trace_id" not in logs.line("still logged")
    assert "adding the PostHog trace id to a log record failed" in library_logs.text


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match=r"Powertools Logger, a logging\.Logger or a logging\.Handler"):
        correlate_logs(print)
    with pytest.raises(ValueError, match="standard log record attribute"):
        correlate_logs(logging.getLogger("tests.powertools.reserved"), trace_id_key="message")
    with pytest.raises(ValueError, match="must differ"):
        TraceIdFilter("same", "same")
    with pytest.raises(TypeError, match="non-empty string"):
        TraceIdFilter("")
