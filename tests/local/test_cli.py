"""``posthog-lambda local`` prints each invocation with its measurements."""

from __future__ import annotations

import json
from pathlib import Path

from tests.local import posthog_lambda_command


def test_local_command_invokes_the_function_and_reports(tmp_path: Path) -> None:
    function = tmp_path / "function"
    function.mkdir()
    (function / "app.py").write_text(
        "def handler(event, context):\n    print('log line', event['n'])\n    return event['n'] * 2\n"
    )
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"n": 21}))
    done = posthog_lambda_command(
        "local",
        "--function",
        str(function),
        "--handler",
        "app.handler",
        "--event",
        str(event),
        "--times",
        "2",
        "--logs",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count(": success (request ") == 2
    assert out.count("response: 42") == 2
    assert out.count("init: ") == 1  # a cold start, then a warm invocation
    assert "[function] log line 21" in out
    assert "response latency " in out
    assert "post-runtime " in out
    assert "billed " in out
    assert "shutdown (spindown, deadline 2000 ms)" in out


def test_unknown_command_is_a_usage_error() -> None:
    done = posthog_lambda_command("nonsense")
    assert done.returncode == 2
    assert "usage: posthog-lambda" in done.stderr
