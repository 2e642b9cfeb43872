"""The shape of the code, checked: no import cycles, data flowing one way, a contract that needs
nothing but the standard library. Imports are read from the source (module level and inside
functions alike); those under ``if TYPE_CHECKING:`` never run and are not counted."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "posthog_lambda": ROOT / "src" / "posthog_lambda",
    "posthog_lambda_contract": ROOT / "src" / "posthog_lambda_contract",
    "posthog_lambda_extension": ROOT / "extension" / "posthog_lambda_extension",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, path: Path) -> set[str]:
    """The project's modules that ``module`` imports when it runs."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    out.add(f"{target}.{alias.name}")
                elif target in MODULES:
                    out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    out.discard(module)
    return out


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in GRAPH[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            connect(node)
    return found


def _reach(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for other in GRAPH[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def test_the_walker_sees_imports_inside_functions_and_the_known_edges() -> None:
    # Guards the test itself: a walker that found nothing would pass everything below.
    assert "posthog_lambda._processor" in GRAPH["posthog_lambda._trace"]
    assert "posthog_lambda._socket_exporter" in GRAPH["posthog_lambda._destination"]  # inside a function
    assert "posthog_lambda_contract.records" in GRAPH["posthog_lambda_extension._intake"]


def test_no_import_cycle() -> None:
    assert _cycles() == []


def test_the_contract_imports_only_itself_and_the_standard_library() -> None:
    for module, path in MODULES.items():
        if not module.startswith("posthog_lambda_contract"):
            continue
        assert all(m.startswith("posthog_lambda_contract") for m in GRAPH[module]), module
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "posthog_lambda_contract", f"{module}: {name}"


def test_the_extension_takes_only_the_contract_from_the_library_side() -> None:
    for module in MODULES:
        if module.startswith("posthog_lambda_extension"):
            library = {m for m in _reach(module) if m.startswith("posthog_lambda.") or m == "posthog_lambda"}
            assert library == set(), module


@pytest.mark.parametrize(
    "exporter",
    [
        "posthog_lambda._destination",
        "posthog_lambda._socket_exporter",
        "posthog_lambda._sink_exporter",
        "posthog_lambda._posthog_sink",
        "posthog_lambda._sinks",
    ],
)
def test_data_flows_one_way_exporters_never_reach_the_span_model(exporter: str) -> None:
    model = {"posthog_lambda._spans", "posthog_lambda._trace", "posthog_lambda._processor", "posthog_lambda._factories"}
    assert _reach(exporter) & model == set()
