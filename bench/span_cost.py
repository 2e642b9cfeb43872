"""Cost of a posthog-lambda span or generation next to an OpenTelemetry SDK span, posthog-python's
``Client.capture`` and Langfuse's ``@observe``, in one process.

Every round times one batch of operations for each contender, in an order that rotates from
round to round, so that the noise of a shared machine lands on all contenders alike. Figures
are per operation: the median and p99 over rounds, and the OpenTelemetry span's time divided
by the contender's, taken within each round and then the median over rounds. posthog-python and
Langfuse are pointed at a closed loopback port; what each is configured with is in
BENCHMARKS.md.

    .venv/bin/python bench/span_cost.py [--write] [--rounds N] [--batch N]
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

import _payloads as realistic
from _common import SRC, arguments, closed_port, median, p99, positive, run_description
from _publish import Target, publish, verdict

ROUNDS = 20
BATCH = 4000
SPANS_PER_INVOCATION = 100
TARGET = 10.0
TARGET_REAL_HOT = 10.0
TARGET_REAL_FULL = 3.0
PAYLOAD = "what is the capital of france"
# The same small input and output for every contender.
OUTPUT = "Paris is the capital of France."
MESSAGES = [{"role": "user", "content": "hi"}]
CHOICES = [{"role": "assistant", "content": "Paris"}]

Timed = Callable[[int], int]
"""Runs ``ops`` operations and returns the nanoseconds of the timed part only."""


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    run: Timed
    reset: Callable[[], None] | None = None
    """Run before each of its batches, untimed."""


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NullSink:
    def send(self, events: Sequence[Any]) -> None:
        pass


class Inert:
    """Takes the same ``update`` call as a span and does nothing with it."""

    def update(self, **_: Any) -> None:
        pass


def baseline() -> Timed:
    inert = Inert()

    def run(ops: int) -> int:
        start = perf_counter_ns()
        for _ in range(ops):
            with contextlib.nullcontext(inert) as s:
                s.update(output=OUTPUT)
        return perf_counter_ns() - start

    return run


def _otel_tracer() -> Any:
    # ALWAYS_ON explicitly: OTEL_TRACES_SAMPLER in the environment must not turn recording off.
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
    return provider.get_tracer("bench")


def otel_span() -> Timed:
    tracer = _otel_tracer()

    def run(ops: int) -> int:
        with tracer.start_as_current_span("outer"):
            start = perf_counter_ns()
            for _ in range(ops):
                with tracer.start_as_current_span("retrieve") as s:
                    s.set_attribute("input", PAYLOAD)
                    s.set_attribute("output", OUTPUT)
            return perf_counter_ns() - start

    return run


def otel_realistic_span() -> Timed:
    """An OpenTelemetry SDK span recording the realistic input and output as JSON attributes, as
    GenAI instrumentations do (attributes take no dicts)."""
    import json

    tracer = _otel_tracer()

    def run(ops: int) -> int:
        with tracer.start_as_current_span("outer"):
            start = perf_counter_ns()
            for _ in range(ops):
                with tracer.start_as_current_span("retrieve") as s:
                    s.set_attribute("input", json.dumps(realistic.QUERY))
                    s.set_attribute("output", json.dumps(realistic.RESULTS))
            return perf_counter_ns() - start

    return run


def library_contenders() -> list[Contender]:
    # Imported here, once src/ is on the path: the library is not installed in the venv.
    from posthog_lambda import _destination, configure, generation, posthog_traced, span

    # Every setting explicit: POSTHOG_* variables in the environment must not change the work.
    configure(enabled=True, privacy_mode=False, capture_input=True, capture_output=True, redact=True, sink=NullSink())

    # The loops take the count, rather than being called once per span, so that the library's
    # rows pay no function call per operation that the OpenTelemetry row does not.
    def spans(ops: int) -> None:
        for _ in range(ops):
            with span("retrieve", input=PAYLOAD) as s:
                s.update(output=OUTPUT)

    def generations(ops: int) -> None:
        for _ in range(ops):
            with generation("answer", model="gpt-4o", provider="openai", input=MESSAGES) as g:
                g.update(output="Paris", input_tokens=12, output_tokens=3)

    def hot_path(loop: Callable[[int], None]) -> Timed:
        # The outer span keeps the trace open, so the timed spans only record; the events are
        # built and sent when it ends, after the clock has stopped.
        def run(ops: int) -> int:
            with span("outer"):
                start = perf_counter_ns()
                loop(ops)
                return perf_counter_ns() - start

        return run

    def full_cost(loop: Callable[[int], None]) -> Timed:
        @posthog_traced
        def handler(event: Any, context: Any) -> str:
            loop(SPANS_PER_INVOCATION)
            return "ok"

        def run(ops: int) -> int:
            start = perf_counter_ns()
            for _ in range(ops // SPANS_PER_INVOCATION):
                handler({"question": PAYLOAD}, None)
            return perf_counter_ns() - start

        return run

    def real_spans(ops: int) -> None:
        for _ in range(ops):
            with span("retrieve", input=realistic.QUERY) as s:
                s.update(output=realistic.RESULTS)

    def real_handler(ops: int) -> None:
        # The realistic handler's mix: five retrievals for each generation with messages.
        for n in range(ops):
            if n % 6 == 5:
                with generation("answer", model="gpt-4o-mini", provider="openai", input=realistic.MESSAGES) as g:
                    g.update(output=realistic.CHOICES, input_tokens=120, output_tokens=48)
            else:
                with span("retrieve", input=realistic.QUERY) as s:
                    s.update(output=realistic.RESULTS)

    def through_socket(loop: Callable[[int], None], drain: SocketDrain) -> Timed:
        # The extension's path: records written as frames to its socket, read by another process.
        run = full_cost(loop)

        def timed(ops: int) -> int:
            saved = _destination.exporter
            _destination.exporter = lambda: drain.exporter  # type: ignore[assignment]
            try:
                return run(ops)
            finally:
                _destination.exporter = saved  # type: ignore[assignment]

        return timed

    check_events(full_cost(spans), full_cost(generations))
    check_realistic(full_cost(real_spans))
    drain = SocketDrain()
    return [
        Contender("span", "c. posthog-lambda span, enter/exit", hot_path(spans)),
        Contender("span_full", "d. posthog-lambda span, full cost", full_cost(spans)),
        Contender("generation", "e. posthog-lambda generation, enter/exit", hot_path(generations)),
        Contender("generation_full", "f. posthog-lambda generation, full cost", full_cost(generations)),
        Contender("real_span", "k. posthog-lambda span, dict input and output, enter/exit", hot_path(real_spans)),
        Contender(
            "real_full",
            "l. posthog-lambda span, realistic mix (5 dict spans : 1 generation with messages), full cost "
            "through the extension's socket",
            through_socket(real_handler, drain),
        ),
    ]


DRAIN = """
import os, socket, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen()
print("ready", flush=True)
while True:
    connection, _ = server.accept()
    while connection.recv(1 << 20):
        pass
"""


class SocketDrain:
    """A process that reads the extension's socket and discards what it reads: the extension's
    side of the hand-off, at no cost to the process measured."""

    def __init__(self) -> None:
        import atexit
        import subprocess
        import tempfile

        from posthog_lambda._socket_exporter import SocketExporter

        directory = tempfile.mkdtemp(prefix="posthog-lambda-bench-")
        path = os.path.join(directory, "ph.sock")
        self.process = subprocess.Popen([sys.executable, "-c", DRAIN, path], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the socket drain did not start")
        self.exporter = SocketExporter(path, os.path.join(directory, "spool"))
        atexit.register(self.process.kill)


def check_realistic(run: Timed) -> None:
    """Stop unless the realistic spans' events hold their dicts, as sent."""
    from posthog_lambda.testing import capture_events

    with capture_events() as events:
        run(SPANS_PER_INVOCATION)
    spans = [e["properties"] for e in events if e["event"] == "$ai_span"]
    if len(spans) != SPANS_PER_INVOCATION or spans[0].get("$ai_input_state") != realistic.QUERY:
        raise SystemExit("the library did not record the realistic payloads the benchmark expects")


def posthog_contenders(port: int) -> list[Contender]:
    """posthog-python's ``Client.capture`` of the event a span or generation makes: the ids,
    parent and latency a user must supply for PostHog's trace view, made in the loop."""
    from posthog import Posthog

    # Its consumer thread fails to connect and logs each failure: not what is measured.
    logging.getLogger("posthog").disabled = True
    # Defaults but the host: one background consumer thread sends batches of 100 (or every
    # 5 s), so capture only builds and enqueues; the queue holds 10,000.
    client = Posthog("phc_bench", host=f"http://127.0.0.1:{port}")
    trace = str(uuid.uuid4())

    def capturing(event: str, name: str, properties: dict[str, Any]) -> Timed:
        def run(ops: int) -> int:
            start = perf_counter_ns()
            for _ in range(ops):
                began = time.perf_counter()
                client.capture(
                    event,
                    distinct_id=trace,
                    properties={
                        "$ai_trace_id": trace,
                        "$ai_span_id": str(uuid.uuid4()),
                        "$ai_parent_id": trace,
                        "$ai_span_name": name,
                        **properties,
                        "$ai_latency": time.perf_counter() - began,
                    },
                )
            return perf_counter_ns() - start

        return run

    spans = capturing("$ai_span", "retrieve", {"$ai_input_state": PAYLOAD, "$ai_output_state": OUTPUT})
    generations = capturing(
        "$ai_generation",
        "answer",
        {
            "$ai_model": "gpt-4o",
            "$ai_provider": "openai",
            "$ai_input": MESSAGES,
            "$ai_output_choices": CHOICES,
            "$ai_input_tokens": 12,
            "$ai_output_tokens": 3,
        },
    )

    def drain() -> None:
        # Nothing can be delivered, so the queue would fill and capture would start dropping,
        # which is cheaper than enqueueing: empty it between batches.
        queue = client.queue
        while True:
            try:
                queue.get_nowait()
            except Exception:
                return
            queue.task_done()

    drain()
    for run, name, check in ((spans, "$ai_span", "$ai_output_state"), (generations, "$ai_generation", "$ai_model")):
        run(10)
        queued = list(client.queue.queue)
        if not queued or queued[-1]["event"] != name or check not in queued[-1]["properties"]:
            raise SystemExit(f"posthog-python did not enqueue the {name} events the benchmark expects")
        drain()
    return [
        Contender("posthog_span", "g. posthog-python `Client.capture`, per span", spans, drain),
        Contender("posthog_generation", "h. posthog-python `Client.capture`, per generation", generations, drain),
    ]


def langfuse_contenders(port: int, batch: int) -> list[Contender]:
    """Langfuse's ``@observe`` on a function, as a span and as a generation, inside an outer
    observation."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The span processor's queue and export size come from here: larger than a batch, so that
    # no export starts while a batch is timed (exports go to a closed port and would retry).
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(2 * batch)
    from langfuse import Langfuse, observe

    logging.getLogger("langfuse").disabled = True
    provider = TracerProvider(sampler=ALWAYS_ON)  # its own, rather than the global one Langfuse would set
    client = Langfuse(
        public_key="pk-lf-bench",
        secret_key="sk-lf-bench",
        base_url=f"http://127.0.0.1:{port}",
        flush_at=2 * batch,
        flush_interval=3600,
        tracer_provider=provider,
    )
    processors = provider._active_span_processor._span_processors  # no public way to reach it
    processor = next(p for p in processors if isinstance(p, BatchSpanProcessor))

    @observe(name="retrieve")
    def retrieve(question: str) -> str:
        return OUTPUT

    @observe(name="answer", as_type="generation")
    def answer(messages: list[dict[str, str]]) -> str:
        client.update_current_generation(model="gpt-4o", usage_details={"input": 12, "output": 3})
        return "Paris"

    def timed(call: Callable[[], object]) -> Timed:
        def run(ops: int) -> int:
            with client.start_as_current_observation(name="outer"):
                start = perf_counter_ns()
                for _ in range(ops):
                    call()
                return perf_counter_ns() - start

        return run

    def drop_queued() -> None:
        # Spans wait in the processor's queue for an export that cannot succeed: drop them
        # between batches, unexported (flush() would retry against the closed port).
        processor._batch_processor._queue.clear()

    spans, generations = timed(lambda: retrieve(PAYLOAD)), timed(lambda: answer(MESSAGES))
    drop_queued()
    spans(10)
    generations(10)
    queued = list(processor._batch_processor._queue)
    names = Counter(span.name for span in queued)
    models = [span.attributes.get("langfuse.observation.model.name") for span in queued if span.name == "answer"]
    if names != {"retrieve": 10, "answer": 10, "outer": 2} or models[0] != "gpt-4o":
        raise SystemExit(f"Langfuse did not record the spans the benchmark expects: {dict(names)}, {models[:1]}")
    drop_queued()
    return [
        Contender("langfuse_span", "i. Langfuse `@observe`, per span", spans, drop_queued),
        Contender("langfuse_generation", 'j. Langfuse `@observe(as_type="generation")`', generations, drop_queued),
    ]


def check_events(*runs: Timed) -> None:
    """Stop if the library records nothing: it swallows its own errors, and a span that fails
    early would look very cheap."""
    from posthog_lambda.testing import capture_events

    with capture_events() as events:
        for run in runs:
            run(SPANS_PER_INVOCATION)
    kinds = Counter(e["event"] for e in events)
    expected = {"$ai_span": SPANS_PER_INVOCATION, "$ai_generation": SPANS_PER_INVOCATION, "$ai_trace": len(runs)}
    by_kind = {e["event"]: e["properties"] for e in events}
    if (
        kinds != expected
        or by_kind["$ai_span"].get("$ai_output_state") != OUTPUT
        or by_kind["$ai_generation"].get("$ai_input_tokens") != 12
    ):
        raise SystemExit(f"the library did not record what the benchmark expects: {dict(kinds)}")


def measure(contenders: list[Contender], rounds: int, batch: int) -> dict[str, list[float]]:
    """Microseconds per operation, one sample per round for each contender."""
    for contender in contenders:
        if contender.reset is not None:
            contender.reset()
        contender.run(batch)  # warm-up: caches, the specializing interpreter, allocator arenas
    samples: dict[str, list[float]] = {c.key: [] for c in contenders}
    for i in range(rounds):
        shift = i % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            # Start each batch without the previous contender's garbage to collect.
            gc.collect()
            if contender.reset is not None:
                contender.reset()
            samples[contender.key].append(contender.run(batch) / batch / 1000)
    return samples


def ratio(samples: dict[str, list[float]], slower: str, faster: str) -> float:
    """How many times ``faster``'s time goes into ``slower``'s, within each round; median over rounds."""
    return median([s / f for s, f in zip(samples[slower], samples[faster], strict=True)])


def ratio_to_otel(samples: dict[str, list[float]], key: str) -> float:
    return ratio(samples, "otel", key)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def report(
    contenders: list[Contender], samples: dict[str, list[float]], rounds: int, batch: int
) -> tuple[str, list[Target], list[str]]:
    lines = [
        run_description(),
        f"- {rounds} rounds of {batch} operations per contender",
        "",
        "| Contender | median µs/op | p99 µs/op | OpenTelemetry span / this |",
        "|---|---:|---:|---:|",
    ]
    for c in contenders:
        values = samples[c.key]
        to_otel = ratio_to_otel(samples, c.key)
        shown = f"{to_otel:.1f}x" if to_otel >= 1 else f"{to_otel:.2f}x"
        lines.append(f"| {c.label} | {median(values):.3f} | {p99(values):.3f} | {shown} |")
    hot, full = ratio_to_otel(samples, "span"), ratio_to_otel(samples, "span_full")
    met = hot >= TARGET
    per_span = {key: ratio(samples, key, "span_full") for key in ("posthog_span", "langfuse_span")}
    per_generation = {
        key: ratio(samples, key, "generation_full") for key in ("posthog_generation", "langfuse_generation")
    }
    lines += [
        "",
        f"target: >={TARGET:.0f}x cheaper than OTel span: {verdict(met)} ({hot:.1f})",
        "",
        f"full cost (row d, events built and handed to the sink): OTel span / this = {full:.2f}, "
        + ("cheaper" if full >= 1 else "dearer")
        + " than the OTel span",
        f"per span, against posthog-lambda's full cost (row d): `Client.capture` {per_span['posthog_span']:.1f}x, "
        f"Langfuse `@observe` {per_span['langfuse_span']:.1f}x; per generation (row f): `Client.capture` "
        f"{per_generation['posthog_generation']:.1f}x, Langfuse {per_generation['langfuse_generation']:.1f}x",
    ]
    us = {key: median(values) for key, values in samples.items()}
    summary = [
        f'a span (`with span("retrieve", input=q) as s: s.update(output=a)`) costs {us["span"]:.1f} µs to enter '
        f"and leave, {hot:.1f}x less than an OpenTelemetry SDK span with a no-op exporter; with its PostHog event "
        f"built and handed over, {us['span_full']:.1f} µs. The same event through posthog-python's "
        f"`Client.capture` costs {us['posthog_span']:.0f} µs ({per_span['posthog_span']:.1f}x that), a Langfuse "
        f"`@observe` span {us['langfuse_span']:.0f} µs ({per_span['langfuse_span']:.1f}x)",
        f"a generation with messages and token counts: {us['generation']:.1f} µs to enter and leave, "
        f"{us['generation_full']:.1f} µs with its event; `Client.capture` {us['posthog_generation']:.0f} µs, "
        f"Langfuse {us['langfuse_generation']:.0f} µs",
    ]
    real_hot, real_full = ratio_to_otel(samples, "real_span"), ratio_to_otel(samples, "real_full")
    lines += [
        "",
        f"realistic payloads (rows k, l: `{_short(realistic.QUERY)}` in, a dict of two lists out; generations "
        f"with a system and a user message in, an assistant message with a tool call out): enter/exit "
        f"{real_hot:.1f}x, full cost through the socket {real_full:.1f}x cheaper than the OTel span (row b); "
        f"the OTel span recording the same dicts as JSON attributes (row m) costs "
        f"{ratio(samples, 'otel_real', 'real_full'):.1f}x row l",
        f"target: realistic span enter/exit >={TARGET_REAL_HOT:.0f}x cheaper than OTel span: "
        f"{verdict(real_hot >= TARGET_REAL_HOT)} ({real_hot:.1f})",
        f"target: realistic full per-span cost >={TARGET_REAL_FULL:.0f}x cheaper than OTel span: "
        f"{verdict(real_full >= TARGET_REAL_FULL)} ({real_full:.1f})",
    ]
    summary.append(
        f"with the payloads real apps record (a retrieval query and its results as dicts, chat messages, a tool "
        f"call): {us['real_span']:.1f} µs to enter and leave a span, {real_hot:.1f}x less than the OpenTelemetry "
        f"span; {us['real_full']:.1f} µs per span all told (capture, record, frame, socket), {real_full:.1f}x less"
    )
    targets = [
        Target(2, "span enter/exit at least 10x cheaper than an OpenTelemetry SDK span", f"{hot:.1f}x", met),
        Target(
            15,
            "span enter/exit with dict input and output at least 10x cheaper than an OpenTelemetry SDK span",
            f"{real_hot:.1f}x",
            real_hot >= TARGET_REAL_HOT,
        ),
        Target(
            15,
            "full per-span cost with realistic payloads at least 3x cheaper than an OpenTelemetry SDK span",
            f"{real_full:.1f}x",
            real_full >= TARGET_REAL_FULL,
        ),
    ]
    return "\n".join(lines), targets, summary


def main() -> None:
    parser = arguments(__doc__, "the span_cost section of BENCHMARKS.md")
    parser.add_argument("--rounds", type=positive, default=ROUNDS)
    parser.add_argument(
        "--batch", type=int, default=BATCH, help=f"operations per round, a multiple of {SPANS_PER_INVOCATION}"
    )
    args = parser.parse_args()
    if args.batch < SPANS_PER_INVOCATION or args.batch % SPANS_PER_INVOCATION:
        parser.error(f"--batch must be a positive multiple of {SPANS_PER_INVOCATION}")

    sys.path.insert(0, str(SRC))
    port = closed_port()
    contenders = [
        Contender("baseline", "a. baseline: same loop, no tracing", baseline()),
        Contender("otel", "b. OpenTelemetry SDK span", otel_span()),
        *library_contenders(),
        *posthog_contenders(port),
        *langfuse_contenders(port, args.batch),
        Contender(
            "otel_real", "m. OpenTelemetry SDK span, dict input and output as JSON attributes", otel_realistic_span()
        ),
    ]
    samples = measure(contenders, args.rounds, args.batch)
    for contender in contenders:
        if contender.reset is not None:
            contender.reset()  # nothing left for their exit handlers to try to send
    text, targets, summary = report(contenders, samples, args.rounds, args.batch)
    print(text)
    if args.write:
        publish("span_cost", text, targets, summary)


if __name__ == "__main__":
    main()
