"""The CLI reference, generated from the click commands themselves (so it cannot go stale).

`command_pages()` walks the `qscope-eval` group (qscope_eval/cli/main.py) and returns one Markdown page
per command (`cli/<name>.md`: what it does, usage, the example, every option with its type, default and
help) plus `cli/index.md`, a table of all commands. `docs/hooks.py` adds these pages to the mkdocs build
and to the nav at build time; `python docs/gen_cli.py OUT_DIR` writes them to a folder instead (to read
them without building the site). tests/test_docs.py fails when a command or option has no help.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

PROG = "qscope-eval"


def _group() -> click.Group:
    from qscope_eval.cli.main import cli

    return cli


def _split_example(text: str) -> tuple[str, list[str]]:
    """The docstring without its `Example:` lines, and the example commands."""
    body, examples = [], []
    for line in inspect.cleandoc(text or "").splitlines():
        if line.strip().startswith("Example:"):
            examples.append(line.split("Example:", 1)[1].strip())
        else:
            body.append(line)
    return "\n".join(body).strip(), examples


def _cell(text: str) -> str:
    """Text that is safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text) -> str:
    """Inline code that is safe in a table cell (a `|` inside backticks would show its escape)."""
    import html

    return "<code>" + html.escape(" ".join(str(text).split())).replace("|", "&#124;") + "</code>"


def _option_rows(cmd: click.Command, ctx: click.Context) -> list[str]:
    rows = []
    for p in cmd.get_params(ctx):
        if getattr(p, "hidden", False):
            continue
        if isinstance(p, click.Argument):
            rows.append(f"| {_code(p.human_readable_name)} | argument{' (required)' if p.required else ''}"
                        f"{', repeatable' if p.nargs == -1 else ''} | | see the description above |")
            continue
        record = p.get_help_record(ctx)
        names = record[0] if record else ", ".join(p.opts)
        kind = "flag" if getattr(p, "is_flag", False) else _cell(p.type.get_metavar(p, ctx) or p.type.name)
        default = p.default if getattr(p, "show_default", False) or p.default not in (None, False, ()) else ""
        if (callable(default) or getattr(p, "is_flag", False) or default is None or default == ()
                or type(default).__name__ == "Sentinel"):  # click 8.3+: an unset default is a sentinel
            default = ""
        rows.append(f"| {_code(names)} | {kind}{' (required)' if p.required else ''} | "
                    f"{_code(default) if default != '' else ''} | {_cell(p.help or '')} |")
    return rows


def command_page(name: str, cmd: click.Command, group: click.Group) -> str:
    """One command's reference page (Markdown)."""
    parent = click.Context(group, info_name=PROG)
    ctx = click.Context(cmd, info_name=name, parent=parent)
    body, examples = _split_example(cmd.help or "")
    usage = cmd.get_usage(ctx).replace("Usage: ", "", 1)
    out = [f"# {PROG} {name}", "", "*Generated from the command's own `--help` at build time.*", "", body, "",
           "## Usage", "", "```text", usage, "```", ""]
    if examples:
        out += ["## Example", "", "```bash", *examples, "```", ""]
    out += ["## Options", "", "| option | type | default | help |", "| --- | --- | --- | --- |",
            *_option_rows(cmd, ctx), ""]
    return "\n".join(out)


def index_page(group: click.Group) -> str:
    rows = [f"| [`{name}`]({name}.md) | {_cell(cmd.get_short_help_str(limit=120))} |"
            for name, cmd in sorted(group.commands.items())]
    return "\n".join([
        "# CLI reference", "",
        "One page per command, generated from the click commands' help when the site is built. The same text "
        f"is `{PROG} COMMAND --help`. What the commands are for, and the stable keys of every `--json` "
        "output, are on [Commands and JSON output](../cli.md).", "",
        "| command | what it does |", "| --- | --- |", *rows, ""])


def command_pages(group: click.Group | None = None) -> dict[str, str]:
    """`{"cli/index.md": ..., "cli/<name>.md": ...}` for every command of the group."""
    group = group or _group()
    pages = {"cli/index.md": index_page(group)}
    for name, cmd in sorted(group.commands.items()):
        pages[f"cli/{name}.md"] = command_page(name, cmd, group)
    return pages


if __name__ == "__main__":
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "site-cli")
    for rel, text in command_pages().items():
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_text(text, encoding="utf-8")
    print(f"wrote {len(command_pages())} pages under {out_dir}/cli/")
