"""Tests of the local Lambda environment and capture server. Helpers shared by them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def posthog_lambda_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m posthog_lambda ARGS`` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "posthog_lambda", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
