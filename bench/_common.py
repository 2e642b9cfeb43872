"""What both benchmarks share: statistics, a description of the run, and BENCHMARKS.md sections."""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


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
    # src/ changes while benchmarks are run and rerun: say which code the figures belong to.
    try:
        head = _git("rev-parse", "--short", "HEAD")
        changed = _git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git history)"
    return f"commit {head} plus uncommitted changes in src/" if changed else f"commit {head}"


def run_description() -> str:
    """Machine, date and exact command, as markdown lines to put above a result table."""
    python = f"{platform.python_implementation()} {platform.python_version()}"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join([_from_root(sys.executable), _from_root(sys.argv[0]), *sys.argv[1:]])
    return (
        f"- Machine: {platform.platform()}, {_cpu_model()}, nproc {_nproc()}, {python}\n"
        f"- Date: {now}\n"
        f"- Library source: {_library_revision()}\n"
        f"- Command (from the repository root): `{command}`"
    )


def write_section(name: str, body: str) -> None:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` in BENCHMARKS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = BENCHMARKS_MD.read_text(encoding="utf-8")
    before, found_start, rest = text.partition(start)
    _, found_end, after = rest.partition(end)
    if not found_start or not found_end:
        # Appending instead would leave a stale copy of the section behind; better to stop.
        raise SystemExit(f"{BENCHMARKS_MD} has no {start} ... {end} pair to rewrite")
    BENCHMARKS_MD.write_text(f"{before}{start}\n{body.strip()}\n{end}{after}", encoding="utf-8")
    print(f"rewrote the {name} section of {BENCHMARKS_MD.name}")


def build_layer(into: Path) -> Path:
    """The layer's content root, laid out by layer/build.py (the same recipe as make layer)."""
    spec = importlib.util.spec_from_file_location("layer_build", ROOT / "layer" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: Path = module.build(into)
    return built
