"""kernels/ imports point one way: no module of hybrid_agent.kernels imports, directly or through
others, a module that imports it back. Imports inside functions count (a wrapper's late import of its
Triton file is still an edge). Checks shared by a wrapper and its Triton file live in kernels/checks.py,
a leaf, so the Triton files never need their wrappers."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import hybrid_agent.kernels
import pytest

PACKAGE = "hybrid_agent.kernels"
KERNELS = Path(hybrid_agent.kernels.__file__).resolve().parent


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def import_graph(folder: Path = KERNELS) -> dict[str, set[str]]:
    """Module -> the hybrid_agent.kernels modules its source imports anywhere (top level or in a body)."""
    modules = {_module_name(p) for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module in modules:
                    edges.add(node.module)
                edges |= {f"{node.module}.{a.name}" for a in node.names} & modules
        name = _module_name(path)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_sees_a_circle_and_a_clean_graph() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_kernels_have_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.gemv" in graph and f"{PACKAGE}.triton_gemv" in graph  # the scan found the files
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in kernels/: " + " -> ".join(cycle or [])


def test_no_triton_file_imports_its_wrapper() -> None:
    graph = import_graph()
    for name, edges in graph.items():
        short = name.rsplit(".", 1)[-1]
        if short.startswith("triton_"):
            wrapper = f"{PACKAGE}.{short.removeprefix('triton_')}"
            assert wrapper not in edges, f"{name} imports its wrapper {wrapper}"


def test_checks_is_a_leaf() -> None:
    """kernels/checks.py imports nothing of ours but kernels/errors.py."""
    assert import_graph()[f"{PACKAGE}.checks"] <= {f"{PACKAGE}.errors"}


FUSED_DECODE_OPS = ["gdn_decode_prep", "residual_rms_norm", "silu_mul", "attn_decode_prep", "greedy_advance"]


@pytest.mark.parametrize("op", FUSED_DECODE_OPS)
def test_fused_decode_ops_one_per_file(op: str) -> None:
    """Each of the engine's fused one-token ops has its own module with its torch `*_ref` beside the
    dispatching function, its own Triton file, and stays a public name of hybrid_agent.kernels."""
    module = importlib.import_module(f"{PACKAGE}.{op}")
    assert callable(getattr(module, op)) and callable(getattr(module, f"{op}_ref"))
    assert (KERNELS / f"triton_{op}.py").is_file()
    assert getattr(hybrid_agent.kernels, op) is getattr(module, op)
    assert op in hybrid_agent.kernels.__all__
