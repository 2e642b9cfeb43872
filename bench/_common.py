"""What the benchmarks share: statistics, a description of the run, marked sections of BENCHMARKS.md
and README.md, the layer, and function directories with third-party packages."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
README_MD = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"


def process_cpu_s(pid: int) -> float:
    """User+sys seconds of every thread of process ``pid`` so far, live or gone (not yet reaped),
    to the ns: its CPU clock, the clock id Linux makes of a pid (``(~pid << 3) | CPUCLOCK_SCHED``,
    the scheduler's own count, not /proc's clock ticks)."""
    return time.clock_gettime((~pid << 3) | 2)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p99(values: Sequence[float]) -> float:
    """The 99th percentile; over a few dozen rounds this is, in effect, the slowest round."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _nproc() -> int:
    # Like nproc: the CPUs this process may run on, which can be fewer than the machine has.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _from_root(path: str) -> str:
    # Paths relative to the repository root, so that the command can be pasted from there.
    resolved = Path(os.path.abspath(path))
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def _library_revision() -> str:
    # The code changes while benchmarks are run and rerun: say which code the figures belong to.
    try:
        head = _git("rev-parse", "--short", "HEAD")
        changed = _git("status", "--porcelain", "--", "src", "extension", "layer")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git history)"
    return f"commit {head} plus uncommitted changes in src/, extension/ or layer/" if changed else f"commit {head}"


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_description() -> str:
    """Machine, date and exact command, as markdown lines to put above a result table."""
    python = f"{platform.python_implementation()} {platform.python_version()}"
    now = now_utc()
    command = shlex.join([_from_root(sys.executable), _from_root(sys.argv[0]), *sys.argv[1:]])
    return (
        f"- Machine: {platform.platform()}, {_cpu_model()}, nproc {_nproc()}, {python}\n"
        f"- Date: {now}\n"
        f"- Library source: {_library_revision()}\n"
        f"- Command (from the repository root): `{command}`"
    )


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8")
    before, found_start, rest = text.partition(start)
    _, found_end, after = rest.partition(end)
    if not found_start or not found_end:
        # Appending instead would leave a stale copy of the section behind; better to stop.
        raise SystemExit(f"{path} has no {start} ... {end} pair to rewrite")
    path.write_text(f"{before}{start}\n{body.strip()}\n{end}{after}", encoding="utf-8")
    print(f"rewrote the {name} section of {path.name}")


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """An HTTP server on a free loopback port, serving in daemon threads; ``shutdown()`` and
    ``server_close()`` it when done."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"bench-{handler.__name__}", daemon=True).start()
    return server


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident now, resident at its highest) of a process, in MB: VmRSS and VmHWM."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def capture_server(delay_ms: float = 0.0) -> Any:
    """A started local PostHog capture server (``posthog_lambda.local``; src/ must be on the path)
    answering every request ``delay_ms`` late: a stand-in for the round trip to PostHog."""
    from posthog_lambda.local import CaptureServer

    server = CaptureServer(api_key="phc_local").start()
    if delay_ms:
        # Its slow_next fault, for more requests than any benchmark makes.
        server.slow_next(100_000, delay_ms / 1000)
    return server


_REMOTE_CAPTURE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from posthog_lambda.local import CaptureServer
server = CaptureServer(api_key="phc_local").start()
if float(sys.argv[2]):
    server.slow_next(100_000, float(sys.argv[2]) / 1000)
print(server.url, flush=True)
for line in sys.stdin:
    found = [e.event for e in server.unique_events()]
    print(json.dumps(found), flush=True)
server.stop()
"""


class RemoteEvent:
    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.name: str = event.get("event", "")
        self.properties: dict[str, Any] = event.get("properties", {})


class RemoteCaptureServer:
    """The local capture server in a process of its own: what it does per request (parsing,
    decompressing) then takes nothing from the process that runs the local Lambda environment,
    whose Runtime API it would otherwise slow down, as PostHog, far away, never does."""

    def __init__(self, delay_ms: float = 0.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _REMOTE_CAPTURE, str(SRC), str(delay_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self._final: list[RemoteEvent] | None = None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise SystemExit("the capture server's process did not start")

    def unique_events(self) -> list[RemoteEvent]:
        """What arrived, each event once (after ``stop``: what had arrived by then)."""
        if self._final is not None:
            return self._final
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("events\n")
        self.process.stdin.flush()
        return [RemoteEvent(e) for e in json.loads(self.process.stdout.readline())]

    def stop(self) -> None:
        if self._final is None:
            self._final = self.unique_events()
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(10)


def closed_port() -> int:
    """A loopback TCP port that nothing listens on: bound, then released, so connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def link_with_dependencies(into: Path, *names: str) -> None:
    """Symlink installed distributions and everything they require (markers evaluated, extras
    left out) into a function directory, as ``pip install --target`` lays them out. Metadata
    directories too: OpenTelemetry finds its context implementation through entry points."""
    from packaging.requirements import Requirement

    into.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    pending = list(names)
    while pending:
        dist = importlib.metadata.distribution(pending.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
        base = Path(str(dist.locate_file("")))
        for top in {str(f).split("/")[0] for f in dist.files or () if not str(f).startswith("..")}:
            link = into / top
            if top != "__pycache__" and not link.exists():
                link.symlink_to(base / top)


def build_layer(into: Path) -> Path:
    """The layer's content root, laid out by layer/build.py (the same recipe as make layer)."""
    spec = importlib.util.spec_from_file_location("layer_build", ROOT / "layer" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: Path = module.build(into)
    return built


def arguments(doc: str | None, writes: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as the help, and ``--write`` to rewrite
    ``writes`` (named in the help)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"also rewrite {writes}")
    return parser


def positive(text: str) -> int:
    """An argparse type: a count of rounds or invocations."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value
