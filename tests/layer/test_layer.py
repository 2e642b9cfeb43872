"""The layer as `make layer` built it (build/layer and its zip): portable, isolated, launchable."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT

LAYER = ROOT / "build" / "layer"
ZIP = ROOT / "build" / "posthog-lambda-layer.zip"
NATIVE_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    if not (LAYER / "extensions" / "posthog-lambda").exists() or not ZIP.exists():
        subprocess.run(
            ["python3", str(ROOT / "layer" / "build.py"), str(LAYER), str(ZIP)], check=True, capture_output=True
        )


def files() -> list[Path]:
    return [p for p in LAYER.rglob("*") if p.is_file()]


def test_layout() -> None:
    launcher = LAYER / "extensions" / "posthog-lambda"
    assert os.access(launcher, os.X_OK)
    assert (LAYER / "python" / "posthog_lambda" / "__init__.py").is_file()
    private = LAYER / "posthog-lambda-extension"
    assert (private / "posthog_lambda_extension" / "__main__.py").is_file()
    # Its own copy of the contract (no shared path), and nothing of the library: an allow-list.
    assert (private / "posthog_lambda_contract" / "frames.py").is_file()
    assert not (private / "posthog_lambda").exists()
    assert sorted(p.name for p in private.iterdir() if p.name.startswith("posthog")) == [
        "posthog_lambda_contract",
        "posthog_lambda_extension",
    ]
    # The function's side: the library and the contract it imports.
    assert (LAYER / "python" / "posthog_lambda_contract" / "frames.py").is_file()
    assert sorted(p.name for p in (LAYER / "python").iterdir()) == ["posthog_lambda", "posthog_lambda_contract"]
    assert not (LAYER / "python" / "posthog_lambda" / "local").exists()  # dev tooling stays out


def test_no_native_code_only_python_that_every_target_runtime_parses() -> None:
    # Portable across x86_64 and arm64: no machine code (checked by suffix and ELF magic).
    for path in files():
        assert not path.name.endswith(NATIVE_SUFFIXES), path
        assert not path.read_bytes().startswith(b"\x7fELF"), path
    sources = [p for p in files() if p.suffix == ".py"]
    assert len(sources) > 30
    # 3.11's grammar is the oldest of the supported runtimes (3.11 to 3.14) and newer
    # grammars only add to it: source that parses as 3.11 parses on all of them.
    for path in sources:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 11))
    bytecode = [p for p in files() if p.suffix == ".pyc"]
    assert bytecode  # shipped for the start-up time; tagged per version, ignored by the others
    assert all(".cpython-3" in p.name for p in bytecode)


def test_the_zip_holds_the_layer_with_its_launcher_executable() -> None:
    with zipfile.ZipFile(ZIP) as zipped:
        names = set(zipped.namelist())
        assert names == {str(p.relative_to(LAYER)) for p in files()}
        mode = zipped.getinfo("extensions/posthog-lambda").external_attr >> 16
        assert mode & 0o111


def test_the_launcher_says_so_in_one_line_when_there_is_no_python(tmp_path: Path) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "basename").symlink_to(shutil.which("basename") or "/usr/bin/basename")
    done = subprocess.run(
        [sh, str(LAYER / "extensions" / "posthog-lambda")],
        capture_output=True,
        text=True,
        env={"PATH": str(empty)},
        timeout=10,
    )
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[posthog-lambda] no Python interpreter")


def test_the_secret_store_client_ships_with_the_extension_and_imports_in_isolation() -> None:
    """What the extension imports when its key comes from Secrets Manager or SSM: the bundled,
    trimmed powertools, with boto3 from outside (on AWS: the runtime's /var/runtime)."""
    import boto3

    runtime_packages = str(Path(boto3.__file__).resolve().parents[1])  # stands in for /var/runtime
    private = LAYER / "posthog-lambda-extension"
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(private)!r}]\n"
        f"sys.path.append({runtime_packages!r})\n"
        "from aws_lambda_powertools.utilities import parameters\n"
        "import aws_lambda_powertools\n"
        "print(aws_lambda_powertools.__file__)\n"
        "print(callable(parameters.get_secret), callable(parameters.get_parameter))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    where, callables = done.stdout.strip().splitlines()
    assert where.startswith(str(private))
    assert callables == "True True"
    assert not (private / "aws_lambda_powertools" / "event_handler").exists()
