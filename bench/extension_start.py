"""How fast the extension registers after it is started, how much CPU it takes until Init can end,
and how much memory it holds, idle and at its peak.

Lambda starts the function only when every extension has registered, so the time from exec
to the register call is added to every cold start. The extension is started as the layer's
launcher would start it (``python -I -S bootstrap.py posthog-lambda``, from a layer laid out by
``layer/build.py``) against a stand-in for the Extensions API (``_extension.py``) that notes
when register and the first ``next`` arrive. Baseline in the same run: a bare
``python -I -S -c pass``. With and without bytecode files (the layer ships bytecode for the
version that built it). Idle memory is its RSS waiting in next; peak memory its VmHWM after a
burst: one invocation handing it 1,000 spans' events, sent to a local capture server (`end` mode).

CPU: on Lambda a sandbox gets a share of a vCPU proportional to its memory (about 7% at 128 MB),
for all its processes together, so every CPU millisecond the extension spends until Init ends
(the runtime and every extension have called next) is paid about 14 times over in Init. Here the
layer's launcher itself is executed (``extensions/posthog-lambda``, its ``/opt`` and runtime
interpreter paths pointed at the layer built here and at this interpreter), against an Extensions
API that accepts the Telemetry API subscription as Lambda does (the receiver listens on all
interfaces, as under ``sam local``: ``sandbox.localdomain`` does not resolve here). Its CPU time
(user+sys, all threads, to the ns: the process's CPU clock) is read when its first ``next``
arrives, plus whatever the launcher's shell forked (the process's reaped children, from its
rusage at exit); then again after 0.5 s in next, which is what its threads burn while the
function's Init goes on. Baseline in the same run: the rusage of ``python -I -S -c pass`` (the
launcher's flags) and of ``python -c pass`` (the base interpreter, with its site).

    .venv/bin/python bench/extension_start.py [--write] [--rounds N] [--baseline-layer DIR]

``--baseline-layer`` also measures another layer's content root (say, one built from another
revision by its own ``layer/build.py``) in the same rounds, for a before/after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import SRC, arguments, build_layer, capture_server, median, p99, positive, process_cpu_s, run_description
from _extension import DEADLINE_S, NAME, Extension, Traffic, extension_env, extensions_api, record_traffic, replay
from _publish import Target, publish, verdict

ROUNDS = 20
TARGET_MS = 40.0
TARGET_RSS_MB = 25.0
BURST_SPANS = 999
"""With the $ai_trace, 1,000 events in the burst."""
IDLE_S = 0.5
"""How long the CPU of its threads is watched while it waits in next."""
LAUNCHER_OPT = "/opt/"
LAUNCHER_PYTHON = "/var/lang/bin/python3"
"""What the launcher names, rewritten for the copy run here (the layer's root, this interpreter)."""


def start_once(bootstrap: Path, tmp: Path, server: Any, burst: Traffic | None) -> tuple[float, float, float]:
    """(ms from exec to register, RSS in MB once it waits in next, peak RSS in MB after ``burst``
    was handed to it and sent (0 without a burst))."""
    api = extensions_api()
    extension = Extension(bootstrap, api, extension_env(tmp, server.url, POSTHOG_LAMBDA_FLUSH="end"))
    try:
        api.wait_next(1, timeout=10)
        register_ms = (extension.registered_at - extension.started) * 1000
        time.sleep(0.2)  # let it finish loading what it loads after registering
        rss, _ = extension.memory_mb()
        peak = 0.0
        if burst is not None:
            api.invoke(burst.last_request_id, DEADLINE_S)
            replay(extension.socket_path, burst)
            api.wait_next(2)
            _, peak = extension.memory_mb()
        return register_ms, rss, peak
    finally:
        extension.kill()
        api.close()


def bare_ms() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    return (time.perf_counter() - started) * 1000


# -- CPU time -----------------------------------------------------------------------------------


def rusage_cpu_ms(pid: int) -> float:
    """Reap ``pid``: user+sys ms of it and of the children it reaped (what its shell forked)."""
    _, _, usage = os.wait4(pid, 0)
    return (usage.ru_utime + usage.ru_stime) * 1000


def bare_cpu_ms(*args: str) -> float:
    process = subprocess.Popen([*args, "-c", "pass"])
    cpu = rusage_cpu_ms(process.pid)
    process.returncode = 0  # reaped above
    return cpu


def launcher_copy(layer: Path, into: Path) -> Path:
    """The layer's launcher, naming the layer built here for /opt and this interpreter for the
    runtime's; run as Lambda runs it, by its path, whose file name is the extension's name."""
    text = (layer / "extensions" / NAME).read_text()
    if LAUNCHER_OPT not in text or LAUNCHER_PYTHON not in text:
        raise SystemExit(f"the launcher names neither {LAUNCHER_OPT} nor {LAUNCHER_PYTHON}: update this benchmark")
    text = text.replace(LAUNCHER_OPT, f"{layer}/").replace(LAUNCHER_PYTHON, sys.executable)
    launcher = into / "extensions" / NAME
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(text)
    launcher.chmod(0o755)
    return launcher


def metered_api() -> Any:
    """A stand-in Extensions API (the local environment's) that reads the CPU clock of the
    process being watched when it registers and when it first calls next, at that moment (the
    HTTP server's thread, before answering), and accepts the Telemetry API subscription."""
    from posthog_lambda.local.emulator import ExtensionsApi
    from posthog_lambda.local.emulator.routing import TELEMETRY_SUBSCRIBE, Answer, ApiServer, ExtensionsRoutes

    class MeteredApi(ExtensionsApi):
        pid: int | None = None
        at_register: float | None = None
        at_next: float | None = None

        def start(self) -> MeteredApi:
            routes = ExtensionsRoutes(self).table()
            routes[("PUT", TELEMETRY_SUBSCRIBE)] = lambda request: Answer(200, {})
            self._server = ApiServer(routes).start("bench-extensions-api")
            return self

        def register(self, name: str, body: Any) -> Any:
            if self.pid is not None and self.at_register is None:
                self.at_register = process_cpu_s(self.pid)
            return super().register(name, body)

        def next_event(self, identifier: str | None) -> Any:
            if self.pid is not None and self.at_next is None:
                self.at_next = process_cpu_s(self.pid)
            return super().next_event(identifier)

    return MeteredApi(function_name="bench").start()


def cpu_once(launcher: Path, tmp: Path, server: Any) -> tuple[float, float, float]:
    """CPU ms of the extension (exec of the launcher to register, to its first next; then in its
    threads over ``IDLE_S`` in next), each a separate start."""
    api = metered_api()
    api.expect(NAME)
    env = extension_env(tmp, server.url, AWS_SAM_LOCAL="true")
    process = subprocess.Popen(
        [str(launcher)],
        env={"PATH": os.environ.get("PATH", ""), "AWS_LAMBDA_RUNTIME_API": api.address, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api.pid = process.pid
    try:
        api.wait_next(1, timeout=10)
        time.sleep(IDLE_S)
        idle_end = process_cpu_s(process.pid)
    finally:
        process.kill()
        total = rusage_cpu_ms(process.pid)
        process.returncode = -9
        api.close()
    assert api.at_register is not None
    assert api.at_next is not None
    forked = max(0.0, total - idle_end * 1000)  # the shell's children, reaped before python started
    return api.at_register * 1000 + forked, api.at_next * 1000 + forked, (idle_end - api.at_next) * 1000


def main() -> None:
    parser = arguments(__doc__, "the extension_start section")
    parser.add_argument("--rounds", type=positive, default=ROUNDS)
    parser.add_argument(
        "--baseline-layer",
        type=Path,
        help="another layer's content root (as layer/build.py lays it out) to measure in the same rounds",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    server = capture_server()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sources_root = build_layer(tmp / "sources")
        compiled_root = build_layer(tmp / "compiled")  # as built: with bytecode
        sources = sources_root / "posthog-lambda-extension"
        compiled = compiled_root / "posthog-lambda-extension"
        for cache in sources.rglob("__pycache__"):
            # The source variant must compile every time, as on a read-only /opt.
            for pyc in cache.iterdir():
                pyc.unlink()
        launchers = {
            "compiled": launcher_copy(compiled_root, tmp / "run-compiled"),
            "sources": launcher_copy(sources_root, tmp / "run-sources"),
        }
        if args.baseline_layer is not None:
            launchers["baseline"] = launcher_copy(args.baseline_layer.resolve(), tmp / "run-baseline")
        samples: dict[str, list[float]] = {"bare": [], "sources": [], "compiled": [], "rss": [], "peak": []}
        cpu: dict[str, list[float]] = {"bare": [], "bare_site": []}
        for name in launchers:
            cpu.update({f"{name}_register": [], f"{name}_next": [], f"{name}_idle": []})
        for variant in (sources, compiled):  # warm-up: page cache
            start_once(variant / "bootstrap.py", tmp, server, None)
        for launcher in launchers.values():
            cpu_once(launcher, tmp, server)
        base_python = getattr(sys, "_base_executable", sys.executable)
        for _ in range(args.rounds):
            samples["bare"].append(bare_ms())
            cpu["bare"].append(bare_cpu_ms(sys.executable, "-I", "-S"))
            cpu["bare_site"].append(bare_cpu_ms(base_python))
            for name, launcher in launchers.items():
                if name == "sources":
                    for cache in sources.rglob("__pycache__"):
                        for pyc in cache.iterdir():
                            pyc.unlink()
                register, until_next, idle = cpu_once(launcher, tmp, server)
                cpu[f"{name}_register"].append(register)
                cpu[f"{name}_next"].append(until_next)
                cpu[f"{name}_idle"].append(idle)
            for name, variant in (("sources", sources), ("compiled", compiled)):
                if name == "sources":
                    for cache in variant.rglob("__pycache__"):
                        for pyc in cache.iterdir():
                            pyc.unlink()
                burst = record_traffic(1, BURST_SPANS) if name == "compiled" else None
                register_ms, rss, peak = start_once(variant / "bootstrap.py", tmp, server, burst)
                samples[name].append(register_ms)
                if name == "compiled":
                    samples["rss"].append(rss)
                    samples["peak"].append(peak)
    delivered = len(server.unique_events())
    server.stop()
    if delivered != args.rounds * (BURST_SPANS + 1):
        raise SystemExit(f"the bursts delivered {delivered} events, not {args.rounds * (BURST_SPANS + 1)}")
    bare = median(samples["bare"])
    lines = [
        run_description(),
        f"- {args.rounds} rounds; each starts the extension fresh against a stand-in Extensions API; 128 MB",
        "",
        "| What | median | p99 | vs a bare `python -I -S -c pass` |",
        "|---|---:|---:|---:|",
        f"| bare interpreter start and exit | {bare:.1f} ms | {p99(samples['bare']):.1f} ms | 1.0x |",
    ]
    variants = (
        ("compiled", "exec to register, the layer as built (with bytecode)"),
        ("sources", "exec to register, sources only (a runtime version without matching bytecode)"),
    )
    for name, label in variants:
        values = samples[name]
        lines.append(f"| {label} | {median(values):.1f} ms | {p99(values):.1f} ms | {median(values) / bare:.1f}x |")
    rss, peak = median(samples["rss"]), median(samples["peak"])
    lines += [
        f"| RSS waiting in next | {rss:.1f} MB | {p99(samples['rss']):.1f} MB | |",
        f"| peak RSS (VmHWM) after a burst of {BURST_SPANS + 1:,} events, sent | {peak:.1f} MB "
        f"| {p99(samples['peak']):.1f} MB | |",
    ]
    bare_cpu = median(cpu["bare"])
    lines += [
        "",
        "| CPU time (user+sys, all threads) | median | p99 | vs a bare `python -I -S -c pass` |",
        "|---|---:|---:|---:|",
        f"| bare `python -I -S -c pass` (the launcher's flags) | {bare_cpu:.1f} ms | {p99(cpu['bare']):.1f} ms "
        "| 1.0x |",
        f"| bare `python -c pass` (the base interpreter and this machine's site-packages) "
        f"| {median(cpu['bare_site']):.1f} ms "
        f"| {p99(cpu['bare_site']):.1f} ms | {median(cpu['bare_site']) / bare_cpu:.1f}x |",
    ]
    labels = {
        "compiled": "the layer as built (with bytecode)",
        "sources": "sources only (no matching bytecode)",
        "baseline": f"the baseline layer ({args.baseline_layer})",
    }
    for name in launchers:
        for key, what in (
            ("next", "exec of the launcher to its first next"),
            ("register", "exec of the launcher to register"),
        ):
            values = cpu[f"{name}_{key}"]
            lines.append(
                f"| {what}, {labels[name]} | {median(values):.1f} ms | {p99(values):.1f} ms "
                f"| {median(values) / bare_cpu:.1f}x |"
            )
        idle = cpu[f"{name}_idle"]
        lines.append(
            f"| its threads over {IDLE_S * 1000:.0f} ms waiting in next, {labels[name]} | {median(idle):.2f} ms "
            f"| {p99(idle):.2f} ms | |"
        )
    shipped = median(samples["compiled"])
    from_sources = median(samples["sources"])
    shipped_cpu = median(cpu["compiled_next"])
    lines += [
        "",
        f"target: register within {TARGET_MS:.0f} ms of exec: {verdict(shipped <= TARGET_MS)} "
        f"({shipped:.1f} ms as built; {from_sources:.1f} ms from sources only)",
        f"target: idle RSS at most {TARGET_RSS_MB:.0f} MB: {verdict(rss <= TARGET_RSS_MB)} ({rss:.1f} MB)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        summary = [
            f"the extension registers {shipped:.0f} ms after it starts ({from_sources:.0f} ms on a runtime version the "
            f"layer has no bytecode for; a bare interpreter takes {bare:.0f} ms), takes {shipped_cpu:.0f} ms of CPU "
            f"until its first next ({shipped_cpu / bare_cpu:.1f}x a bare interpreter's {bare_cpu:.0f} ms) and holds "
            f"{rss:.0f} MB idle, {peak:.0f} MB at its peak after taking in and sending {BURST_SPANS + 1:,} events"
        ]
        targets = [
            Target(
                4,
                "extension registers within 40 ms of exec (layer as built)",
                f"{shipped:.1f} ms",
                shipped <= TARGET_MS,
            ),
            Target(4, "extension idle RSS at most 25 MB", f"{rss:.1f} MB", rss <= TARGET_RSS_MB),
        ]
        publish("extension_start", text, targets, summary)


if __name__ == "__main__":
    main()
