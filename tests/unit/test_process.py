"""Behaviour that needs a fresh interpreter: imports, logging, secrets in output."""

from __future__ import annotations

import os
import subprocess
import sys

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")

HANDLER = """
from posthog_lambda import posthog_traced, span
@posthog_traced
def handler(event, context):
    with span("s"):
        return "ok"
print(handler({}, None))
"""


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": SRC, "PATH": os.environ["PATH"], **env},
    )


def test_import_loads_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import posthog_lambda, posthog_lambda.testing, posthog_lambda.constants\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names) - {'posthog_lambda', 'posthog_lambda_contract'}))\n"
    )
    assert run(code).stdout.strip() == "[]"


def test_a_traced_invocation_loads_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n" + HANDLER + "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names) - {'posthog_lambda', 'posthog_lambda_contract'}))\n"
    )
    assert run(code).stdout.strip().splitlines() == ["ok", "[]"]


def test_silent_by_default_even_when_dropping() -> None:
    out = run(HANDLER)
    assert out.stdout == "ok\n"
    assert out.stderr == ""


def test_debug_logs_the_drop_with_its_reason() -> None:
    out = run(HANDLER, POSTHOG_LAMBDA_DEBUG="1")
    assert out.stdout == "ok\n"
    assert "[posthog_lambda] WARNING dropped 2 (no_destination, 2 so far): no POSTHOG_API_KEY" in out.stderr


def test_debug_lines_are_printed_once_where_the_root_logger_prints_too() -> None:
    # As under awslambdaric, which gives the root logger a handler of its own.
    root = (
        "import logging, sys\nlogging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format='ROOT %(message)s')\n"
    )
    out = run(root + HANDLER, POSTHOG_LAMBDA_DEBUG="1")
    assert out.stderr.count("dropped 2 (no_destination") == 1
    assert "ROOT dropped" not in out.stderr


def test_api_key_never_appears_in_output() -> None:
    key = "phc_SuperSecretProjectKey123"
    blocked = "import sys; sys.modules['posthog'] = None\n"  # the optional extra is missing
    out = run(blocked + HANDLER, POSTHOG_LAMBDA_DEBUG="1", POSTHOG_API_KEY=key)
    assert out.stdout == "ok\n"
    assert key not in out.stderr
    assert "phc_****y123" in out.stderr
    assert "pip install 'posthog-lambda[posthog]'" in out.stderr


def test_import_leaves_the_expensive_standard_modules_unloaded() -> None:
    """What keeps ``import posthog_lambda`` within a few milliseconds of a bare interpreter
    (BENCHMARKS.md has the figure): these load on first use, not at import."""
    code = (
        "import sys\n"
        "import posthog_lambda\n"
        "heavy = ['typing', 'logging', 'json', 'inspect', 'dataclasses', 'concurrent.futures',\n"
        "         'threading', 'functools', 'random', 'datetime', 'decimal', 'uuid', 'pathlib']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    assert run(code).stdout.strip() == "[]"


def test_lazy_public_names_resolve() -> None:
    code = (
        "import posthog_lambda as pl\n"
        "from posthog_lambda._sinks import MemorySink\n"
        "print(isinstance(MemorySink(), pl.Sink), pl.ContextExecutor.__name__, pl.Event.__name__, pl.inject.__name__)\n"
        "print(sorted(set(pl.__all__) - set(dir(pl))))\n"
    )
    assert run(code).stdout.split("\n")[:2] == ["True ContextExecutor Event inject", "[]"]
