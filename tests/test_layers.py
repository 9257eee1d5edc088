"""The package's layers, read from the source: the library (`dept_vl`) ← training
(`dept_vl.training`) ← command lines (`dept_vl.cli`), with research code (`research/`) and the
benchmarks outside the package. Imports point down only, and no module reaches itself through
its imports. An import under `if TYPE_CHECKING:` (a type hint) or `if __name__ == "__main__":`
(a module's `python -m` form handing over to its command line) is not a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "dept_vl"
OUTSIDE = ("research", "benchmarks")


def module_name(file: Path) -> str:
    parts = file.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> set[str]:
    """Every module name an import statement names, outside type-only and __main__ blocks."""
    names: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and any(
                word in ast.unparse(node.test) for word in ("TYPE_CHECKING", "__main__")):
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        names |= imported(node)
    return names


def graph() -> dict[str, set[str]]:
    """{module: the dept_vl / research / benchmarks modules it imports}."""
    files = {module_name(f): f for f in PACKAGE.rglob("*.py")}
    edges = {}
    for name, file in files.items():
        targets = set()
        for target in imported(ast.parse(file.read_text(encoding="utf-8"))):
            if target.split(".")[0] in OUTSIDE:
                targets.add(target)
                continue
            while target not in files and "." in target:  # `from pkg import name`: the module
                target = target.rsplit(".", 1)[0]
            if target in files and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def layer(module: str) -> int:
    if module.split(".")[0] in OUTSIDE:
        return 3
    return {"training": 1, "cli": 2}.get(module.split(".")[1] if "." in module else "", 0)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others():
    assert cycles(graph()) == []


def test_imports_point_down_the_layers():
    names = ("library", "training", "command line", "research / benchmarks")
    upward = sorted(f"{module} ({names[layer(module)]}) imports {target} ({names[layer(target)]})"
                    for module, targets in graph().items() for target in targets
                    if layer(target) > layer(module))
    assert upward == []


def test_the_checks_see_what_they_look_for():
    """The walker finds a cycle, an upward import, and skips type-only imports: the two tests
    above can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("dept_vl.model") == 0 and layer("dept_vl.training.loop") == 1
    assert layer("dept_vl.cli.train") == 2 and layer("research.experiments") == 3
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dept_vl import x\n"
              "def f():\n    from dept_vl.training import loop\n")
    assert imported(ast.parse(source)) == {"typing", "typing.TYPE_CHECKING", "dept_vl.training",
                                           "dept_vl.training.loop"}
    edges = graph()
    assert "dept_vl.training.config_loading" in edges["dept_vl.cli.train"]
    assert "dept_vl.model" in edges["dept_vl.training.setup"]
