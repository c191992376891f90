"""The package's layout rules (docs/layout.md): no import circles inside qscope_eval, the pure
analysis room imports no torch / DuckDB / Prefect / Altair, no SQL outside the store, small modules.

Imports are read from the source (every import statement, also those inside functions: a lazy
import that closes a circle is still a circle), except those under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PKG = ROOT / "qscope_eval"
HEAVY = {"torch", "duckdb", "prefect", "altair", "prefect_dask", "transformers", "vl_convert"}
MAX_LINES = 450  # "~400": a module past this wants splitting


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module this file imports (package-internal targets resolved to modules, others by top name)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node) for n in ast.walk(node)}
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in known else mod)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {t for t in imports(p, m, known) if t in known and t != m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_inside_the_package():
    assert cycles(graph()) == []


def test_the_circle_check_finds_a_planted_circle():
    g = graph()
    g["qscope_eval.data.suite"] = g["qscope_eval.data.suite"] | {"qscope_eval.data.sources"}  # sources imports suite
    assert any({"qscope_eval.data.suite", "qscope_eval.data.sources"} <= set(c) for c in cycles(g))


def test_analysis_room_imports_no_heavy_library():
    mods = modules()
    known = set(mods)
    offenders = {}
    for name, path in mods.items():
        if name.startswith("qscope_eval.analysis"):
            heavy = {i.split(".")[0] for i in imports(path, name, known)} & HEAVY
            inside = {i for i in imports(path, name, known) if i in known and not i.startswith("qscope_eval.analysis")
                      and i != "qscope_eval.errors"}
            if heavy or inside:
                offenders[name] = sorted(heavy | inside)
    assert offenders == {}, "analysis/ must stay pure numpy/scipy: " + repr(offenders)


def test_heavy_import_check_would_catch_one(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import duckdb\n")
    assert "duckdb" in imports(f, "qscope_eval.analysis.m", set())


SQL = re.compile(r"\.(execute|executemany|sql|query)\(")  # a DuckDB connection call


def test_no_sql_outside_the_store():
    found = [module_name(p) for name, p in modules().items()
             if not name.startswith("qscope_eval.store") and SQL.search(p.read_text())]
    assert found == [], "SQL belongs in qscope_eval/store: " + ", ".join(found)


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_small(name):
    n = len(modules()[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines; split it by concept (docs/layout.md)"


def test_readme_layout_names_every_module():
    """docs/layout.md is the module map: a module missing from it is a room nobody can find."""
    layout = (ROOT / "docs" / "layout.md").read_text()
    missing = []
    for name, path in modules().items():
        if path.name == "__init__.py":
            continue
        room = path.parent.name + "/"
        if path.name not in layout or (room != "qscope_eval/" and room not in layout):
            missing.append(name)
    assert missing == [], "add these to docs/layout.md: " + ", ".join(missing)


def _package_imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, name or None, line) of every qscope_eval import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "qscope_eval":
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "qscope_eval"]
    return out


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_bench_scripts_import_names_that_exist(script):
    """A bench script is run by hand (some only on a GPU): a name it imports that the package dropped would only
    show there. Every qscope_eval name each one imports must exist."""
    import importlib

    missing = []
    for module, name, line in _package_imports(ROOT / "bench" / script):
        mod = importlib.import_module(module)
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{script}:{line} {module}.{name}")
    assert not missing, missing


def test_bench_import_check_would_catch_one(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from qscope_eval.model.forward import _groups, options_for\nimport qscope_eval.store\n")
    assert _package_imports(planted) == [("qscope_eval.model.forward", "_groups", 1),
                                         ("qscope_eval.model.forward", "options_for", 1), ("qscope_eval.store", None, 2)]
    import importlib

    assert not hasattr(importlib.import_module("qscope_eval.model.forward"), "_groups")
