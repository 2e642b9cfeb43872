"""What ``import posthog_lambda`` adds to a fresh interpreter, next to ``import posthog`` and
``import langfuse``.

Every round starts one interpreter per command, in an order that rotates from round to round,
so that the noise of a shared machine lands on every command alike. The added cost of an import
is the median over rounds of its difference from the bare interpreter (``-c pass``) started in
the same round. Separate ``-X importtime`` runs give the package's own cumulative import time,
without the interpreter's start-up (and with importtime's own overhead).

    .venv/bin/python bench/import_cost.py [--write] [--rounds N]
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from time import perf_counter_ns

from _common import SRC, arguments, median, p99, positive, run_description
from _publish import Target, publish, verdict

ROUNDS = 20
TARGET_MS = 5.0
MODULES = ("posthog_lambda", "posthog", "langfuse")

# Only what the commands need, the same for all: inherited PYTHON* variables (PYTHONDEVMODE,
# PYTHONPROFILEIMPORTTIME, ...) or POSTHOG_LAMBDA_DEBUG would change what is measured. -I or -E
# cannot do this, since they also drop PYTHONPATH, which is how the library is found.
ENV = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(SRC)}


def wall_ms(code: str) -> float:
    start = perf_counter_ns()
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True, stdout=subprocess.DEVNULL)
    return (perf_counter_ns() - start) / 1e6


def importtime_ms(module: str) -> float:
    """The cumulative time of ``module``'s own line in ``-X importtime`` output."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=ENV,
        check=True,
        capture_output=True,
        text=True,
    )
    # "import time: self [us] | cumulative | imported package"; submodules have dotted names.
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[2].strip() == module:
            return int(fields[1]) / 1000
    raise SystemExit(f"no line for {module} in -X importtime output:\n{done.stderr}")


def measure(rounds: int) -> dict[str, list[float]]:
    jobs: dict[str, Callable[[], float]] = {"bare": functools.partial(wall_ms, "pass")}
    for module in MODULES:
        jobs[module] = functools.partial(wall_ms, f"import {module}")
        jobs[f"{module} importtime"] = functools.partial(importtime_ms, module)
    for job in jobs.values():
        job()  # warm-up: bytecode caches and the page cache
    names = list(jobs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(jobs[name]())
    return samples


def report(samples: dict[str, list[float]], rounds: int) -> tuple[str, list[Target], list[str]]:
    bare = samples["bare"]
    added = {m: median([x - b for x, b in zip(samples[m], bare, strict=True)]) for m in MODULES}
    lines = [
        run_description(),
        f"- {rounds} rounds, one fresh interpreter per command per round (plus one for each `-X importtime` run)",
        "",
        "| Command | median ms | p99 ms | added to bare, ms (median of per-round differences) "
        "| added / bare start-up | `-X importtime` cumulative ms (median) |",
        "|---|---:|---:|---:|---:|---:|",
        f'| `python -c "pass"` | {median(bare):.1f} | {p99(bare):.1f} | — | — | — |',
    ]
    for m in MODULES:
        values = samples[m]
        importtime = median(samples[f"{m} importtime"])
        lines.append(
            f'| `python -c "import {m}"` | {median(values):.1f} | {p99(values):.1f} | {added[m]:.1f} '
            f"| {added[m] / median(bare):.2f}x | {importtime:.1f} |"
        )
    ours = added["posthog_lambda"]
    met = ours < TARGET_MS
    lines += [
        "",
        f"target: import adds < {TARGET_MS:.0f} ms to a bare interpreter: {verdict(met)} ({ours:.1f} ms)",
        "",
        f"`import posthog` adds {added['posthog'] / ours:.1f}x what `import posthog_lambda` adds, "
        f"`import langfuse` {added['langfuse'] / ours:.1f}x",
    ]
    summary = [
        f"`import posthog_lambda` adds {ours:.1f} ms to a bare interpreter; `import posthog` adds "
        f"{added['posthog']:.0f} ms and `import langfuse` {added['langfuse']:.0f} ms: the library loads nothing "
        "beyond the cheap part of the standard library until it is used"
    ]
    targets = [Target(2, "`import posthog_lambda` adds under 5 ms to a bare interpreter", f"{ours:.1f} ms", met)]
    return "\n".join(lines), targets, summary


def main() -> None:
    parser = arguments(__doc__, "the import_cost section of BENCHMARKS.md")
    parser.add_argument("--rounds", type=positive, default=ROUNDS)
    args = parser.parse_args()
    samples = measure(args.rounds)
    text, targets, summary = report(samples, args.rounds)
    print(text)
    if args.write:
        publish("import_cost", text, targets, summary)


if __name__ == "__main__":
    main()
