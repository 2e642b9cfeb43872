"""How many events PostHog receives (and bills) per invocation, in each flush mode.

A traced handler making 3 spans and a generation (5 events of its own: its ``$ai_trace``, the
spans, the generation) is invoked ``--invocations`` times in the local Lambda environment with
the built layer and its Telemetry API, then the environment shuts down; the local capture server
counts what arrived, by event name. Lambda's figures (billed duration, memory, Init, cost) are
properties of each ``$ai_trace``, which waits for its ``platform.report``: no event of their own.
Not timed, so the machine's load does not change the figures.

    .venv/bin/python bench/event_economy.py [--write] [--invocations N]
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

from _common import SRC, arguments, build_layer, positive, run_description
from _publish import Target, publish

INVOCATIONS = 12
MODES = ("end", "batch", "adaptive")
OWN_EVENTS = 5
HANDLER = textwrap.dedent(
    """
    from posthog_lambda import generation, posthog_traced, span

    @posthog_traced(name="answer")
    def handler(event, context):
        with span("retrieve", input={"q": event["q"]}) as s:
            s.update(output=["doc 1", "doc 2"])
        with span("rerank"):
            pass
        with span("draft"), generation("llm", model="gpt-4o-mini", provider="openai", input=event["q"]) as g:
            g.update(output="an answer", input_tokens=12, output_tokens=3)
        return {"ok": True}
    """
)


def count(layer: Path, root: Path, mode: str, invocations: int) -> tuple[Counter[str], int]:
    """Events received by name, and how many ``$ai_trace`` carry the billed duration."""
    from posthog_lambda.local import CaptureServer, LambdaEnvironment

    function = root / f"function-{mode}"
    function.mkdir()
    (function / "app.py").write_text(HANDLER)
    with CaptureServer(api_key="phc_local") as posthog:
        env = {"POSTHOG_API_KEY": "phc_local", "POSTHOG_HOST": posthog.url, "POSTHOG_LAMBDA_FLUSH": mode}
        with LambdaEnvironment(function, "app.handler", layer_dir=layer, env=env) as lambda_env:
            results = [lambda_env.invoke({"q": f"question {n}"}) for n in range(invocations)]
            lambda_env.shutdown()
        if any(r.status != "success" for r in results):
            raise SystemExit(f"{mode}: an invocation failed: {[r.error for r in results if r.error]}")
        posthog.wait_for_events(invocations, timeout=10, predicate=lambda e: e.name == "$ai_trace")
        names = Counter(e.name for e in posthog.events)
        billed = sum(1 for e in posthog.events if e.name == "$ai_trace" and "lambda_billed_duration_ms" in e.properties)
    return names, billed


def main() -> None:
    parser = arguments(__doc__, "the event_economy section of BENCHMARKS.md and the Targets table")
    parser.add_argument("--invocations", type=positive, default=INVOCATIONS)
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    rows = [
        "| Flush mode | events per invocation | `$ai_metric` events | `$ai_trace` with Lambda's figures | by name |",
        "|---|---:|---:|---:|---|",
    ]
    per_mode: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layer = build_layer(root / "layer")
        for mode in MODES:
            names, billed = count(layer, root, mode, args.invocations)
            per_mode[mode] = sum(names.values()) / args.invocations
            listed = ", ".join(f"{name} {n}" for name, n in sorted(names.items()))
            rows.append(
                f"| `{mode}` | {per_mode[mode]:.2f} | {names['$ai_metric']} | {billed} of {names['$ai_trace']} "
                f"| {listed} |"
            )
    met = all(value == OWN_EVENTS for value in per_mode.values())
    figures = ", ".join(f"{mode} {value:.2f}" for mode, value in per_mode.items())
    body = "\n".join(
        [
            run_description(),
            "",
            f"{args.invocations} invocations per mode of a handler making {OWN_EVENTS} events of its own "
            "(its `$ai_trace`, 3 spans, a generation), then SHUTDOWN.",
            "",
            *rows,
            "",
            f"target: {OWN_EVENTS}.00 events per invocation in every mode: {'MET' if met else 'MISSED'} ({figures})",
        ]
    )
    print(body)
    if args.write:
        targets = [Target(17, f"{OWN_EVENTS}.00 events per invocation in every flush mode", figures, met)]
        summary = [
            f"Events per invocation for a handler making {OWN_EVENTS} events of its own: {figures} "
            "(Lambda's figures are properties of each `$ai_trace`, not events)"
        ]
        publish("event_economy", body, targets, summary)


if __name__ == "__main__":
    main()
