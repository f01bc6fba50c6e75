"""The import graph of ``pyro_disco`` points one way: down the layers below.

From the bottom up (a module may import only from strictly lower layers, or from its own
top-level package):

0. ``_validation``, ``_stats``, ``_compat``, ``kernels``, ``metrics`` — argument checks; Scott's
   factor and the weighted covariance; the first release's keyword names; Stein kernels; error
   metrics against the truth (plain tensor maths, import nothing from the package);
1. ``nn`` — the networks (per-dimension and universal DiScoFormer);
2. ``estimators`` (the estimators that wrap the networks, the KDE family), ``targets`` (exact
   distributions behind the same protocol);
3. ``pretrained`` — the shipped weights: loads ``nn`` networks into ``estimators``;
4. ``factory`` — an estimator by name: picks between ``estimators`` and ``pretrained``;
5. ``distributions``, ``infer``, ``stein``, ``fisher``, ``pde`` — what consumes a score; none
   imports another;
6. ``training``, ``demo`` — the training pipeline (it writes what ``pretrained`` reads), the demo;
7. ``cli`` — the command line (runs the demo and the training).

The package's own ``__init__`` sits above everything and re-exports the public names.

Function-level imports count as edges too, so none can hide an upward edge (the old
``estimators.factory -> pretrained -> estimators`` cycle); the test also checks that the
module graph as a whole has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pyro_disco

PACKAGE = "pyro_disco"
ROOT = Path(pyro_disco.__file__).resolve().parent

LAYERS: list[set[str]] = [
    {"_validation", "_stats", "_compat", "kernels", "metrics"},
    {"nn"},
    {"estimators", "targets"},
    {"pretrained"},
    {"factory"},
    {"distributions", "infer", "stein", "fisher", "pde"},
    {"training", "demo"},
    {"cli"},
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every import of a ``pyro_disco`` module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    top_level = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pyro_disco.x import y`` imports the submodule x.y when there is one, else x
            subs = [f"{target}.{alias.name}" for alias in node.names]
            names = [sub if _existing(sub) else target for sub in subs]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                out.append((name, node.lineno, id(node) in top_level))
    return out


def _existing(name: str) -> str | None:
    """The module ``name`` names, if it is one of the package's files (else ``None``)."""
    rel = Path(*name.split("."))
    if (ROOT.parent / rel).with_suffix(".py").exists() or (ROOT.parent / rel / "__init__.py").exists():
        return name
    return None


def _graph() -> dict[str, set[tuple[str, int, bool]]]:
    """Module -> ``(imported module, line, at module level)``. Importing ``a.b.c`` from outside
    package ``a.b`` runs ``a.b``'s ``__init__`` first: that is an edge too (the root excepted)."""
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        module, edges = _module_name(path), set()
        for name, line, top in _imports(path):
            target = _existing(name)
            if target is None:
                continue
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                imported = ".".join(parts[:k])
                if imported != module and not (module + ".").startswith(imported + "."):
                    edges.add((imported, line, top))
        graph[module] = edges
    return graph


def _floor(module: str) -> str | None:
    """The top-level part of ``pyro_disco`` that ``module`` belongs to (``None``: the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_has_a_layer():
    floors = {_floor(m) for m in _graph()} - {None}
    assert floors <= set(LAYER), f"add {sorted(floors - set(LAYER))} to LAYERS in tests/test_layers.py"


def test_imports_point_down():
    upward = []
    for module, edges in _graph().items():
        src = _floor(module)
        if src is None:
            continue  # the package root re-exports the public names
        for target, line, top in sorted(edges):
            dst = _floor(target)
            if dst == src:
                continue
            if dst is None or LAYER[dst] >= LAYER[src]:
                where = "module level" if top else "inside a function"
                upward.append(f"{module}:{line} imports {target} ({where})")
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in edges} for m, edges in _graph().items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(target) :] + [target]))
            if target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
