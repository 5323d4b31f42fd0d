"""The import graph of ``src/etaretrieval``: no circle, and no import from a lower layer up.

The graph is read from the sources with :mod:`ast` (module-level imports and
the lazy ones inside functions alike: a lazy import up still ties a lower
layer to a higher one), so the test needs none of the optional dependencies.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "src" / "etaretrieval"

#: Layers from the bottom up, by module-name prefix (the longest matching prefix wins). A module may import
#: its own layer and those below it. Unlisted modules are public API (layer 3).
LAYERS: dict[str, int] = {
    "etaretrieval.config": 0,
    "etaretrieval._bits": 0,
    "etaretrieval._device": 0,
    "etaretrieval._jit": 0,
    "etaretrieval.cuda.config": 0,
    "etaretrieval._validate": 1,
    "etaretrieval._threads": 1,
    "etaretrieval._tablefile": 1,
    "etaretrieval.cpu": 2,
    "etaretrieval.cuda": 2,
    "etaretrieval.torch": 4,
    "etaretrieval.bench": 5,
    "etaretrieval.study": 5,
    "etaretrieval.warmup": 5,
}
LAYER_NAMES = ["base (constants, policy)", "validation and threads", "kernels and drivers (cpu/, cuda/)",
               "public API", "torch plugin", "tools (bench, study, warmup)"]


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return 3 if best is None else LAYERS[best]


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(module: str, path: pathlib.Path, known: dict[str, pathlib.Path]) -> set[str]:
    """The library modules that ``module`` imports (a name imported from a package counts as its submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                     for alias in node.names]
        for name in names:
            while name not in known and "." in name:  # etaretrieval.cpu.topk.run -> etaretrieval.cpu.topk
                name = name.rpartition(".")[0]
            if name in known and name != module:
                targets.add(name)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imported(module, path, known) for module, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    edges = graph()
    assert "etaretrieval._validate" in edges["etaretrieval.topk"]
    assert "etaretrieval.cpu.topk" in edges["etaretrieval.topk"]  # `from .cpu import topk as cpu_topk`
    assert "etaretrieval.cuda.topk" in edges["etaretrieval.topk"]  # the lazy import inside a function


def test_no_import_circle() -> None:
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_from_a_lower_layer_up() -> None:
    up = [f"{m} ({LAYER_NAMES[layer(m)]}) imports {t} ({LAYER_NAMES[layer(t)]})"
          for m, targets in sorted(graph().items()) for t in sorted(targets) if layer(t) > layer(m)]
    assert not up, "\n".join(up)


@pytest.mark.parametrize("edges, want", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_circles_finds_what_it_should(edges: dict[str, set[str]], want: list[list[str]]) -> None:
    assert circles(edges) == want
