"""docs/cli.md says what the parser does: each command's usage block lists exactly the flags `--help` lists."""

import re

import pytest

from ches.cli import build_parser
from conftest import ROOT


def usage_flags(command: str) -> set[str]:
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text.split(f"## `ches {command}`", 1)[1]
    block = section.split("```", 2)[1]
    return set(re.findall(r"--[a-z][a-z-]*", block))


def parser_flags(command: str) -> set[str]:
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    parser = subparsers.choices[command]
    return {option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"}


@pytest.mark.parametrize("command", ["score", "filter", "report", "validate", "pairs", "audit"])
def test_cli_md_lists_every_flag(command):
    assert usage_flags(command) == parser_flags(command)
