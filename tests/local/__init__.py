"""Tests of the local Lambda environment and capture server. Helpers shared by them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"
FIXTURES = Path(__file__).parent / "fixtures"

BACKGROUND_HANDLER = """
import threading as _threading, time as _time

ticks = []

def _tick():
    while True:
        ticks.append(_time.time())
        _time.sleep(0.01)

def background(event, context):
    # A thread ticking every 10 ms from the first call: the largest gap between ticks says
    # whether the process was stopped (frozen) meanwhile.
    if not ticks:
        _threading.Thread(target=_tick, daemon=True).start()
        _time.sleep(0.05)
        return {"started": True}
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    return {"largest_gap": max(gaps), "ticks": len(ticks)}
"""
"""A handler (``handlers.background``) to add to a test function's code."""


class FunctionAndLayer:
    """A function's code directory (``handlers.py``) and a layer of extensions made from a
    fixture script, each configured by name and writing what it sees to one log file."""

    def __init__(self, root: Path, handlers: str, extension_fixture: str) -> None:
        self.root = root
        self.function = root / "function"
        self.function.mkdir()
        (self.function / "handlers.py").write_text(handlers)
        self.layer = root / "layer"
        (self.layer / "extensions").mkdir(parents=True)
        self.log = root / "events.jsonl"
        self.log.touch()
        self.extensions: dict[str, dict[str, Any]] = {}
        self._fixture = FIXTURES / extension_fixture

    def extension(self, name: str, **config: Any) -> None:
        path = self.layer / "extensions" / name
        path.write_text(f"#!{sys.executable} -S\n" + self._fixture.read_text())
        path.chmod(0o755)
        self.extensions[name] = config

    def variables(self) -> dict[str, str]:
        """What the fixtures read: where to log, and each extension's configuration."""
        return {"TEST_LOG": str(self.log), "TEST_EXTENSIONS": json.dumps(self.extensions)}

    def records(self, who: str | None = None, what: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in lines if who in (None, r["who"]) and what in (None, r["what"])]


def posthog_lambda_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m posthog_lambda ARGS`` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "posthog_lambda", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
