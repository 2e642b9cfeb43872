"""What tracing adds to a Lambda invocation, end to end, in the local Lambda environment: response
latency, billed time after the response, and Init (cold start).

The same handler (10 spans and 2 generations) traced each way a user could choose (``_lambda.py``:
no tracing, without a layer, with a do-nothing extension and with posthog-lambda's layer;
posthog-lambda with the built layer in each flush mode; posthog-python's Client with
``flush()`` at the end; Langfuse's ``@observe`` with ``flush()``), each in its own environment,
invoked in turns; once with receivers that answer at once and once with receivers that answer
after 50 ms (the round trip to PostHog or Langfuse over the internet). Then cold starts: each
environment shut down and invoked again, in turns.

    .venv/bin/python bench/e2e_overhead.py [--write] [--invocations N] [--cold N] [--delays MS,MS]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import RESULTS, SRC, arguments, build_layer, median, p99, positive, run_description
from _lambda import SETUPS, Functions, Samples, minus, over, paired
from _publish import Target, publish, verdict

INVOCATIONS = 150
COLD = 10
DELAYS_MS = (0.0, 50.0)
WARM = [
    "none",
    "none_noop",
    "none_layer",
    "end",
    "batch",
    "adaptive",
    "posthog",
    "langfuse",
    "none_layer_real",
    "none_layer_real_batch",
    "end_real",
    "batch_real",
]
COLD_START = ["none", "none_noop", "none_layer", "end", "posthog", "langfuse"]
CHARTED = ["none", "end", "batch", "adaptive", "posthog", "langfuse"]
TARGET_LATENCY_MS = 0.2
TARGET_POST_RUNTIME_MS = 1.0
TARGET_UNTRACED_POST_MS = 1.0
CHART = RESULTS / "overhead.png"


def warm_table(samples: dict[str, Samples]) -> list[str]:
    base = samples["none"]
    lines = [
        "| Setup | response latency p50 / p99 ms | minus (a), ms | post-runtime p50 / p99 ms | minus (a), ms "
        "| duration (billed) p50 ms | / (a) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in samples.items():
        lines.append(
            f"| {SETUPS[key].label} | {median(s.latency):.2f} / {p99(s.latency):.2f} "
            f"| {paired(s.latency, base.latency, minus):+.2f} | {median(s.post):.2f} / {p99(s.post):.2f} "
            f"| {paired(s.post, base.post, minus):+.2f} | {median(s.duration):.2f} "
            f"| {paired(s.duration, base.duration, over):.2f}x |"
        )
    return lines


def cold_table(samples: dict[str, Samples]) -> list[str]:
    base = samples["none"]
    lines = [
        "| Setup | Init p50 / p99 ms | minus (a), ms | extension start to register p50 ms |",
        "|---|---:|---:|---:|",
    ]
    for key in COLD_START:
        s = samples[key]
        register = f"{median(s.register):.1f}" if s.register else "—"
        lines.append(
            f"| {SETUPS[key].label} | {median(s.init):.1f} / {p99(s.init):.1f} "
            f"| {paired(s.init, base.init, minus):+.1f} | {register} |"
        )
    return lines


def main() -> None:
    parser = arguments(__doc__, "the e2e_overhead section and the chart")
    parser.add_argument("--invocations", type=positive, default=INVOCATIONS, help="warm invocations per setup, delay")
    parser.add_argument("--cold", type=positive, default=COLD, help="cold starts per setup")
    parser.add_argument("--delays", default=",".join(f"{d:g}" for d in DELAYS_MS), help="receiver delays, ms")
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    if 0.0 not in delays:
        parser.error("--delays must include 0")
    sys.path.insert(0, str(SRC))

    warm: dict[float, dict[str, Samples]] = {}
    cold: dict[str, Samples] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layer = build_layer(root / "layer")
        for delay in delays:
            with Functions(WARM, root, layer, delay) as functions:
                functions.run(1)  # each environment's first invocation is its cold start: not counted
                warm[delay] = functions.run(args.invocations)
                if delay == 0.0:
                    cold = functions.run(args.cold, cold=True, keys=COLD_START)
            functions.check_delivered()

    text, targets, summary = report(warm, cold, args.invocations, args.cold)
    print(text)
    if args.write:
        from _chart import overhead_chart

        overhead_chart({d: {SETUPS[k].label: warm[d][k] for k in CHARTED} for d in warm}, CHART)
        print(f"wrote {CHART.relative_to(RESULTS.parent.parent)}")
        publish("e2e_overhead", text, targets, summary)


def report(
    warm: dict[float, dict[str, Samples]], cold: dict[str, Samples], invocations: int, cold_rounds: int
) -> tuple[str, list[Target], list[str]]:
    lines = [
        run_description(),
        f"- {invocations} warm invocations per setup and receiver delay, after one cold one; then {cold_rounds} "
        "cold starts per setup; 10 spans and 2 generations per invocation; 128 MB; chart: "
        "[bench/results/overhead.png](bench/results/overhead.png)",
    ]
    for delay, samples in warm.items():
        lines += ["", f"Receivers answering after {delay:.0f} ms:", "", *warm_table(samples)]
    lines += ["", "Cold starts (receivers answering at once):", "", *cold_table(cold)]

    now = warm[0.0]
    base, untraced = now["none"], now["none_layer"]
    added = paired(now["end"].latency, base.latency, minus)
    decorator = paired(now["end"].latency, untraced.latency, minus)
    batch_post = median(now["batch"].post)
    untraced_post = median(untraced.post)
    sdk = paired(now["posthog"].latency, base.latency, minus)
    langfuse = paired(now["langfuse"].latency, base.latency, minus)
    init_added = paired(cold["end"].init, cold["none"].init, minus)
    real = {
        mode: paired(now[f"{mode}_real"].latency, now[baseline].latency, minus)
        for mode, baseline in (("end", "none_layer_real"), ("batch", "none_layer_real_batch"))
    }
    lines += [
        "",
        "realistic payloads (rows e, f; `bench/_payloads.py`: each span a retrieval query in and its results out, "
        "each generation a system and a user message in and an assistant message with a tool call out):",
        *(
            f"target: response latency of the decorated handler minus the undecorated one, realistic payloads, "
            f"`{mode}` mode, both with the layer, p50 <= {TARGET_LATENCY_MS} ms: "
            f"{verdict(figure <= TARGET_LATENCY_MS)} ({figure:.3f} ms)"
            for mode, figure in real.items()
        ),
    ]
    lines += [
        "",
        f"target: response latency of the decorated handler (`end` mode) minus the undecorated one, both with the "
        f"layer, p50 <= {TARGET_LATENCY_MS} ms: {verdict(decorator <= TARGET_LATENCY_MS)} ({decorator:.3f} ms; "
        f"against no layer and no tracing: {added:.3f} ms)",
        f"target: post-runtime duration in `batch` mode under steady load, median <= {TARGET_POST_RUNTIME_MS} ms: "
        f"{verdict(batch_post <= TARGET_POST_RUNTIME_MS)} ({batch_post:.3f} ms)",
        f"target: post-runtime of an untraced handler with the layer attached stays near zero (median <= "
        f"{TARGET_UNTRACED_POST_MS} ms): {verdict(untraced_post <= TARGET_UNTRACED_POST_MS)} ({untraced_post:.3f} ms)",
        f"posthog-python with flush() adds {sdk:.2f} ms to every response and Langfuse with flush() {langfuse:.2f} ms "
        f"(posthog-lambda, `end` mode: {added:.2f} ms); the layer adds {init_added:.1f} ms to Init",
    ]
    slow = warm.get(50.0)
    presence = paired(untraced.latency, base.latency, minus)
    any_extension = paired(now["none_noop"].latency, base.latency, minus)
    summary = [
        f"end to end in the local Lambda environment (10 spans, 2 generations per invocation), posthog-lambda adds "
        f"{added:.2f} ms to the response: {decorator:.2f} ms for the decorator, {presence:.2f} ms for its extension "
        f"being there (an untraced handler with the layer), of which this environment charges any extension about "
        f"as much ({any_extension:.2f} ms with one that does nothing). It sends after the response: "
        f"{median(now['end'].post):.1f} ms of billed time per invocation in `end` mode, "
        f"{batch_post:.1f} ms in `batch` mode under steady load. posthog-python with `flush()` adds {sdk:.1f} ms "
        f"and Langfuse with `flush()` {langfuse:.1f} ms to every response",
    ]
    if slow is not None:
        summary.append(
            "with 50 ms between request and answer (an internet round trip), the response with posthog-lambda "
            f"grows by only {paired(slow['end'].latency, slow['none'].latency, minus):.1f} ms, with posthog-python "
            f"by {paired(slow['posthog'].latency, slow['none'].latency, minus):.0f} ms and with Langfuse by "
            f"{paired(slow['langfuse'].latency, slow['none'].latency, minus):.0f} ms; the billed duration is about the "
            f"same for all three ({median(slow['end'].duration):.0f}, {median(slow['posthog'].duration):.0f} and "
            f"{median(slow['langfuse'].duration):.0f} ms against {median(slow['none'].duration):.1f} ms untraced): "
            "posthog-lambda moves the wait off the response, not off the bill"
        )
    summary.append(
        f"cold start in the local environment: the layer and decorator add {init_added:.0f} ms to Init, a "
        f"do-nothing extension {paired(cold['none_noop'].init, cold['none'].init, minus):.0f} ms (Lambda starts the "
        f"runtime only once every extension has registered; here each also starts through this environment's "
        f"sandbox wrapper: the extension alone is measured below); posthog-python adds "
        f"{paired(cold['posthog'].init, cold['none'].init, minus):.0f} ms, Langfuse "
        f"{paired(cold['langfuse'].init, cold['none'].init, minus):.0f} ms"
    )
    targets = [
        Target(
            4,
            "response latency, decorated minus undecorated handler (layer on both, `end` mode), p50 <= 0.2 ms",
            f"{decorator:.3f} ms ({added:.3f} ms against no layer)",
            decorator <= TARGET_LATENCY_MS,
        ),
        Target(
            4,
            "post-runtime duration in `batch` mode under steady load, median <= 1 ms",
            f"{batch_post:.3f} ms",
            batch_post <= TARGET_POST_RUNTIME_MS,
        ),
        Target(
            6,
            "untraced handler with the layer: post-runtime near zero (median <= 1 ms)",
            f"{untraced_post:.3f} ms",
            untraced_post <= TARGET_UNTRACED_POST_MS,
        ),
    ]
    targets += [
        Target(
            15,
            f"realistic payloads: response latency, decorated minus undecorated (layer on both, `{mode}` mode), "
            "p50 <= 0.2 ms",
            f"{figure:.3f} ms",
            figure <= TARGET_LATENCY_MS,
        )
        for mode, figure in real.items()
    ]
    summary.append(
        f"with the payloads real apps record (dict queries and results, message lists, a tool call), the decorator "
        f"adds {real['end']:.2f} ms to the response in `end` mode and {real['batch']:.2f} ms in `batch` mode"
    )
    return "\n".join(lines), targets, summary


if __name__ == "__main__":
    main()
