"""The documentation site builds strictly, and nothing the user can call or query is undocumented.

- `mkdocs build --strict` (no warning: no broken link, no missing page, no unlisted page) into a tmp dir;
- every CLI command has a docstring with `Example:`, every option a help text, every argument a mention in
  the docstring, and a generated reference page in the built site;
- every table and view of a fresh database is documented on the SQL page (docs/database.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from qscope_eval.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def _commands():
    return sorted(cli.commands.items())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not MKDOCS.exists() and shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -r requirements/lock.txt)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    exe = str(MKDOCS) if MKDOCS.exists() else shutil.which("mkdocs")
    proc = subprocess.run([exe, "build", "--strict", "-d", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, out


def test_site_builds_strictly(site):
    proc, out = site
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    assert (out / "index.html").is_file()
    # every page in docs/ is built (an unlisted page would be a warning above; this checks the files exist)
    for md in (ROOT / "docs").rglob("*.md"):
        rel = md.relative_to(ROOT / "docs").with_suffix("")
        page = out / ("index.html" if rel.name == "index" else rel / "index.html")
        if rel.name == "index" and rel.parent != Path("."):
            page = out / rel.parent / "index.html"
        assert page.is_file(), f"{md} was not built"


def test_every_command_has_a_generated_page(site):
    proc, out = site
    assert proc.returncode == 0, proc.stderr[-4000:]
    index = (out / "cli" / "index.html").read_text(encoding="utf-8")
    for name, cmd in _commands():
        page = out / "cli" / name / "index.html"
        assert page.is_file(), f"no generated page for `qscope-eval {name}`"
        text = page.read_text(encoding="utf-8")
        assert f"qscope-eval {name}" in text
        for p in cmd.params:  # every option appears on its page
            if isinstance(p, click.Option) and not p.hidden:
                assert p.opts[0] in text, f"{name}: {p.opts[0]} missing from its page"
        assert f'href="{name}/"' in index, f"the CLI index does not link {name}"


@pytest.mark.parametrize("name,cmd", _commands(), ids=[n for n, _ in _commands()])
def test_command_is_documented(name, cmd):
    doc = cmd.help or ""
    assert doc.strip(), f"`{name}` has no docstring"
    assert "Example: qscope-eval " in doc, f"`{name}`'s docstring has no `Example: qscope-eval ...` line"
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            assert (p.help or "").strip(), f"`{name} {p.opts[0]}` has no help text"
        elif isinstance(p, click.Argument):
            assert p.human_readable_name.upper() in doc, \
                f"`{name}`: argument {p.human_readable_name} is not explained in the docstring"


def test_group_options_have_help():
    for p in cli.params:
        if isinstance(p, click.Option) and not p.hidden:
            assert (p.help or "").strip() or p.name == "version", p.opts


def test_generator_covers_every_command():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from gen_cli import command_pages
    finally:
        sys.path.remove(str(ROOT / "docs"))
    pages = command_pages(cli)
    assert set(pages) == {"cli/index.md"} | {f"cli/{n}.md" for n, _ in _commands()}
    # the page is the command's own help: its first line and its example are there verbatim
    for name, cmd in _commands():
        first = cmd.help.strip().splitlines()[0].strip()
        assert first in pages[f"cli/{name}.md"]
        example = re.search(r"Example:\s*(.+)", cmd.help).group(1).strip()
        assert example in pages[f"cli/{name}.md"]


def test_every_table_and_view_is_on_the_sql_page(tmp_path):
    from qscope_eval.store import Store

    with Store(str(tmp_path / "fresh.duckdb")) as store:
        names = [r[0] for r in store.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal AND NOT temporary AND schema_name = 'main' "
            "UNION SELECT view_name FROM duckdb_views() WHERE NOT internal AND NOT temporary "
            "AND schema_name = 'main'").fetchall()]
    assert {"samples", "activations", "coverage", "pairwise_overlap"} <= set(names), names  # the query sees them
    page = (ROOT / "docs" / "database.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\|\s*`(\w+)`", page, flags=re.M))  # first cell of a table row
    missing = sorted(set(names) - documented)
    assert not missing, f"tables/views missing from the tables of docs/database.md: {missing}"


def test_readme_links_resolve():
    """The README's relative links (to docs pages) point at files that exist: it is read on GitHub, unbuilt."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme) if "://" not in m]
    assert links, "the README links no docs page"
    missing = [m for m in links if not (ROOT / m).exists()]
    assert not missing, missing
    assert len(readme.splitlines()) <= 160, "the README is for the first day: keep it short, move the rest to docs/"
