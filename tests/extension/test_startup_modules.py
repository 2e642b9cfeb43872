"""What the extension loads before it registers, run exactly as the built layer ships it.

Lambda starts the function only once every extension has registered, so each module loaded
before ``register`` delays every cold start. The extension's directory in the layer
(``build/layer/posthog-lambda-extension``, as ``make layer`` lays it out) is run here with the
launcher's ``python -I -S``; the request that registers is replaced by a note of every module
loaded by then, and the process ends there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import layer_build

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "build" / "layer"
EXTENSION_DIR = LAYER / "posthog-lambda-extension"

START_UP = {
    "posthog_lambda_extension",
    "posthog_lambda_extension._api",
    "posthog_lambda_extension._log",
    "posthog_lambda_extension._main",
    "posthog_lambda_extension._settings",
    "posthog_lambda_extension._unix_socket",
}
"""The extension's own modules allowed before it registers; the rest loads while the runtime starts."""

WRAPPER = textwrap.dedent(
    """
    import os, runpy, sys

    directory, out = sys.argv[1], sys.argv[2]
    sys.argv[1:] = ["posthog-lambda"]
    sys.path.insert(0, directory)  # as the layer's bootstrap.py does
    from posthog_lambda_extension import _api

    def register(api, name, **options):
        with open(out, "w") as modules:
            modules.write("\\n".join(sorted(sys.modules)))
        os._exit(0)

    _api.register = register
    runpy.run_module("posthog_lambda_extension", run_name="__main__", alter_sys=True)
    """
)


@pytest.fixture(scope="module")
def extension_dir() -> Path:
    """The extension's directory as `make layer` built it (built the same way when missing)."""
    if not (EXTENSION_DIR / "posthog_lambda_extension" / "__main__.py").exists():
        layer_build().build(LAYER)
    return EXTENSION_DIR


def loaded_before_registering(extension_dir: Path, tmp_path: Path, **env: str) -> list[str]:
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    out = tmp_path / "modules.txt"
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9",
        "POSTHOG_LAMBDA_SOCKET": str(tmp_path / "ph.sock"),
        "POSTHOG_LAMBDA_SPOOL_DIR": str(tmp_path / "spool"),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(wrapper), str(extension_dir), str(out)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out.read_text().splitlines()


def is_standard_library(name: str) -> bool:
    top = name.partition(".")[0]
    return top in sys.stdlib_module_names or name in sys.builtin_module_names or top == "__main__"


@pytest.mark.parametrize(
    "env",
    [
        {"POSTHOG_API_KEY": "phc_local"},
        {"POSTHOG_API_KEY_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:k"},  # read after registering
        {"POSTHOG_API_KEY": "phc_local", "POSTHOG_LAMBDA_DEBUG": "true", "POSTHOG_LAMBDA_FLUSH": "batch"},
        {},  # no key: discards, still registers first
    ],
)
def test_before_registering_only_the_contract_and_the_start_up_modules_load(
    extension_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    modules = loaded_before_registering(extension_dir, tmp_path, **env)
    assert "posthog_lambda_extension._main" in modules  # it did run the extension's main
    others = [name for name in modules if not is_standard_library(name)]
    unexpected = [m for m in others if m not in START_UP and m.partition(".")[0] != "posthog_lambda_contract"]
    assert unexpected == [], f"loaded before registering: {unexpected}"
    assert not [m for m in modules if m == "posthog_lambda" or m.startswith("posthog_lambda.")]
    assert (tmp_path / "ph.sock").exists()  # the socket is bound before registering
