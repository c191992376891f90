"""mkdocs hooks: the CLI reference pages are generated from the click commands at build time.

`on_config` makes the nav entry "CLI reference" list every command's page (so a new command appears
without editing mkdocs.yml); `on_files` adds the generated pages (docs/gen_cli.py) to the build. The
repository root goes on sys.path so the checkout's `qscope_eval` is the one documented.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAV_KEY = "CLI reference"


def _pages() -> dict[str, str]:
    for p in (str(ROOT), str(ROOT / "docs")):
        if p not in sys.path:
            sys.path.insert(0, p)
    from gen_cli import command_pages

    return command_pages()


def on_config(config, **kwargs):
    pages = _pages()
    entries = ["cli/index.md"] + [{Path(k).stem: k} for k in pages if k != "cli/index.md"]

    def walk(items):
        for i, item in enumerate(items or []):
            if isinstance(item, dict):
                for key, value in item.items():
                    if key == NAV_KEY:
                        item[key] = entries
                    elif isinstance(value, list):
                        walk(value)

    walk(config["nav"])
    return config


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for rel, text in _pages().items():
        files.append(File.generated(config, rel, content=text))
    return files
