"""docs/cli.md says what the parser does: each command's usage block lists exactly the flags `--help` lists, and the
choices it writes out (`--rule a|b`) are the parser's; `--help` itself shows every flag's choices."""

import re

import pytest

from ches.cli import build_parser
from conftest import ROOT


COMMANDS = ["score", "filter", "report", "validate", "pairs", "audit"]


def usage_block(command: str) -> str:
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text.split(f"## `ches {command}`", 1)[1]
    return section.split("```", 2)[1]


def usage_flags(command: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]*", usage_block(command)))


def command_parser(command: str):
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    return subparsers.choices[command]


def parser_flags(command: str) -> set[str]:
    return {option for action in command_parser(command)._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"}


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_md_lists_every_flag(command):
    assert usage_flags(command) == parser_flags(command)


@pytest.mark.parametrize("command", COMMANDS)
def test_the_choices_cli_md_writes_out_are_the_parsers(command):
    written = dict(re.findall(r"(--[a-z][a-z-]*) ([a-z0-9_]+(?:\|[a-z0-9_]+)+)", usage_block(command)))
    choices = {option: action.choices for action in command_parser(command)._actions for option in action.option_strings}
    assert {flag: values.split("|") for flag, values in written.items()} == \
        {flag: list(choices[flag]) for flag in written}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_flags_choices(command):
    """A flag with choices shows them in --help (argparse writes {a,b} unless a metavar hides them)."""
    help_text = " ".join(command_parser(command).format_help().split())
    for action in command_parser(command)._actions:
        if action.choices and action.option_strings:
            assert f"{action.option_strings[0]} {{{','.join(action.choices)}}}" in help_text
