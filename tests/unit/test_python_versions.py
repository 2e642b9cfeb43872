"""The Python versions Lambda runs (3.11 deprecated but running, 3.12, 3.13, 3.14): every place
that names them agrees, and the shipped code uses nothing that Python 3.14 removed or changed
(no 3.14 interpreter can be installed here; `make test` runs the suite on 3.11, 3.12 and 3.13)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import Any

import pytest

from posthog_lambda import _wraps, posthog_traced
from tests.helpers import layer_build

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "src" / "posthog_lambda", ROOT / "src" / "posthog_lambda_contract", ROOT / "extension"]


def test_every_place_names_the_same_runtimes() -> None:
    minors = layer_build().SUPPORTED_MINORS
    runtimes = ", ".join(f"python3.{m}" for m in minors)
    template = (ROOT / "template.yaml").read_text()
    assert f"CompatibleRuntimes: [{runtimes}]" in template
    assert f"AllowedValues: [{runtimes}]" in template
    classifiers = set(re.findall(r"Programming Language :: Python :: (3\.\d+)", (ROOT / "pyproject.toml").read_text()))
    assert classifiers == {f"3.{m}" for m in minors}
    assert minors == (11, 12, 13, 14)


# Removed in 3.14 (What's New in Python 3.14, "Removed"), or changed in a way code can trip on.
REMOVED_ATTRIBUTES = {
    ("ast", "Num"),
    ("ast", "Str"),
    ("ast", "Bytes"),
    ("ast", "NameConstant"),
    ("ast", "Ellipsis"),
    ("asyncio", "get_child_watcher"),
    ("asyncio", "set_child_watcher"),
    ("asyncio", "AbstractChildWatcher"),
    ("asyncio", "SafeChildWatcher"),
    ("asyncio", "FastChildWatcher"),
    ("asyncio", "MultiLoopChildWatcher"),
    ("asyncio", "ThreadedChildWatcher"),
    ("asyncio", "get_event_loop"),  # raises there when no loop is running
    ("asyncio", "iscoroutinefunction"),  # deprecated: inspect's
    ("collections.abc", "ByteString"),
    ("typing", "ByteString"),
    ("typing", "no_type_check_decorator"),
    ("pkgutil", "find_loader"),
    ("pkgutil", "get_loader"),
    ("pty", "master_open"),
    ("pty", "slave_open"),
    ("sqlite3", "version"),
    ("sqlite3", "version_info"),
    ("urllib.request", "URLopener"),
    ("urllib.request", "FancyURLopener"),
    ("importlib.abc", "ResourceReader"),
    ("importlib.abc", "Traversable"),
    ("importlib.abc", "TraversableResources"),
}
CHANGED_MODULES = {
    "multiprocessing": "its default start method on Linux is forkserver from 3.14, no longer fork",
    "concurrent.futures.process": "follows multiprocessing's new default start method",
}


def _uses(tree: ast.AST) -> set[tuple[str, str]]:
    """(module, name) pairs a module's code reaches: ``import m`` then ``m.name``, and
    ``from m import name``."""
    aliases: dict[str, str] = {}
    found: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
                found.add((alias.name, ""))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                found.add((node.module, alias.name))
                found.add((node.module, ""))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts: list[str] = [node.attr]
            value: ast.expr = node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                dotted = [aliases[value.id], *reversed(parts)]
                for split in range(1, len(dotted)):
                    found.add((".".join(dotted[:split]), dotted[split]))
    return found


def shipped_sources() -> list[Path]:
    return [path for directory in SHIPPED for path in sorted(directory.rglob("*.py")) if "/local/" not in str(path)]


def test_the_shipped_code_uses_nothing_python_3_14_removed_or_changed() -> None:
    sources = shipped_sources()
    assert len(sources) > 40
    problems = []
    for path in sources:
        uses = _uses(ast.parse(path.read_text(encoding="utf-8")))
        problems += [f"{path.relative_to(ROOT)}: {m}.{n}" for m, n in sorted(uses & REMOVED_ATTRIBUTES)]
        problems += [f"{path.relative_to(ROOT)}: {m} ({why})" for m, why in CHANGED_MODULES.items() if (m, "") in uses]
    assert problems == []


def test_the_check_finds_what_it_looks_for() -> None:
    code = "import asyncio\nimport multiprocessing\nfrom typing import ByteString\nasyncio.get_event_loop()\n"
    uses = _uses(ast.parse(code))
    assert ("asyncio", "get_event_loop") in uses
    assert ("typing", "ByteString") in uses
    assert ("multiprocessing", "") in uses


def test_wraps_copies_what_functools_copies_on_this_version() -> None:
    # From 3.14 that is __annotate__, not __annotations__ (PEP 649).
    assert set(functools.WRAPPER_ASSIGNMENTS) <= set(_wraps._ASSIGNED)
    assert _wraps.ANNOTATIONS in functools.WRAPPER_ASSIGNMENTS


class _Handler:
    """A callable whose annotations cannot be evaluated, as a 3.14 handler annotated with a name
    imported only for type checkers."""

    __name__ = "handler"
    __qualname__ = "handler"

    @property
    def __annotations__(self) -> dict[str, Any]:  # type: ignore[override]
        raise NameError("name 'LambdaContext' is not defined")

    def __call__(self, event: Any, context: Any) -> str:
        return "ok"


@pytest.mark.usefixtures("events")
def test_decorating_a_handler_whose_annotations_cannot_be_evaluated_works() -> None:
    traced = posthog_traced(_Handler())
    assert traced({}, None) == "ok"
