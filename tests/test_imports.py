"""The package's import graph: no cycles (not even through imports inside functions), no private names.

Every module of ``propagate`` is parsed (``ast``, so nothing is imported or
run) and every ``import``/``from ... import`` anywhere in it, at module level
or inside a function, becomes an edge to the ``propagate`` module it names.
Modules must depend downward (DESIGN.md: cli -> commands -> report ->
{train, simulate, theory} -> {spec, layers, selu} -> {activations, inits}),
so the graph must be acyclic. A module may use another module's public names
only: ``from propagate.x import _name`` and ``x._name`` (with ``x`` an imported
``propagate`` module) are flagged. Private *modules* (``propagate._model``,
``propagate.commands._args``) are a package's own helpers and may be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import propagate

ROOT = Path(propagate.__file__).resolve().parent


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Absolute name of a (possibly relative) ``from`` import's module."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph(root: Path, package: str):
    """``(edges, private_uses)``: ``edges[m]`` is the set of package modules ``m`` imports;
    ``private_uses`` lists ``"module: how"`` for every use of another module's private name."""
    modules = module_files(root, package)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_pkg = path.name == "__init__.py"
        aliases: dict[str, str] = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in modules:
                        edges[mod].add(a.name)
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node.level, node.module)
                if not (src == package or src.startswith(package + ".")):
                    continue
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if sub in modules:  # a submodule: depends on it (a private module is allowed)
                        edges[mod].add(sub)
                        aliases[a.asname or a.name] = sub
                    else:
                        if src in modules:
                            edges[mod].add(src)
                        if _private(a.name) and src != mod:
                            private.append(f"{mod}: from {src} import {a.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                target = aliases.get(node.value.id)
                if target and target != mod and f"{target}.{node.attr}" not in modules:
                    private.append(f"{mod}: {node.value.id}.{node.attr} ({target})")
    for m in edges:
        edges[m].discard(m)
    return edges, sorted(set(private))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v):  # recursion depth is bounded by the number of modules (~60)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def _cycle_path(edges, comp) -> str:
    """One concrete loop inside a strongly connected component, for the failure message."""
    comp_set = set(comp)
    path, seen = [comp[0]], {comp[0]}
    while True:
        nxt = sorted(w for w in edges[path[-1]] if w in comp_set)
        back = [w for w in nxt if w in seen]
        if back:
            return " -> ".join(path[path.index(back[0]):] + [back[0]])
        path.append(nxt[0])
        seen.add(nxt[0])


# --------------------------------------------------------------------------- #
# the walker itself, on a small package written here (so these checks can fail)
# --------------------------------------------------------------------------- #


def _write(root: Path, files: dict[str, str]):
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_walker_finds_cycles_inside_functions_and_relative_imports(tmp_path):
    _write(tmp_path, {
        "__init__.py": "",
        "a.py": "import os\nfrom pkg.b import f\n",
        "b.py": "def f():\n    from pkg import c\n    return c\n",
        "c.py": "def g():\n    from .a import f\n",
        "sub/__init__.py": "",
        "sub/d.py": "from ..a import f\nfrom . import e\n",
        "sub/e.py": "import pkg.c as cc\n",
    })
    edges, private = import_graph(tmp_path, "pkg")
    assert edges["pkg.b"] == {"pkg.c"} and edges["pkg.c"] == {"pkg.a"}
    assert edges["pkg.sub.d"] == {"pkg.a", "pkg.sub.e"} and edges["pkg.sub.e"] == {"pkg.c"}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert _cycle_path(edges, ["pkg.a", "pkg.b", "pkg.c"]) == "pkg.a -> pkg.b -> pkg.c -> pkg.a"
    assert private == []


def test_walker_finds_private_names_but_allows_private_modules(tmp_path):
    _write(tmp_path, {
        "__init__.py": "__version__ = '1'\n",
        "a.py": "_x = 1\ndef _h():\n    pass\n",
        "_m.py": "",
        "b.py": "from pkg.a import _x\nfrom pkg import _m, __version__\n",
        "c.py": "import pkg.a as A\nfrom pkg import a\ndef f():\n    return A._h(), a._x, a.__doc__\n",
        "d.py": "_y = 2\ndef f():\n    return _y\n",
    })
    edges, private = import_graph(tmp_path, "pkg")
    assert edges["pkg.b"] == {"pkg.a", "pkg._m", "pkg"}
    assert private == ["pkg.b: from pkg.a import _x", "pkg.c: A._h (pkg.a)", "pkg.c: a._x (pkg.a)"]
    assert cycles(edges) == []


# --------------------------------------------------------------------------- #
# the package
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT, "propagate")


def test_the_walk_sees_the_package(graph):
    edges, _ = graph
    assert len(edges) > 30 and "propagate.report.findings" in edges
    assert "propagate.confidence" in edges["propagate.report.findings"]


def test_no_import_cycles(graph):
    edges, _ = graph
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(_cycle_path(edges, c) for c in found)


def test_no_private_names_of_other_modules(graph):
    _, private = graph
    assert not private, "private names used across modules:\n" + "\n".join(private)
