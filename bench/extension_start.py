"""How fast the extension registers after it is started, and how much memory it holds idle.

Lambda starts the function only when every extension has registered, so the time from exec
to the register call is added to every cold start. The extension is started as the layer's
launcher would start it (``python -I -S bootstrap.py posthog-lambda``, from a layer laid out by
``layer/build.py``) against a small stand-in for the Extensions API that notes when register
and the first ``next`` arrive. Baseline in the same run: a bare ``python -I -S -c pass``. With
and without bytecode files (the layer ships bytecode for the version that built it).

    .venv/bin/python bench/extension_start.py [--write] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import build_layer, median, p99, run_description, write_section

ROUNDS = 20
TARGET_MS = 40.0
TARGET_RSS_MB = 25.0


class FakeExtensionsApi:
    """Register, then a next that never answers: what an idle extension waits in."""

    def __init__(self) -> None:
        self.registered = threading.Event()
        self.waiting = threading.Event()
        self.registered_at = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.registered_at = time.perf_counter()
                body = json.dumps({"functionName": "f", "functionVersion": "$LATEST", "handler": "app.h"}).encode()
                self.send_response(200)
                self.send_header("Lambda-Extension-Identifier", "id-1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.registered.set()

            def do_GET(self) -> None:
                outer.waiting.set()
                time.sleep(3600)  # an idle environment: next does not answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_once(bootstrap: Path, tmp: Path) -> tuple[float, float]:
    """(ms from exec to register, RSS in MB once it waits in next)."""
    api = FakeExtensionsApi()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "POSTHOG_API_KEY": "phc_bench",
        "POSTHOG_LAMBDA_SOCKET": str(tmp / f"bench-{time.time_ns()}.sock"),
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(bootstrap), "posthog-lambda"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not api.registered.wait(10) or not api.waiting.wait(10):
            raise SystemExit("the extension did not register and wait in next within 10 s")
        register_ms = (api.registered_at - started) * 1000
        time.sleep(0.2)  # let it finish loading what it loads after registering
        rss = 0.0
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        return register_ms, rss
    finally:
        process.kill()
        process.wait()
        api.close()


def bare_ms() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="also rewrite the extension_start section")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sources = build_layer(tmp / "sources") / "posthog-lambda-extension"
        compiled = build_layer(tmp / "compiled") / "posthog-lambda-extension"  # as built: with bytecode
        samples: dict[str, list[float]] = {"bare": [], "sources": [], "compiled": [], "rss": []}
        for variant in (sources, compiled):  # warm-up: page cache
            start_once(variant / "bootstrap.py", tmp)
        for _ in range(args.rounds):
            samples["bare"].append(bare_ms())
            for name, variant in (("sources", sources), ("compiled", compiled)):
                # The source variant must compile every time, as on a read-only /opt.
                for cache in variant.rglob("__pycache__"):
                    if name == "sources":
                        for pyc in cache.iterdir():
                            pyc.unlink()
                register_ms, rss = start_once(variant / "bootstrap.py", tmp)
                samples[name].append(register_ms)
                if name == "compiled":
                    samples["rss"].append(rss)
    bare = median(samples["bare"])
    lines = [
        run_description(),
        f"- {args.rounds} rounds; each starts the extension fresh against a stand-in Extensions API",
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
    rss = median(samples["rss"])
    lines.append(f"| RSS waiting in next | {rss:.1f} MB | {p99(samples['rss']):.1f} MB | |")
    shipped = median(samples["compiled"])
    lines += [
        "",
        f"target: register within {TARGET_MS:.0f} ms of exec: {'MET' if shipped <= TARGET_MS else 'MISSED'} "
        f"({shipped:.1f} ms as built; {median(samples['sources']):.1f} ms from sources only)",
        f"target: idle RSS at most {TARGET_RSS_MB:.0f} MB: "
        f"{'MET' if rss <= TARGET_RSS_MB else 'MISSED'} ({rss:.1f} MB)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("extension_start", text)


if __name__ == "__main__":
    main()
