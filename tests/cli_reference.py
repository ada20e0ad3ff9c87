"""The README's table of ``moe-oracle verify`` options, generated from the parser itself
(``python -m tests.cli_reference`` rewrites it; ``tests/oracle/test_cli.py`` fails when it is stale)."""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_oracle.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- cli-options:begin (python -m tests.cli_reference) -->", "<!-- cli-options:end -->"
_TYPES = {int: "integer", float: "number", None: "text"}


def _invocation(action: argparse.Action) -> str:
    flags = ", ".join(action.option_strings) or action.dest
    if action.nargs == 0:
        return f"`{flags}`"
    value = "{" + ",".join(action.choices) + "}" if action.choices else action.metavar or action.dest.upper()
    return f"`{flags} {value}`"


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def options_table(parser: argparse.ArgumentParser | None = None) -> str:
    """The parser's description, one row per option (flags and value, type, repeatable, default, help), its epilog."""
    parser = parser or build_parser()
    rows = [parser.description, "",
            "| option | value | default | what it does |", "|---|---|---|---|"]
    for action in parser._actions:
        kind = ("repeatable " if isinstance(action, argparse._AppendAction) else "") + (
            "" if action.nargs == 0 or action.choices else _TYPES.get(action.type, getattr(action.type, "__name__", "?")))
        default = "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`"
        rows.append(f"| {_cell(_invocation(action))} | {kind.strip()} | {default} | {_cell(action.help)} |")
    return "\n".join([*rows, "", parser.epilog]) + "\n"


def readme_block(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> None:
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{options_table()}{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
