"""span() as context manager and decorator on sync, async and generator functions; nesting;
current_span; spans outside a handler; threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from posthog_lambda import (
    ContextExecutor,
    NoOpSpan,
    carry_context,
    current_span,
    generation,
    posthog_traced,
    span,
)
from posthog_lambda.testing import trace_tree_problems
from tests.helpers import by_kind, one


def parent_of(events: list[Any], name: str) -> str:
    return str(one(events, "$ai_span", name)["properties"]["$ai_parent_id"])


def span_id(events: list[Any], name: str) -> str:
    return str(one(events, "$ai_span", name)["properties"]["$ai_span_id"])


def test_context_manager_nesting(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with span("outer", input="q") as outer:
            assert current_span() is outer
            with span("inner") as inner:
                assert current_span() is inner
                inner.update(output="docs", properties={"k": 1})
            assert current_span() is outer

    handler({}, None)
    trace_id = one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    assert parent_of(events, "outer") == trace_id
    assert parent_of(events, "inner") == span_id(events, "outer")
    inner = one(events, "$ai_span", "inner")["properties"]
    assert inner["$ai_output_state"] == "docs"
    assert inner["k"] == 1
    assert one(events, "$ai_span", "outer")["properties"]["$ai_input_state"] == "q"
    assert trace_tree_problems(events) == []


def test_decorator_forms_and_argument_capture(events: list[Any]) -> None:
    @span
    def bare(x: int, y: int = 2) -> int:
        return x + y

    @span()
    def empty_call(x: int) -> int:
        return x

    @span("named", capture_input=False)
    def named(x: int) -> int:
        return x

    class Store:
        @span
        def lookup(self, key: str) -> str:
            return key.upper()

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        bare(1, y=5)
        empty_call(3)
        named(4)
        Store().lookup("k")

    handler({}, None)
    b = one(events, "$ai_span", bare.__qualname__)["properties"]
    assert b["$ai_input_state"] == {"x": 1, "y": 5}
    assert b["$ai_output_state"] == 6
    assert one(events, "$ai_span", empty_call.__qualname__)["properties"]["$ai_output_state"] == 3
    n = one(events, "$ai_span", "named")["properties"]
    assert "$ai_input_state" not in n
    assert n["$ai_output_state"] == 4
    lookup = one(events, "$ai_span", Store.lookup.__qualname__)["properties"]
    assert lookup["$ai_input_state"] == {"key": "k"}  # no self
    assert bare.__name__ == "bare"


def test_decorated_function_span_is_parent_of_spans_inside(events: list[Any]) -> None:
    @span("retrieve")
    def retrieve() -> None:
        with span("embed"):
            pass

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        retrieve()

    handler({}, None)
    assert parent_of(events, "embed") == span_id(events, "retrieve")


def test_async_nesting_and_concurrent_tasks(events: list[Any]) -> None:
    @span("fetch")
    async def fetch(n: int) -> int:
        with span(f"io-{n}"):
            await asyncio.sleep(0)
        return n

    @posthog_traced
    async def handler(event: Any, context: Any) -> list[int]:
        async with span("gather"):
            return list(await asyncio.gather(fetch(1), fetch(2)))

    assert asyncio.run(handler({}, None)) == [1, 2]
    gather = span_id(events, "gather")
    fetches = [e for e in by_kind(events, "$ai_span") if e["properties"]["$ai_span_name"] == "fetch"]
    assert len(fetches) == 2
    assert {f["properties"]["$ai_parent_id"] for f in fetches} == {gather}
    fetch_ids = {f["properties"]["$ai_span_id"] for f in fetches}
    # Each io span hangs under its own task's fetch span, not under the other one's.
    assert {parent_of(events, "io-1"), parent_of(events, "io-2")} == fetch_ids
    assert trace_tree_problems(events) == []


def test_generator_span_ends_when_exhausted_and_is_not_current_between_items(events: list[Any]) -> None:
    seen_between: list[Any] = []

    @span("stream")
    def stream() -> Iterator[str]:
        with span("chunk-work"):
            pass
        yield "a"
        yield "b"

    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with span("consumer") as consumer:
            out = []
            for item in stream():
                seen_between.append(current_span())
                out.append(item)
            assert current_span() is consumer
        return "".join(out)

    assert handler({}, None) == "ab"
    assert all(s.name == "consumer" for s in seen_between)
    st = one(events, "$ai_span", "stream")["properties"]
    assert st["$ai_output_state"] == "ab"
    assert st["$ai_parent_id"] == span_id(events, "consumer")
    assert parent_of(events, "chunk-work") == st["$ai_span_id"]


def test_generator_span_ends_when_closed_early(events: list[Any]) -> None:
    closed = []

    @span("numbers")
    def numbers() -> Iterator[int]:
        try:
            yield 1
            yield 2
            yield 3
        finally:
            closed.append(current_span().name)

    @posthog_traced
    def handler(event: Any, context: Any) -> int:
        gen = numbers()
        first = next(gen)
        gen.close()
        return first

    assert handler({}, None) == 1
    # The generator's own cleanup ran inside its span.
    assert closed == ["numbers"]
    props = one(events, "$ai_span", "numbers")["properties"]
    assert props["$ai_is_error"] is False
    assert props["$ai_output_state"] == [1]


def test_generator_send_throw_and_return_value(events: list[Any]) -> None:
    @span("echo")
    def echo() -> Iterator[Any]:
        received = yield "ready"
        try:
            yield f"got {received}"
        except KeyError:
            yield "handled"
        return "finished"

    def drive() -> Any:
        gen = echo()
        assert next(gen) == "ready"
        assert gen.send("x") == "got x"
        assert gen.throw(KeyError("k")) == "handled"
        with pytest.raises(StopIteration) as stop:
            next(gen)
        return stop.value.value

    @posthog_traced
    def handler(event: Any, context: Any) -> Any:
        return drive()

    assert handler({}, None) == "finished"
    assert one(events, "$ai_span", "echo")["properties"]["$ai_output_state"] == "readygot xhandled"


def test_generator_error_marks_span(events: list[Any]) -> None:
    @span("broken")
    def broken() -> Iterator[int]:
        yield 1
        raise OSError("disk")

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        list(broken())

    with pytest.raises(OSError, match="disk"):
        handler({}, None)
    props = one(events, "$ai_span", "broken")["properties"]
    assert props["$ai_is_error"] is True
    assert props["$ai_error"] == "OSError: disk"


def test_async_generator(events: list[Any]) -> None:
    @generation("stream", model="gpt-4o")
    async def tokens() -> AsyncIterator[str]:
        for t in ("Pa", "ris"):
            await asyncio.sleep(0)
            yield t

    @posthog_traced
    async def handler(event: Any, context: Any) -> str:
        return "".join([t async for t in tokens()])

    assert asyncio.run(handler({}, None)) == "Paris"
    gen = one(events, "$ai_generation")["properties"]
    assert gen["$ai_output_choices"] == [{"role": "assistant", "content": "Paris"}]
    assert gen["$ai_model"] == "gpt-4o"


def test_async_generator_closed_early(events: list[Any]) -> None:
    @span("agen")
    async def agen() -> AsyncIterator[int]:
        yield 1
        yield 2

    @posthog_traced
    async def handler(event: Any, context: Any) -> int:
        g = agen()
        first = await g.__anext__()
        await g.aclose()
        return first

    assert asyncio.run(handler({}, None)) == 1
    assert one(events, "$ai_span", "agen")["properties"]["$ai_output_state"] == [1]


def test_current_span_outside_anything_is_a_noop_not_none() -> None:
    noop = current_span()
    assert isinstance(noop, NoOpSpan)
    assert noop is not None
    assert bool(noop)
    assert noop.is_recording() is False
    noop.update(output="x", properties={"a": 1})
    noop.chunk("x")
    noop.end()
    assert noop.trace_id == ""
    assert noop.span_id == ""


def test_span_outside_a_handler_starts_its_own_trace(events: list[Any]) -> None:
    with span("job") as job:
        with span("step"):
            pass
        assert events == []  # nothing is sent before the outermost span ends
    assert {e["event"] for e in events} == {"$ai_span"}
    assert len(events) == 2
    props = one(events, "$ai_span", "job")["properties"]
    assert props["$ai_parent_id"] == props["$ai_trace_id"] == job.trace_id
    assert parent_of(events, "step") == job.span_id
    # No known user: the trace id stands in, with no person profile.
    assert all(e["distinct_id"] == job.trace_id for e in events)
    assert all(e["properties"]["$process_person_profile"] is False for e in events)
    with span("another") as other:
        pass
    assert other.trace_id != job.trace_id


def test_generation_outside_a_handler_is_its_own_trace(events: list[Any]) -> None:
    with generation("solo", model="m") as g:
        g.update(input_tokens=1)
    props = one(events, "$ai_generation")["properties"]
    assert props["$ai_parent_id"] == props["$ai_trace_id"]


def test_failed_span_that_the_handler_catches(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        try:
            with span("flaky"):
                raise TimeoutError("vector db")
        except TimeoutError:
            pass
        with span("explicit") as s:
            s.update(error="rate limited")
        return "recovered"

    assert handler({}, None) == "recovered"
    flaky = one(events, "$ai_span", "flaky")["properties"]
    assert flaky["$ai_is_error"] is True
    assert flaky["$ai_error"] == "TimeoutError: vector db"
    assert one(events, "$ai_span", "explicit")["properties"]["$ai_error"] == "rate limited"
    assert one(events, "$ai_trace")["properties"]["$ai_is_error"] is False
    assert by_kind(events, "$exception") == []


def test_update_after_end_is_ignored(events: list[Any]) -> None:
    with span("done") as s:
        pass
    s.update(output="late")
    assert "$ai_output_state" not in one(events, "$ai_span")["properties"]


def test_same_scope_object_reentered(events: list[Any]) -> None:
    scope = span("twice")

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with scope, scope:
            pass

    handler({}, None)
    twice = [e["properties"] for e in by_kind(events, "$ai_span")]
    assert len(twice) == 2
    inner, outer = twice
    assert inner["$ai_parent_id"] == outer["$ai_span_id"]


def test_carry_context_into_threads(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with span("parallel"):

            def work(n: int) -> None:
                with span(f"worker-{n}"):
                    pass

            threads = [threading.Thread(target=carry_context(work), args=(n,)) for n in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            with ContextExecutor(max_workers=2) as pool:
                list(pool.map(work, [2, 3]))

    handler({}, None)
    parallel = span_id(events, "parallel")
    for n in range(4):
        assert parent_of(events, f"worker-{n}") == parallel
    trace_id = one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    assert {e["properties"]["$ai_trace_id"] for e in events} == {trace_id}


def test_thread_without_carried_context_starts_its_own_trace(events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        t = threading.Thread(target=lambda: span("orphan").__enter__().end())
        t.start()
        t.join()
        return current_span().trace_id

    handler_trace = handler({}, None)
    orphan = one(events, "$ai_span", "orphan")["properties"]
    assert orphan["$ai_trace_id"] != handler_trace


def test_span_ending_after_its_trace_was_flushed_is_sent_alone(events: list[Any]) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow() -> None:
        with span("slow"):
            started.set()
            release.wait(5)

    holder: list[threading.Thread] = []

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        t = threading.Thread(target=carry_context(slow))
        t.start()
        started.wait(5)
        holder.append(t)

    handler({}, None)
    assert [e["event"] for e in events] == ["$ai_trace"]
    release.set()
    holder[0].join()
    late = one(events, "$ai_span", "slow")["properties"]
    assert late["$ai_trace_id"] == one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    assert trace_tree_problems(events) == []


def test_end_inside_the_block_ends_the_span_and_restores_the_current_one(events: list[Any]) -> None:
    with span("outer") as outer:
        with span("inner") as inner:
            inner.end()
            assert current_span() is outer
            assert not inner.is_recording()
            inner.update(output="ignored")
        assert current_span() is outer
    assert "$ai_output_state" not in one(events, "$ai_span", "inner")["properties"]
    assert len(events) == 2


def test_a_span_object_used_twice_in_a_row_records_two_spans(events: list[Any]) -> None:
    step = span("step", input="q")
    with step as first:
        pass
    with step as second:
        pass
    assert first is step
    assert second is not step
    steps = by_kind(events, "$ai_span")
    assert len(steps) == 2
    assert all(e["properties"]["$ai_input_state"] == "q" for e in steps)


def test_decorating_a_partial_of_an_async_function(events: list[Any]) -> None:
    import functools

    async def fetch(base: str, path: str) -> str:
        return base + path

    traced = span("fetch")(functools.partial(fetch, "https://x"))
    assert asyncio.run(traced("/y")) == "https://x/y"
    assert one(events, "$ai_span")["properties"]["$ai_output_state"] == "https://x/y"


def test_static_and_class_methods(events: list[Any]) -> None:
    class Tools:
        @staticmethod
        @span
        def add(a: int, b: int) -> int:
            return a + b

        @classmethod
        @span
        def name(cls) -> str:
            return cls.__name__

    assert Tools.add(1, 2) == 3
    assert Tools.name() == "Tools"
    add = one(events, "$ai_span", Tools.add.__qualname__)["properties"]
    assert add["$ai_input_state"] == {"a": 1, "b": 2}
    assert (
        one(events, "$ai_span", "test_static_and_class_methods.<locals>.Tools.name")["properties"]["$ai_output_state"]
        == "Tools"
    )


def test_decorating_something_that_is_not_a_function_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="decorates a function, not int"):
        span("x")(42)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="span name must be a string"):
        span(3.5)  # type: ignore[call-overload]
