"""The house rules of docs/architecture.md: imports go one way (no cycle among the installed
modules, function-level imports included; the libraries never import the applications, the
CLI, benchmarks or tests) and no installed module is longer than 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

# Installed package -> its folder in the checkout.
PACKAGES = {
    "uhn": "uhn",
    "uhn_spec": "uhn_spec",
    "uhn_runtime": "uhn_runtime",
    "uhn_tools": "uhn_tools",
    "uhn_cli": "cli",
}
LIBRARIES = ("uhn", "uhn_spec", "uhn_runtime")
APPLICATIONS = {"uhn_tools", "uhn_cli", "cli", "benchmarks", "tests", "tools"}
MAX_MODULE_LINES = 450


def installed_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(REPO_ROOT / folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Every module name ``module`` imports, anywhere in its file, resolved to absolute names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    modules = installed_modules()
    return {m: {n for n in imported_names(m, p) if n in modules and n != m} for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_installed_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_libraries_never_import_the_applications() -> None:
    """``uhn bench`` and the naive baseline work from a non-editable install; the libraries
    (uhn, uhn_spec, uhn_runtime) never import uhn_tools, the CLI, benchmarks or tests."""
    for module, path in installed_modules().items():
        tops = {name.split(".")[0] for name in imported_names(module, path)}
        assert not tops & {"benchmarks", "tests", "tools"}, path
        if module.split(".")[0] in LIBRARIES:
            assert not tops & APPLICATIONS, path
        if module.startswith("uhn_spec"):
            assert "uhn_runtime" not in tops and "uhn" not in tops, path


def test_no_installed_module_is_longer_than_the_limit() -> None:
    long = {
        str(p.relative_to(REPO_ROOT)): n
        for p in installed_modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
