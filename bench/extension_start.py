"""How fast the extension registers after it is started, and how much memory it holds, idle and
at its peak.

Lambda starts the function only when every extension has registered, so the time from exec
to the register call is added to every cold start. The extension is started as the layer's
launcher would start it (``python -I -S bootstrap.py posthog-lambda``, from a layer laid out by
``layer/build.py``) against a stand-in for the Extensions API (``_extension.py``) that notes
when register and the first ``next`` arrive. Baseline in the same run: a bare
``python -I -S -c pass``. With and without bytecode files (the layer ships bytecode for the
version that built it). Idle memory is its RSS waiting in next; peak memory its VmHWM after a
burst: one invocation handing it 1,000 spans' events, sent to a local capture server (`end` mode).

    .venv/bin/python bench/extension_start.py [--write] [--rounds N]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import SRC, arguments, build_layer, capture_server, median, p99, positive, run_description
from _extension import DEADLINE_S, Extension, Traffic, extension_env, extensions_api, record_traffic, replay
from _publish import Target, publish, verdict

ROUNDS = 20
TARGET_MS = 40.0
TARGET_RSS_MB = 25.0
BURST_SPANS = 999
"""With the $ai_trace, 1,000 events in the burst."""


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


def main() -> None:
    parser = arguments(__doc__, "the extension_start section")
    parser.add_argument("--rounds", type=positive, default=ROUNDS)
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    server = capture_server()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sources = build_layer(tmp / "sources") / "posthog-lambda-extension"
        compiled = build_layer(tmp / "compiled") / "posthog-lambda-extension"  # as built: with bytecode
        samples: dict[str, list[float]] = {"bare": [], "sources": [], "compiled": [], "rss": [], "peak": []}
        for variant in (sources, compiled):  # warm-up: page cache
            start_once(variant / "bootstrap.py", tmp, server, None)
        for _ in range(args.rounds):
            samples["bare"].append(bare_ms())
            for name, variant in (("sources", sources), ("compiled", compiled)):
                # The source variant must compile every time, as on a read-only /opt.
                for cache in variant.rglob("__pycache__"):
                    if name == "sources":
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
    shipped = median(samples["compiled"])
    from_sources = median(samples["sources"])
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
            f"layer has no bytecode for; a bare interpreter takes {bare:.0f} ms) and holds {rss:.0f} MB idle, "
            f"{peak:.0f} MB at its peak after taking in and sending {BURST_SPANS + 1:,} events"
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
