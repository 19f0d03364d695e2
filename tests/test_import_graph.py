"""The package's import graph: acyclic, layered, and no imports hidden inside functions.

Every module under ``src/embcompress`` is parsed with :mod:`ast` (nothing is imported), relative
imports are resolved to module names (``embcompress.methods.base``), and the graph is checked
against :data:`LAYERS`:

* no import cycles between modules;
* a module imports only modules of its own layer or a lower one (never upward);
* every module is placed in the table (a new module must be given a layer);
* no function-local import of an embcompress module, and function-local imports of third-party
  packages only for the optional dependencies in :data:`LOCAL_IMPORT_ALLOW`.

Importing ``a.b.c`` from outside package ``a.b`` also runs ``a/b/__init__.py``, so such an import
counts as an edge to ``a.b`` too (the root package ``embcompress`` excepted: it is the facade and
every module's ancestor). Dynamic imports (``importlib.import_module``, used by ``cli`` to register
its command modules) are not seen.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

ROOT = "embcompress"
SRC = Path(__file__).resolve().parents[1] / "src" / ROOT

# Module name (or package prefix: it covers the package and all its submodules; the longest match
# wins) -> layer. A module may import modules of its own layer or a lower one; the graph must also be
# acyclic. Low to high.
LAYERS: dict[str, int] = {
    # leaves: no embcompress imports beyond each other
    "embcompress.errors": 0,
    "embcompress.version": 0,
    "embcompress.progress": 0,
    "embcompress.spectral": 0,
    "embcompress.quant": 0,
    "embcompress.kinds": 0,
    "embcompress.allocation": 0,
    "embcompress.codec": 0,
    "embcompress.threads": 0,
    # the output guard (every write goes through it)
    "embcompress.outputs": 0,
    # byte accounting; the user cache (assembled and de-quantized GGUF files, corpora)
    "embcompress.sizes": 1,
    "embcompress.cache": 1,
    # configuration / option bases
    "embcompress.config": 2,
    "embcompress.options": 2,
    # the factorized nn.Modules
    "embcompress.modules": 3,
    # factorization methods (package)
    "embcompress.methods": 4,
    # model surgery and the transformers quantizer hook
    "embcompress.surgery": 5,
    "embcompress.sentence": 5,
    "embcompress.hf_integration": 5,
    # the one checkpoint validator (load, the quantizer, inspect, report)
    "embcompress.validation": 5,
    # loading sources, model cards, data and token frequencies
    "embcompress.sources": 6,
    "embcompress.card": 6,
    "embcompress.data": 6,
    "embcompress.frequency": 6,
    "embcompress.selftext": 6,
    "embcompress.corpora": 6,
    # the checkpoint format, budgets, summaries
    "embcompress.checkpoint": 7,
    "embcompress.budget": 7,
    "embcompress.summary": 7,
    # `embcompress factorize`
    "embcompress.factorize": 8,
    # `embcompress distill`, `embcompress report` (packages)
    "embcompress.distill": 9,
    "embcompress.report": 9,
    # ONNX checks and int8 quantization under `embcompress export`
    "embcompress.onnx_check": 9,
    "embcompress.onnx_quantize": 9,
    # `embcompress compress`, `embcompress export`
    "embcompress.compress": 10,
    "embcompress.export": 10,
    "embcompress.onnx_export": 10,
    # the public facade (src/embcompress/__init__.py); exact name only, not a prefix
    "embcompress": 11,
    # the command line
    "embcompress.cli": 12,
    "embcompress.__main__": 13,
}

# Entries that may name a module which does not exist (yet): skipped instead of reported as stale.
OPTIONAL_ENTRIES = {"embcompress.sizes", "embcompress.options"}

# Module -> third-party top-level packages it may import inside a function (optional dependencies).
LOCAL_IMPORT_ALLOW: dict[str, set[str]] = {
    "embcompress.methods.nmf": {"sklearn"},
    "embcompress.data": {"pyarrow"},
    "embcompress.onnx_export": {"onnx", "onnxruntime"},
    "embcompress.onnx_check": {"onnx"},
    "embcompress.onnx_quantize": {"onnx", "onnxruntime"},
}


@dataclass(frozen=True)
class Edge:
    target: str
    line: int
    via: str = ""  # set when the edge is the implicit import of a parent package


def discover(src: Path = SRC) -> dict[str, Path]:
    """Module name -> file for every module under ``src`` (packages by their ``__init__.py``)."""
    modules = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _package_of(name: str, is_package: bool) -> str:
    return name if is_package else name.rpartition(".")[0]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _in_function(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function body (at any depth)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    inside.add(id(sub))
    return inside


@dataclass(frozen=True)
class ImportRef:
    target: str  # embcompress module name, or the third-party top-level package
    line: int
    internal: bool
    local: bool  # inside a function body


def imports_of(source: str, name: str, is_package: bool, modules: set[str]) -> tuple[list[ImportRef], list[str]]:
    """The imports in one module's ``source``, resolved; and the problems (unresolvable imports)."""
    tree = ast.parse(source)
    local_ids = _in_function(tree)
    refs: list[ImportRef] = []
    problems: list[str] = []
    package = _package_of(name, is_package)
    for node in ast.walk(tree):
        local = id(node) in local_ids
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == ROOT:
                    if alias.name not in modules:
                        problems.append(f"{name}:{node.lineno}: `import {alias.name}`: no such module")
                        continue
                    refs.append(ImportRef(alias.name, node.lineno, True, local))
                else:
                    refs.append(ImportRef(alias.name.split(".")[0], node.lineno, False, local))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 >= len(base):
                    problems.append(f"{name}:{node.lineno}: relative import beyond the top-level package")
                    continue
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != ROOT:
                refs.append(ImportRef(module.split(".")[0], node.lineno, False, local))
                continue
            if module not in modules:
                problems.append(f"{name}:{node.lineno}: `{ast.unparse(node)}`: no module {module}")
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                # `from pkg import submodule` depends on the submodule; `from pkg import name` on pkg
                target = sub if sub in modules else module
                refs.append(ImportRef(target, node.lineno, True, local))
    refs.sort(key=lambda r: r.line)
    return refs, problems


def build_graph(modules: dict[str, Path]) -> tuple[dict[str, list[Edge]], list[str], list[str]]:
    """Module -> outgoing edges; unresolvable imports; function-local import violations."""
    names = set(modules)
    graph: dict[str, list[Edge]] = {}
    problems: list[str] = []
    local_violations: list[str] = []
    for name, path in modules.items():
        refs, bad = imports_of(path.read_text(), name, path.name == "__init__.py", names)
        problems += bad
        edges: dict[tuple[str, str], Edge] = {}
        own_ancestors = set(_ancestors(name))
        for ref in refs:
            if ref.local:
                allowed = LOCAL_IMPORT_ALLOW.get(name, set())
                if ref.internal:
                    local_violations.append(f"{name}:{ref.line}: function-local import of {ref.target}")
                elif ref.target not in allowed:
                    local_violations.append(
                        f"{name}:{ref.line}: function-local import of third-party {ref.target!r}"
                        f" (allowed here: {sorted(allowed) or 'none'}; see LOCAL_IMPORT_ALLOW)"
                    )
            if not ref.internal or ref.target == name:
                continue
            edges.setdefault((ref.target, ""), Edge(ref.target, ref.line))
            for parent in _ancestors(ref.target):
                if parent != ROOT and parent not in own_ancestors and parent != name:
                    edges.setdefault((parent, ref.target), Edge(parent, ref.line, via=ref.target))
        graph[name] = sorted(edges.values(), key=lambda e: (e.line, e.target))
    return graph, problems, local_violations


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of ``module``: its exact entry, else the longest package prefix (the root excepted)."""
    if module in layers:
        return layers[module]
    best = None
    for key in layers:
        if key != ROOT and module.startswith(key + ".") and (best is None or len(key) > len(best)):
            best = key
    return None if best is None else layers[best]


def find_cycles(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """One concrete cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            w = e.target
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or any(e.target == v for e in graph.get(v, [])):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in components:
        start = min(comp)
        # shortest path back to `start` inside the component (BFS)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for e in graph.get(v, []):
                    if e.target not in comp:
                        continue
                    if e.target == start:
                        found = v
                        break
                    if e.target not in prev:
                        prev[e.target] = v
                        nxt.append(e.target)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = prev.get(v)
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def check_graph(graph: dict[str, list[Edge]], layers: dict[str, int]) -> list[str]:
    """Every layering problem in ``graph``: unclassified modules, upward imports, cycles."""
    problems = []
    for module in sorted(graph):
        if layer_of(module, layers) is None:
            problems.append(f"{module}: not in the layer table (add it to LAYERS in tests/test_import_graph.py)")
    for module in sorted(graph):
        mine = layer_of(module, layers)
        for e in graph[module]:
            theirs = layer_of(e.target, layers)
            if mine is None or theirs is None:
                continue
            if theirs > mine:
                via = f" (its package __init__, via {e.via})" if e.via else ""
                problems.append(
                    f"{module}:{e.line}: upward import of {e.target}{via} (layer {theirs}) from layer {mine}"
                )
    for cycle in find_cycles(graph):
        hops = []
        for a, b in itertools.pairwise(cycle):
            line = next(e.line for e in graph[a] if e.target == b)
            hops.append(f"{a}:{line} -> {b}")
        problems.append("import cycle: " + "; ".join(hops))
    return problems


def stale_entries(modules: set[str], layers: dict[str, int]) -> list[str]:
    """Table entries that name no existing module or package (optional ones excepted)."""
    stale = []
    for key in sorted(layers):
        if key in OPTIONAL_ENTRIES or key in modules:
            continue
        if not any(m.startswith(key + ".") for m in modules):
            stale.append(f"{key}: in LAYERS but no such module or package")
    return stale


# --- the checks on the real package ---------------------------------------------------------------


def test_import_graph_is_layered_and_acyclic():
    modules = discover()
    assert f"{ROOT}.errors" in modules, f"no package found under {SRC}"
    graph, unresolved, _ = build_graph(modules)
    problems = unresolved + check_graph(graph, LAYERS) + stale_entries(set(modules), LAYERS)
    assert not problems, f"{len(problems)} import-graph problem(s):\n" + "\n".join(problems)


def test_no_function_local_imports():
    _, _, local = build_graph(discover())
    assert not local, f"{len(local)} function-local import(s):\n" + "\n".join(local)


# --- the checker itself fails where it should -----------------------------------------------------


def test_checker_reports_cycles_upward_imports_and_unclassified_modules():
    graph = {
        "p.a": [Edge("p.b", 1)],
        "p.b": [Edge("p.c", 2)],
        "p.c": [Edge("p.a", 3)],
        "p.low": [Edge("p.high", 4)],
        "p.high": [],
        "p.new": [],
    }
    layers = {"p.a": 0, "p.b": 0, "p.c": 0, "p.low": 0, "p.high": 1}
    problems = check_graph(graph, layers)
    assert any(p.startswith("import cycle: p.a:1 -> p.b; p.b:2 -> p.c; p.c:3 -> p.a") for p in problems), problems
    assert any(p.startswith("p.low:4: upward import of p.high") for p in problems), problems
    assert any(p.startswith("p.new: not in the layer table") for p in problems), problems
    assert len(problems) == 3, problems
    # a clean graph passes
    assert check_graph({"p.a": [Edge("p.b", 1)], "p.b": []}, {"p.a": 1, "p.b": 0}) == []


def test_checker_resolves_relative_imports_and_finds_local_ones():
    modules = {"embcompress", "embcompress.errors", "embcompress.methods", "embcompress.methods.base"}
    source = (
        "from __future__ import annotations\n"
        "import torch.nn\n"
        "from ..errors import EmbcompressError\n"
        "from . import base\n"
        "from . import get_method\n"
        "from .base import Factors\n"
        "def f():\n"
        "    from ..errors import X\n"
        "    import sklearn.decomposition\n"
        "from .nope import Y\n"
    )
    refs, problems = imports_of(source, "embcompress.methods.svd", False, modules)
    internal = [(r.target, r.line, r.local) for r in refs if r.internal]
    assert internal == [
        ("embcompress.errors", 3, False),
        ("embcompress.methods.base", 4, False),
        ("embcompress.methods", 5, False),
        ("embcompress.methods.base", 6, False),
        ("embcompress.errors", 8, True),
    ]
    external = {(r.target, r.local) for r in refs if not r.internal}
    assert external == {("__future__", False), ("torch", False), ("sklearn", True)}
    assert problems == ["embcompress.methods.svd:10: `from .nope import Y`: no module embcompress.methods.nope"]
    # a package's __init__ resolves `.` to itself
    refs, _ = imports_of("from .base import Factors\n", "embcompress.methods", True, modules)
    assert [r.target for r in refs] == ["embcompress.methods.base"]
