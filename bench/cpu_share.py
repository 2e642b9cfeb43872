"""What posthog-lambda costs at Lambda's CPU share: the local Lambda environment with
``cpu_share=True`` gives every process of the sandbox (runtime, extension) 128/1769 of a vCPU at
128 MB and one vCPU at 1,769 MB, as a CFS quota (100 ms period) on a cgroup of its own.

At each memory size, with the built layer: the undecorated handler and the decorated one
(``bench/_handlers.py``'s realistic pair: 10 spans with a dict query in and its results out, 2
generations with message lists and a tool call) in `end` mode, and the decorated one in `batch`
and `adaptive` mode, each in its own environment with its own local capture server, invoked in
rounds whose order rotates (each environment is invoked once per round, frozen in between). The
decorator's cost is the mean response latency of the decorated handler minus the undecorated one's:
under a quota latencies are bimodal (an invocation fits in what is left of the current 100 ms
period or waits for the next one), so means over many invocations, not medians. Post-runtime is
the billed time after the response (the runtime's response to the last ``next``), per flush mode.
Then cold starts: the undecorated handler without any layer and with the layer attached, each
environment shut down and invoked again, in turns; the extension's share of Init is the ratio of
the mean Inits. After the runs every decorated environment must have delivered every trace.

    .venv/bin/python bench/cpu_share.py [--write] [--quick] [--invocations N] [--cold N] [--memory MB,MB]
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _lambda
from _common import BENCHMARKS_MD, SRC, arguments, build_layer, capture_server, median, p99, positive, run_description
from _handlers import POSTHOG_LAMBDA_REALISTIC, UNTRACED_REALISTIC, expected_total
from _publish import Target, publish, verdict

TRACED_SOURCE = POSTHOG_LAMBDA_REALISTIC
"""The decorated handler; another variant from ``_handlers.py`` goes here (it must return
``{"total": expected_total(spans, generations)}`` and make one trace per invocation)."""
UNTRACED_SOURCE = UNTRACED_REALISTIC
"""The same work undecorated."""
SPANS, GENERATIONS = 10, 2
EVENT = {"spans": SPANS, "generations": GENERATIONS}
MEMORY_MB = (128, 1769)
INVOCATIONS = 100
COLD = 6
WARM_UP = 5
"""Warm invocations per environment before the counted ones (the first is its cold start)."""
QUICK = {"invocations": 20, "cold": 2}
TARGET_MEMORY_MB = 128
TARGET_LATENCY_MS = 2.0
TARGET_INIT_ADDED = 0.25
SECTION = "cpu_share"


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    source: str
    flush: str | None
    """The layer's flush mode (the layer is attached); None: no layer."""


SETUPS = {
    setup.key: setup
    for setup in (
        Setup("bare", "undecorated, no layer", UNTRACED_SOURCE, None),
        Setup("layer", "undecorated, layer attached (`end` mode)", UNTRACED_SOURCE, "end"),
        Setup("end", "decorated, `end` mode", TRACED_SOURCE, "end"),
        Setup("batch", "decorated, `batch` mode", TRACED_SOURCE, "batch"),
        Setup("adaptive", "decorated, `adaptive` mode (default)", TRACED_SOURCE, "adaptive"),
    )
}
WARM = ["layer", "end", "batch", "adaptive"]
COLD_START = ["bare", "layer"]


@dataclass
class Samples(_lambda.Samples):
    throttled: float = 0.0
    """Of the 100 ms periods in which its processes ran during the warm rounds, the share in
    which they used the quota up and were stopped."""
    invoked: int = 0


class Environments:
    """One local Lambda environment per setup at ``memory_mb`` with the CPU share, each with the
    layer (and a capture server) or none, in the temporary ``root``."""

    def __init__(self, keys: list[str], root: Path, layer: Path, memory_mb: int) -> None:
        self.setups = [SETUPS[key] for key in keys]
        self.root = root
        self.layer = layer
        self.memory_mb = memory_mb
        self.envs: dict[str, Any] = {}
        self.servers: dict[str, Any] = {}
        self.samples = {key: Samples() for key in keys}
        self.round_ms = 0.0
        """The counted warm rounds' mean wall time: how often each environment was invoked."""
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Environments:
        from posthog_lambda.local import LambdaEnvironment

        for setup in self.setups:
            function = self.root / f"{setup.key}-{self.memory_mb}mb"
            function.mkdir(parents=True)
            (function / "app.py").write_text(setup.source)
            env: dict[str, str] = {}
            if setup.flush is not None:
                server = capture_server()
                self._stack.callback(server.stop)
                self.servers[setup.key] = server
                env = {"POSTHOG_API_KEY": "phc_local", "POSTHOG_HOST": server.url, "POSTHOG_LAMBDA_FLUSH": setup.flush}
            environment = LambdaEnvironment(
                function,
                "app.handler",
                layer_dir=self.layer if setup.flush is not None else None,
                env=env,
                memory_mb=self.memory_mb,
                cpu_share=True,
                timeout_s=60,
            )
            self.envs[setup.key] = self._stack.enter_context(environment)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def invoke(self, key: str) -> Any:
        result = self.envs[key].invoke(EVENT)
        wanted = {"total": expected_total(SPANS, GENERATIONS)}
        if result.status != "success" or result.payload != wanted:
            raise SystemExit(f"{key} at {self.memory_mb} MB failed: {result.status} {result.error} {result.logs[-5:]}")
        self.samples[key].invoked += 1
        return result

    def warm(self, rounds: int) -> None:
        """Each environment once per round, the order rotating; the first ``WARM_UP`` rounds
        (the first of them each one's cold start) are not counted."""
        keys = [setup.key for setup in self.setups]
        stats: dict[str, dict[str, int]] = {}
        began = 0.0
        for n in range(WARM_UP + rounds):
            if n == WARM_UP:
                stats = {key: self.envs[key].cpu_stat() for key in keys}
                began = time.perf_counter()
            shift = n % len(keys)
            for key in keys[shift:] + keys[:shift]:
                result = self.invoke(key)
                if n >= WARM_UP:
                    self.samples[key].latency.append(result.response_latency_ms or 0.0)
                    self.samples[key].post.append(result.post_runtime_ms or 0.0)
        self.round_ms = (time.perf_counter() - began) * 1000 / rounds
        for key in keys:
            after = self.envs[key].cpu_stat()
            periods = after["nr_periods"] - stats[key]["nr_periods"]
            throttled = after["nr_throttled"] - stats[key]["nr_throttled"]
            self.samples[key].throttled = throttled / periods if periods else 0.0

    def cold(self, rounds: int) -> None:
        """Each environment shut down and invoked again, once per round, the order rotating."""
        keys = [setup.key for setup in self.setups]
        for n in range(rounds):
            shift = n % len(keys)
            for key in keys[shift:] + keys[:shift]:
                self.envs[key].shutdown()
                result = self.invoke(key)
                assert result.init is not None
                self.samples[key].init.append(result.init.duration_ms)
                self.samples[key].register += [e.register_ms for e in result.init.extensions if e.register_ms]

    def check_delivered(self) -> None:
        """Once the environments are shut down (their extensions flushed): one trace per
        decorated invocation, none from undecorated ones. Lost data would look cheap."""
        for key, server in self.servers.items():
            traces = sum(1 for e in server.unique_events() if e.name == "$ai_trace")
            wanted = self.samples[key].invoked if SETUPS[key].source is TRACED_SOURCE else 0
            if traces != wanted:
                raise SystemExit(f"{SETUPS[key].label} at {self.memory_mb} MB delivered {traces} traces, not {wanted}")


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def ci95(values: list[float]) -> float:
    """Half the width of the normal 95 % confidence interval of the mean of ``values``."""
    return 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def diffs(values: list[float], baseline: list[float]) -> list[float]:
    """Each value minus the baseline's from the same round."""
    return [v - b for v, b in zip(values, baseline, strict=True)]


def ms(values: list[float]) -> str:
    return f"{mean(values):.2f} / {median(values):.2f} / {p99(values):.2f}"


@dataclass
class Figures:
    """What one memory size gave."""

    memory_mb: int
    quota_us: int
    samples: dict[str, Samples]
    seconds: float
    round_ms: float
    """How often each environment was invoked in the warm rounds (the mean round), ms."""

    @property
    def decorator(self) -> list[float]:
        return diffs(self.samples["end"].latency, self.samples["layer"].latency)

    @property
    def init_ratio(self) -> float:
        return mean(self.samples["layer"].init) / mean(self.samples["bare"].init)


def measure(root: Path, layer: Path, memory_mb: int, invocations: int, cold: int) -> Figures:
    from posthog_lambda.local.emulator.cpu import lambda_quota_us

    began = time.perf_counter()
    samples: dict[str, Samples] = {}
    with Environments(WARM, root, layer, memory_mb) as warm:
        warm.warm(invocations)
    warm.check_delivered()
    samples.update(warm.samples)
    with Environments(COLD_START, root / "cold", layer, memory_mb) as starts:
        starts.cold(cold)
    samples["bare"] = starts.samples["bare"]
    samples["layer"].init = starts.samples["layer"].init
    samples["layer"].register = starts.samples["layer"].register
    return Figures(memory_mb, lambda_quota_us(memory_mb), samples, time.perf_counter() - began, warm.round_ms)


def report(figures: list[Figures], invocations: int, cold: int) -> tuple[str, list[Target], list[str]]:
    lines = [
        run_description(),
        f"- {invocations} warm invocations per setup and memory size (after {WARM_UP} not counted), in rotating "
        f"rounds; then {cold} cold starts per setup; 10 spans and 2 generations per decorated invocation; local "
        "capture servers answering at once",
        "- CPU share: `LambdaEnvironment(..., cpu_share=True)`, a CFS quota per 100 ms period on a cgroup v1 cpu "
        "cgroup holding every process of the sandbox; the Runtime API (this Python) is not in it. Latencies under "
        "a quota are bimodal (within the current period or after the next refill): means with their 95 % "
        "confidence intervals",
    ]
    for f in figures:
        s = f.samples
        decorator = f.decorator
        lines += [
            "",
            f"{f.memory_mb} MB: quota {f.quota_us} µs per 100,000 µs ({f.quota_us / 1000:.1f} % of a vCPU); each "
            f"environment invoked every {f.round_ms:.0f} ms on average (one round), frozen in between; "
            f"{f.seconds:.0f} s in all",
            "",
            "| Setup | response latency mean / p50 / p99 ms | post-runtime mean / p50 / p99 ms | periods throttled |",
            "|---|---:|---:|---:|",
        ]
        for key in WARM:
            lines.append(f"| {SETUPS[key].label} | {ms(s[key].latency)} | {ms(s[key].post)} | {s[key].throttled:.0%} |")
        register = f"{mean(s['layer'].register):.1f}" if s["layer"].register else "—"
        lines += [
            "",
            "| Cold start | Init mean / p50 / p99 ms | extension start to register, mean ms |",
            "|---|---:|---:|",
            f"| {SETUPS['bare'].label} | {ms(s['bare'].init)} | — |",
            f"| {SETUPS['layer'].label} | {ms(s['layer'].init)} | {register} |",
            "",
            f"decorator (decorated minus undecorated, layer on both, `end` mode): {mean(decorator):+.2f} ms mean "
            f"(± {ci95(decorator):.2f}), {median(decorator):+.2f} ms median over the rounds; the extension adds "
            f"{f.init_ratio - 1:.0%} to Init ({mean(s['layer'].init) - mean(s['bare'].init):+.0f} ms, "
            f"{f.init_ratio:.2f}x); post-runtime means: `end` {mean(s['end'].post):.2f} ms, `batch` "
            f"{mean(s['batch'].post):.2f} ms, `adaptive` {mean(s['adaptive'].post):.2f} ms",
        ]

    at = next((f for f in figures if f.memory_mb == TARGET_MEMORY_MB), None)
    targets: list[Target] = []
    summary: list[str] = []
    if at is not None:
        added, ratio = mean(at.decorator), at.init_ratio
        latency_met, init_met = added <= TARGET_LATENCY_MS, ratio - 1 <= TARGET_INIT_ADDED
        lines += [
            "",
            f"target: at Lambda's CPU share for {TARGET_MEMORY_MB} MB, response latency of the decorated handler "
            f"minus the undecorated one (layer on both, `end` mode), mean <= {TARGET_LATENCY_MS:g} ms: "
            f"{verdict(latency_met)} ({added:.2f} ms ± {ci95(at.decorator):.2f})",
            f"target: at Lambda's CPU share for {TARGET_MEMORY_MB} MB, the extension adds at most "
            f"{TARGET_INIT_ADDED:.0%} to Init (layer attached against no layer, undecorated handler): "
            f"{verdict(init_met)} ({ratio - 1:.0%}: {mean(at.samples['layer'].init):.0f} ms against "
            f"{mean(at.samples['bare'].init):.0f} ms)",
        ]
        targets = [
            Target(
                15,
                f"at Lambda's CPU share for {TARGET_MEMORY_MB} MB: response latency, decorated minus undecorated "
                f"handler (layer on both, `end` mode), mean <= {TARGET_LATENCY_MS:g} ms",
                f"{added:.2f} ms ± {ci95(at.decorator):.2f}",
                latency_met,
            ),
            Target(
                15,
                f"at Lambda's CPU share for {TARGET_MEMORY_MB} MB: the extension adds at most "
                f"{TARGET_INIT_ADDED:.0%} to Init (layer against no layer, undecorated handler)",
                f"+{ratio - 1:.0%} ({mean(at.samples['layer'].init):.0f} ms against "
                f"{mean(at.samples['bare'].init):.0f} ms)",
                init_met,
            ),
        ]
    for f in figures:
        s = f.samples
        summary.append(
            f"at Lambda's CPU share for {f.memory_mb:,} MB ({f.quota_us / 1000:.1f} % of a vCPU, a CFS quota in the "
            f"local environment), the decorator adds {mean(f.decorator):.2f} ms to the mean response, the extension "
            f"{f.init_ratio - 1:.0%} to Init ({mean(s['layer'].init):.0f} ms against {mean(s['bare'].init):.0f} ms); "
            f"billed time after the response, mean: {mean(s['end'].post):.1f} ms in `end` mode, "
            f"{mean(s['batch'].post):.1f} ms in `batch`, {mean(s['adaptive'].post):.1f} ms in `adaptive`"
        )
    return "\n".join(lines), targets, summary


def main() -> None:
    parser = arguments(__doc__, f"the {SECTION} section of BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help=f"few rounds ({QUICK}): a rough run")
    parser.add_argument("--invocations", type=positive, help=f"warm invocations per setup (default {INVOCATIONS})")
    parser.add_argument("--cold", type=positive, help=f"cold starts per setup (default {COLD})")
    parser.add_argument("--memory", default=",".join(map(str, MEMORY_MB)), help="memory sizes, MB")
    args = parser.parse_args()
    invocations = args.invocations or (QUICK["invocations"] if args.quick else INVOCATIONS)
    cold = args.cold or (QUICK["cold"] if args.quick else COLD)
    sizes = [int(size) for size in args.memory.split(",")]
    if args.write and f"<!-- {SECTION}:start -->" not in BENCHMARKS_MD.read_text(encoding="utf-8"):
        # Found out now rather than after the run.
        parser.error(f"BENCHMARKS.md has no <!-- {SECTION}:start --> ... <!-- {SECTION}:end --> section to rewrite")
    sys.path.insert(0, str(SRC))
    from posthog_lambda.local import SandboxError

    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layer = build_layer(root / "layer")
        for size in sizes:
            (root / f"{size}mb").mkdir()
            try:
                figures.append(measure(root / f"{size}mb", layer, size, invocations, cold))
            except SandboxError as exc:
                raise SystemExit(f"cpu_share.py: {exc}") from exc
    text, targets, summary = report(figures, invocations, cold)
    print(text)
    if args.write:
        publish(SECTION, text, targets, summary)


if __name__ == "__main__":
    main()
