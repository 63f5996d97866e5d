"""The import structure of src/ftlab: no cycles, and no layer imports one above it.

An AST scan of every module's imports, at module level and inside functions alike (a lazy
import is still an arrow: it only moves the cycle from import time to call time). Imports
under ``if TYPE_CHECKING:`` are left out (annotations only). Layers, lowest first; a module
may import its own layer and those below:
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ftlab"

LAYERS: list[tuple[str, set[str]]] = [
    # plain helpers every layer uses
    ("base", {"errors", "registry", "specs", "options", "outputs", "state_dicts", "progress",
              "devices", "trainer_keys", "override_checks", "run_record", "lock_wait",
              "data_sources", "runinfo"}),
    # the parts a model is made of
    ("parts", {"backbones", "data", "finetuning", "adapters"}),
    ("tasks", {"tasks"}),
    # the LightningModules, their records and checkpoints
    ("module", {"record", "checkpoints", "module", "init_from", "averaging", "distillation",
                "tuning"}),
    ("evaluation", {"evaluation"}),
    # the edge: Hydra, the CLI, what runs and reads runs
    ("edge", {"train", "compose", "cli", "evaluate", "exports", "sweeps", "rundir", "faults",
              "loggers", "csv_log", "config_checks", "starter", "sharding", "lm"}),
]  # fmt: skip

# Arrows allowed against the rules: none. Add one only with a comment saying why.
KNOWN: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        if {"conf", "starter_template"} & set(rel.parts):
            continue
        name = ".".join(rel.parts).removesuffix(".__init__")
        found[name] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ftlab modules ``name`` imports anywhere in its file (``from a import b`` counts
    ``a.b`` where that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    skipped: set[int] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if _type_checking(node):
            skipped.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
    if name == "ftlab":  # the package's public names: it imports from every layer
        return len(LAYERS) - 1
    top = name.split(".")[1] if "." in name else ""
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{name} is in no layer of tests/test_structure.py: add it to one")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def allowed(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    return {a: {b for b in bs if (a, b) not in KNOWN} for a, bs in edges.items()}


def test_no_import_cycles() -> None:
    assert cycles(allowed(graph())) == []


def test_no_layer_imports_one_above_it() -> None:
    edges = allowed(graph())
    upward = sorted(
        f"{a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})"
        for a, bs in edges.items()
        for b in bs
        if layer(b) > layer(a)
    )
    assert upward == []


def test_the_scan_sees_function_level_imports_and_would_fail(tmp_path: Path) -> None:
    """The guard itself: an arrow back up inside a function, and a cycle, are both found."""
    broken = {k: set(v) for k, v in allowed(graph()).items()}
    broken["ftlab.backbones.weights"].add("ftlab.checkpoints")  # the arrow this issue removed
    assert any("ftlab.backbones.weights" in c for c in cycles(broken))
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from ftlab.module import Classifier\n")
    assert imports("ftlab.backbones.lazy", module, {"ftlab.module"}) == {"ftlab.module"}
    with pytest.raises(AssertionError, match="in no layer"):
        layer("ftlab.newroom")
