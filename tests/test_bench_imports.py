"""The benchmark scripts import their siblings from the bench/ folder; those imports must form no
circle (a script that imports a script that imports it back runs half-initialised modules)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _sibling_imports(path: Path, siblings: set[str]) -> set[str]:
    """Every sibling module `path` imports, at any depth (the scripts import some inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & siblings


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the directed graph as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_cycle_finder_sees_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_bench_scripts_import_no_circle() -> None:
    siblings = {p.stem for p in BENCH.glob("*.py")}
    assert {"gpu_e2e", "gpu_resume", "gpu_common"} <= siblings
    graph = {p.stem: _sibling_imports(p, siblings) - {p.stem} for p in BENCH.glob("*.py")}
    assert "gpu_common" in graph["gpu_e2e"]  # the walk sees the scripts' real imports
    assert _cycle(graph) is None, f"bench/ imports go round: {' -> '.join(_cycle(graph) or [])}"
