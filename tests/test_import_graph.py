"""The package's import graph, read from the source (nothing is imported): arrows point down the layers
tui -> agent -> {tools, memory, model} -> kernels (siblings never import each other: memory/ stores
named tensors and bytes, not the model's types), and nothing has an import cycle.

An arrow is any import at any nesting level (inside a function, under `if TYPE_CHECKING:`), a
`from X import Y` where Y is a submodule of X, and `importlib.import_module("literal")`. The modules of
hybrid_agent/ (the entry, cli.py and __main__.py, and the namespace's __init__.py) are the top and may
import anything.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"
]
ROOT = "hybrid_agent"
# Higher imports lower; one layer's folders may not import each other.
LAYER = {"tui": 3, "agent": 2, "tools": 1, "memory": 1, "model": 1, "kernels": 0}


def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by the name of its __init__.py)."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        if package != ROOT and package.removeprefix(ROOT + ".") not in LAYER:
            continue
        base = REPO / folder
        files = base.glob("*.py") if package == ROOT else base.rglob("*.py")
        for path in files:
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, str | None]]:
    """(module, name or None) for each import in `tree`, relative imports made absolute."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield base, alias.name
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for target, attr in _imported_names(tree, name, path.name == "__init__.py"):
            if attr is not None and f"{target}.{attr}" in modules:  # `from X import submodule`
                target = f"{target}.{attr}"
            while target and target not in modules:  # `import X.Y.name`: the module that holds it
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def _layer_folder(module: str) -> str | None:
    """The top-level folder of `module` (agent, tui, ...), None for the top (hybrid_agent/ itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYER else None


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_every_kind_of_import() -> None:
    tree = ast.parse(
        "import hybrid_agent.kernels.ops\n"
        "def f():\n"
        "    from hybrid_agent.model import chat\n"
        "    importlib.import_module('hybrid_agent.tui.app')\n"
        "from . import sibling\n"
    )
    found = set(_imported_names(tree, "hybrid_agent.agent.x", is_package=False))
    assert found == {
        ("hybrid_agent.kernels.ops", None),
        ("hybrid_agent.model", "chat"),
        ("hybrid_agent.tui.app", None),
        ("hybrid_agent.agent", "sibling"),
    }
    graph = _graph()
    assert "hybrid_agent.tui.app" in graph and "hybrid_agent.cli" in graph and "hybrid_agent" in graph
    assert "hybrid_agent.tui.bridge" in graph["hybrid_agent.tui.app"]


def test_arrows_point_down_the_layers() -> None:
    wrong = []
    for module, targets in sorted(_graph().items()):
        here = _layer_folder(module)
        if here is None:  # the top: the entry and the namespace
            continue
        for target in sorted(targets):
            if target == ROOT:
                # The namespace itself (its __version__): every import of a subpackage runs it first,
                # and it imports nothing of the package eagerly (its public names load lazily).
                continue
            there = _layer_folder(target)
            if there == here:
                continue
            if there is None or LAYER[there] >= LAYER[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_the_table_rows_are_private_to_memory() -> None:
    importers = sorted(
        m
        for m, targets in _graph().items()
        if "hybrid_agent.memory.schema" in targets and _layer_folder(m) != "memory"
    )
    assert importers == []


def test_no_import_cycle_anywhere() -> None:
    cycles = [sorted(c) for c in _cycles(_graph())]
    assert not cycles, f"import cycles: {cycles}"


def test_only_the_entry_imports_the_app() -> None:
    importers = sorted(m for m, targets in _graph().items() if "hybrid_agent.tui.app" in targets)
    assert importers == ["hybrid_agent.cli"]
