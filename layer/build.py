"""Lay out the Lambda layer's content root (what the zip holds, what Lambda extracts to /opt).

extensions/posthog-lambda          the launcher; its file name is the extension's name
posthog-lambda-extension/          the extension's code and a private copy of the contract
                                   package, on no path but its own (the function cannot break it)
python/posthog_lambda/             the library, importable by the function
python/posthog_lambda_contract/    the contract package, which the library imports

Both directories are allow-lists: a new module of the library never reaches the extension, and
the development tooling (``posthog_lambda.local``) reaches neither.

python layer/build.py OUT_DIR [ZIP]   (make layer: build/layer and build/posthog-lambda-layer.zip)
python layer/build.py --interpreter 3.X   the path of this machine's Python 3.X (make test)
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "src" / "posthog_lambda"
CONTRACT = ROOT / "src" / "posthog_lambda_contract"
EXTENSION = ROOT / "extension" / "posthog_lambda_extension"
NAME = "posthog-lambda"
SUPPORTED_MINORS = (11, 12, 13, 14)
"""The Lambda Python runtimes the layer is for: 3.11 (deprecated by AWS, still running), 3.12,
3.13, 3.14."""
EXTENSION_DIR = "posthog-lambda-extension"

LAUNCHER = f"""#!/bin/sh
# Lambda runs every file in /opt/extensions; this one starts the posthog-lambda extension with
# the runtime's own Python, isolated from the function's packages and PYTHONPATH (-I), without
# site (-S) and never writing bytecode (-B: /opt is read-only; the layer ships it). No command
# substitution on the way: each forks a shell, paid in Init (a 128 MB sandbox has 7% of a vCPU).
python=/var/lang/bin/python3
if [ ! -x "$python" ]; then
    python=$(command -v python3 2>/dev/null)
fi
if [ -n "$python" ] && [ -x "$python" ]; then
    exec "$python" -I -S -B /opt/{EXTENSION_DIR}/bootstrap.py "${{0##*/}}"
fi
echo "[posthog-lambda] no Python interpreter (looked for /var/lang/bin/python3 and python3 on PATH):" \\
    "the extension needs a Python runtime; events are not sent"
exit 1
"""

BOOTSTRAP = '''"""Put the extension's directory, and nothing of the function's, on the path; then run it.

Its main directly, not runpy (nor -m): runpy's imports (importlib.util, contextlib...) cost CPU
on every cold start, paid again in Init at Lambda's CPU share. The collector is off until the
extension is set up (its main turns it back on): what start-up makes lives as long as the
process, so collecting meanwhile would only cost CPU."""
import gc

gc.disable()
import sys

sys.path.insert(0, __file__.rpartition("/")[0] or ".")
from posthog_lambda_extension._main import main

sys.exit(main(sys.argv[1:]))
'''

_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")
LAYOUT: tuple[tuple[Path, str], ...] = (
    (EXTENSION, f"{EXTENSION_DIR}/posthog_lambda_extension"),
    (CONTRACT, f"{EXTENSION_DIR}/posthog_lambda_contract"),
    (LIBRARY, "python/posthog_lambda"),
    (CONTRACT, "python/posthog_lambda_contract"),
)
"""What goes where: nothing else of the source tree is shipped."""
LEFT_OUT = {LIBRARY: ("local",)}
"""Parts of a shipped package that are development tooling: the local Lambda environment."""


def build(out: Path) -> Path:
    """Write the layer's content root into ``out`` (replacing what is there)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "extensions").mkdir(parents=True)
    launcher = out / "extensions" / NAME
    launcher.write_text(LAUNCHER)
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    private = out / EXTENSION_DIR
    for source, target in LAYOUT:
        skip = shutil.ignore_patterns("__pycache__", "*.pyc", *LEFT_OUT.get(source, ()))
        shutil.copytree(source, out / target, ignore=skip)
    (private / "bootstrap.py").write_text(BOOTSTRAP)
    _bundle_secret_store_client(private)
    _compile(out)
    return out


# The extension reads its key from Secrets Manager or SSM with aws-lambda-powertools (boto3 comes
# from the runtime's /var/runtime). Only what its Parameters utility needs is shipped: the rest of
# powertools (event handlers, parsers, idempotency...) would be most of the layer's size.
BUNDLED = ("aws-lambda-powertools", "jmespath", "typing-extensions")
POWERTOOLS_UTILITIES = {"__init__.py", "jmespath_utils", "parameters", "typing"}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "dev.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def _bundle_secret_store_client(private: Path) -> None:
    try:
        sources = [importlib.metadata.distribution(name) for name in BUNDLED]
    except importlib.metadata.PackageNotFoundError:
        # Not installed where this runs (sam build with a bare python3): fetch the pinned ones.
        pins = _pins()
        target = private.parent / ".bundle"
        requirements = [f"{name}=={pins[name]}" for name in BUNDLED]
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *requirements],
            check=True,
        )
        for item in target.iterdir():
            if not item.name.endswith(".dist-info") and item.name != "bin":
                shutil.move(str(item), private / item.name)
        shutil.rmtree(target)
    else:
        for dist in sources:
            base = Path(str(dist.locate_file("")))
            tops = {str(f).split("/")[0] for f in dist.files or () if not str(f).startswith("..")}
            for top in sorted(tops):
                if top.endswith((".dist-info", ".egg-info")) or top in ("__pycache__", "bin"):
                    continue
                if (base / top).is_dir():
                    shutil.copytree(base / top, private / top, ignore=_SKIP)
                else:
                    shutil.copy2(base / top, private / top)
    powertools = private / "aws_lambda_powertools"
    shutil.rmtree(powertools / "event_handler", ignore_errors=True)
    for item in (powertools / "utilities").iterdir():
        if item.name not in POWERTOOLS_UTILITIES:
            shutil.rmtree(item) if item.is_dir() else item.unlink()


def _compile(out: Path) -> None:
    """Ship bytecode for every supported runtime version this machine has an interpreter for:
    /opt is read-only on Lambda, so without it every cold start compiles the extension until its
    first next (about three times the CPU, paid in Init). Unchecked hashes: the zip's timestamps must not make them
    stale. Each version's files are tagged (``.cpython-312.pyc``), so the others ignore them."""
    # What runs before the extension registers, and the library; the bundled powertools loads
    # only after registering, when a secret store is configured, so it ships as source.
    private = out / EXTENSION_DIR
    directories = [
        str(private / "posthog_lambda_extension"),
        str(private / "posthog_lambda_contract"),
        str(out / "python"),
    ]
    found = _interpreters()
    for python in found.values():
        subprocess.run(
            [python, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", *directories],
            check=True,
        )
    missing = [f"3.{minor}" for minor in SUPPORTED_MINORS if (3, minor) not in found]
    if missing:
        # Said, not fatal: the layer works on those runtimes, only slower to start there.
        print(
            f"layer/build.py: no Python {', '.join(missing)} on this machine (PATH, ~/.pyenv/versions): the layer "
            "ships no bytecode for those runtimes, where the extension's start-up costs about 3x the CPU",
            file=sys.stderr,
        )


def _interpreters() -> dict[tuple[int, int], str]:
    """This interpreter, and one for each other supported version found on PATH or in pyenv, by version."""
    found = {sys.version_info[:2]: sys.executable}
    for minor in SUPPORTED_MINORS:
        if (3, minor) not in found:
            python = interpreter(minor)
            if python is not None:
                found[(3, minor)] = python
    return {version: found[version] for version in sorted(found)}


def interpreter(minor: int) -> str | None:
    """An interpreter of Python 3.``minor`` on this machine (this one, on PATH, or in pyenv)."""
    if sys.version_info[:2] == (3, minor):
        return sys.executable
    candidates = [shutil.which(f"python3.{minor}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3.{minor}")))
    return next((c for c in candidates if c and _version_of(c) == (3, minor)), None)


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return None
    parts = done.stdout.split()
    return (int(parts[0]), int(parts[1])) if done.returncode == 0 and len(parts) == 2 else None


def zip_layer(root: Path, archive: Path) -> Path:
    """The layer zip: the content root's files, executable bits kept, in a stable order."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zipped:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(root)), date_time=(2026, 1, 1, 0, 0, 0))
                info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zipped.writestr(info, path.read_bytes())
    return archive


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--interpreter":
        # For `make test`, which runs the suite on each Python version CI covers.
        found = interpreter(int(sys.argv[2].removeprefix("3.")))
        if found is None:
            sys.exit(f"no Python {sys.argv[2]} on this machine (looked on PATH and in ~/.pyenv/versions)")
        print(found)
        sys.exit(0)
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    built = build(Path(sys.argv[1]))
    print(built)
    if len(sys.argv) == 3:
        print(zip_layer(built, Path(sys.argv[2])))
