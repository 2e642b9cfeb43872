"""Run every benchmark with ``--write`` (what ``make bench`` does), one after the other, printing
each one's wall time; then record the times, so that the 10-minute budget is checked too.

    .venv/bin/python bench/run_all.py [--quick]

``--quick`` passes each script its smallest useful rounds: for trying the scripts out, not for
figures (it still rewrites BENCHMARKS.md, README.md and the chart).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, run_description
from _publish import Target, publish, verdict

BENCH = Path(__file__).resolve().parent
SCRIPTS: list[tuple[str, list[str]]] = [
    ("layer_size.py", []),
    ("import_cost.py", ["--rounds", "3"]),
    ("span_cost.py", ["--rounds", "3", "--batch", "1000"]),
    ("emulator_latency.py", ["--invocations", "5"]),
    ("e2e_overhead.py", ["--invocations", "5", "--cold", "2"]),
    ("scaling.py", ["--invocations", "3"]),
    ("extension_start.py", ["--rounds", "3"]),
    ("extension_throughput.py", ["--rounds", "2"]),
    ("managed_instances.py", ["--rounds", "2"]),
    ("cpu_share.py", ["--invocations", "20", "--cold", "2"]),
    ("otel_spans.py", ["--rounds", "3", "--invocations", "10"]),
    ("event_economy.py", ["--invocations", "4"]),
    ("propagation.py", ["--rounds", "3", "--batch", "300"]),
]
"""Each script, and its ``--quick`` arguments."""
BUDGET_S = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few rounds: a rough run")
    args = parser.parse_args()
    times: list[tuple[str, float]] = []
    failed: list[str] = []
    started = time.perf_counter()
    for script, quick in SCRIPTS:
        command = [sys.executable, str(BENCH / script), "--write", *(quick if args.quick else [])]
        print(f"== {' '.join(command[1:])}", flush=True)
        began = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, check=False)
        times.append((script, time.perf_counter() - began))
        print(f"== {script}: {times[-1][1]:.0f} s (exit status {done.returncode})", flush=True)
        if done.returncode:
            failed.append(script)
    total = time.perf_counter() - started
    print(f"== all benchmarks: {total:.0f} s")
    if failed:
        # The others' sections are rewritten; these keep their previous figures.
        raise SystemExit(f"failed, their sections not rewritten: {', '.join(failed)}")
    lines = [
        run_description(),
        "",
        "| Script | wall time s |",
        "|---|---:|",
        *(f"| `bench/{script}` | {seconds:.0f} |" for script, seconds in times),
        f"| all | {total:.0f} |",
    ]
    met = total <= BUDGET_S
    lines += ["", f"target: every benchmark in under 10 minutes: {verdict(met)} ({total / 60:.1f} min)"]
    if args.quick:
        lines.append("(a `--quick` run: few rounds, rough figures)")
    targets = [Target(8, "`make bench` runs every benchmark in under 10 minutes", f"{total / 60:.1f} min", met)]
    publish("make_bench", "\n".join(lines), targets)


if __name__ == "__main__":
    main()
