"""Cost of a posthog-lambda span or generation next to an OpenTelemetry SDK span, in one process.

Every round times one batch of operations for each contender, in an order that rotates from
round to round, so that the noise of a shared machine lands on all contenders alike. Figures
are per operation: the median and p99 over rounds, and the OpenTelemetry span's time divided
by the contender's, taken within each round and then the median over rounds.

    .venv/bin/python bench/span_cost.py [--write] [--rounds N] [--batch N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from _common import SRC, median, p99, run_description, write_section

ROUNDS = 30
BATCH = 4000
SPANS_PER_INVOCATION = 100
TARGET = 10.0
PAYLOAD = "what is the capital of france"
# The same small input and output for every contender.
OUTPUT = "Paris is the capital of France."
MESSAGES = [{"role": "user", "content": "hi"}]

Timed = Callable[[int], int]
"""Runs ``ops`` operations and returns the nanoseconds of the timed part only."""


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    run: Timed


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


def otel_span() -> Timed:
    # ALWAYS_ON explicitly: OTEL_TRACES_SAMPLER in the environment must not turn recording off.
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
    tracer = provider.get_tracer("bench")

    def run(ops: int) -> int:
        with tracer.start_as_current_span("outer"):
            start = perf_counter_ns()
            for _ in range(ops):
                with tracer.start_as_current_span("retrieve") as s:
                    s.set_attribute("input", PAYLOAD)
                    s.set_attribute("output", OUTPUT)
            return perf_counter_ns() - start

    return run


def library_contenders() -> list[Contender]:
    # Imported here, once src/ is on the path: the library is not installed in the venv.
    from posthog_lambda import configure, generation, posthog_traced, span

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

    check_events(full_cost(spans), full_cost(generations))
    return [
        Contender("span", "c. posthog-lambda span, enter/exit", hot_path(spans)),
        Contender("span_full", "d. posthog-lambda span, full cost", full_cost(spans)),
        Contender("generation", "e. posthog-lambda generation, enter/exit", hot_path(generations)),
        Contender("generation_full", "f. posthog-lambda generation, full cost", full_cost(generations)),
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
        contender.run(batch)  # warm-up: caches, the specializing interpreter, allocator arenas
    samples: dict[str, list[float]] = {c.key: [] for c in contenders}
    for i in range(rounds):
        shift = i % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            # Start each batch without the previous contender's garbage to collect.
            gc.collect()
            samples[contender.key].append(contender.run(batch) / batch / 1000)
    return samples


def ratio_to_otel(samples: dict[str, list[float]], key: str) -> float:
    return median([o / x for o, x in zip(samples["otel"], samples[key], strict=True)])


def report(contenders: list[Contender], samples: dict[str, list[float]], rounds: int, batch: int) -> str:
    lines = [
        run_description(),
        f"- {rounds} rounds of {batch} operations per contender",
        "",
        "| Contender | median µs/op | p99 µs/op | OpenTelemetry span / this |",
        "|---|---:|---:|---:|",
    ]
    for c in contenders:
        values = samples[c.key]
        lines.append(f"| {c.label} | {median(values):.3f} | {p99(values):.3f} | {ratio_to_otel(samples, c.key):.1f}x |")
    hot, full = ratio_to_otel(samples, "span"), ratio_to_otel(samples, "span_full")
    verdict = "MET" if hot >= TARGET else "MISSED"
    lines += [
        "",
        f"target: >={TARGET:.0f}x cheaper than OTel span: {verdict} ({hot:.1f})",
        "",
        f"full cost (row d, events built and handed to the sink): OTel span / this = {full:.2f}, "
        + ("cheaper" if full >= 1 else "dearer")
        + " than the OTel span",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="also rewrite the span_cost section of BENCHMARKS.md")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--batch", type=int, default=BATCH, help=f"operations per round, a multiple of {SPANS_PER_INVOCATION}"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.batch < SPANS_PER_INVOCATION or args.batch % SPANS_PER_INVOCATION:
        parser.error(f"--rounds must be positive and --batch a positive multiple of {SPANS_PER_INVOCATION}")

    sys.path.insert(0, str(SRC))
    contenders = [
        Contender("baseline", "a. baseline: same loop, no tracing", baseline()),
        Contender("otel", "b. OpenTelemetry SDK span", otel_span()),
        *library_contenders(),
    ]
    samples = measure(contenders, args.rounds, args.batch)
    text = report(contenders, samples, args.rounds, args.batch)
    print(text)
    if args.write:
        write_section("span_cost", text)


if __name__ == "__main__":
    main()
