"""How the cost of tracing grows with the spans per invocation: 1, 10, 100, 1,000.

The handler of ``_handlers.py`` with ``event["spans"]`` spans and no generation, untraced, with
posthog-lambda (`end` mode, so each invocation's events are sent after its response and their
billed time shows in its post-runtime), with posthog-python's Client + ``flush()`` and with
Langfuse's ``@observe`` + ``flush()``, in the local Lambda environment with receivers answering at
once; invoked in turns, level by level. Added response latency is the median of same-round
differences from the untraced handler; per span, that divided by the spans; per added span, the
growth from one level to the next divided by the spans added.

    .venv/bin/python bench/scaling.py [--write] [--invocations N]
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

from _common import SRC, arguments, build_layer, median, positive, run_description
from _lambda import SETUPS, Functions, Samples, minus, paired
from _publish import publish

INVOCATIONS = 30
LEVELS = (1, 10, 100, 1000)
KEYS = ["none", "end", "posthog", "langfuse"]
TRACED = KEYS[1:]
LINEAR = 1.5
"""Growth per added span within this factor from one step to the next: linear."""


def marginal_us(added: dict[int, float]) -> list[float]:
    """µs per added span between successive levels."""
    return [(added[b] - added[a]) * 1000 / (b - a) for a, b in itertools.pairwise(LEVELS)]


def shape(steps: list[float]) -> str:
    """Where the growth per added span changes by more than ``LINEAR``, if anywhere, judged from
    10 spans up: below that, the differences are within the machine's noise."""
    bends = [
        f"{LEVELS[i + 1]:,} spans ({before:.1f} -> {after:.1f} µs per added span)"
        for i, (before, after) in enumerate(itertools.pairwise(steps))
        if i >= 1 and (after > before * LINEAR or after < before / LINEAR)
    ]
    return "is linear from 10 spans up" if not bends else "bends at " + ", ".join(bends)


def main() -> None:
    parser = arguments(__doc__, "the scaling section of BENCHMARKS.md")
    parser.add_argument("--invocations", type=positive, default=INVOCATIONS, help="warm invocations per level, setup")
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))

    levels: dict[int, dict[str, Samples]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with Functions(KEYS, root, build_layer(root / "layer"), 0.0) as functions:
            functions.run(1, spans=LEVELS[0], generations=0)  # cold starts, not counted
            for spans in LEVELS:
                functions.run(1, spans=spans, generations=0)  # warm-up at this size
                levels[spans] = functions.run(args.invocations, spans=spans, generations=0)
        functions.check_delivered()

    added = {
        key: {n: paired(levels[n][key].latency, levels[n]["none"].latency, minus) for n in LEVELS} for key in TRACED
    }
    lines = [
        run_description(),
        f"- {args.invocations} warm invocations per level and setup; spans only (no generation); receivers "
        "answering at once; 128 MB",
        "",
        "| Spans per invocation | "
        + " | ".join(f"{SETUPS[k].label}: response minus (a), ms (µs per span)" for k in TRACED)
        + " | posthog-lambda post-runtime p50 ms |",
        "|---:|" + "---:|" * (len(TRACED) + 1),
    ]
    for n in LEVELS:
        cells = [f"{added[k][n]:+.2f} ({added[k][n] * 1000 / n:.1f})" for k in TRACED]
        lines.append(f"| {n:,} | " + " | ".join(cells) + f" | {median(levels[n]['end'].post):.2f} |")
    lines.append("")
    for key in TRACED:
        steps = marginal_us(added[key])
        lines.append(
            f"{SETUPS[key].label}: response latency per added span "
            + ", ".join(
                f"{s:.1f} µs ({a:,} -> {b:,})" for s, (a, b) in zip(steps, itertools.pairwise(LEVELS), strict=True)
            )
            + f": {shape(steps)}"
        )
    post = [median(levels[n]["end"].post) for n in LEVELS]
    post_steps = [(post[i + 1] - post[i]) * 1000 / (LEVELS[i + 1] - LEVELS[i]) for i in range(len(LEVELS) - 1)]
    lines.append(
        "posthog-lambda post-runtime (the extension taking in and sending the events) per added span: "
        + ", ".join(f"{s:.1f} µs" for s in post_steps)
        + f": {shape(post_steps)}"
    )
    text = "\n".join(lines)
    print(text)
    if args.write:
        ours, theirs = added["end"][1000], added["posthog"][1000]
        summary = [
            f"with 1,000 spans per invocation posthog-lambda adds {ours:.1f} ms to the response "
            f"({ours * 1000 / LEVELS[-1]:.1f} µs per span; posthog-python + flush() {theirs:.0f} ms, "
            f"Langfuse + flush() {added['langfuse'][1000]:.0f} ms) and {post[-1]:.0f} ms of billed time after it; "
            f"its response cost per span {shape(marginal_us(added['end']))}"
        ]
        publish("scaling", text, (), summary)


if __name__ == "__main__":
    main()
