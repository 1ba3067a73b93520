"""docs/cli.md says what the parser does: each command's usage block lists exactly the flags `--help` lists, and the
choices it writes out (`--rule a|b`) are the parser's; `--help` itself shows every flag's choices."""

import re

import pytest
from conftest import ROOT

from ches.cli import build_parser

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
    written = dict(re.findall(r"(--[a-z][a-z-]*) ([a-z0-9_.]+(?:\|[a-z0-9_.]+)+)", usage_block(command)))
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


def command_actions(command: str):
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    return [action for action in subparsers.choices[command]._actions if action.help]


@pytest.mark.parametrize("command", COMMANDS)
def test_stated_defaults_are_the_parsers(command):
    """A help line that states a default ("(default X)") states the value the flag really takes when omitted."""
    stated = [(action, match.group(1)) for action in command_actions(command)
              for match in [re.search(r"\(default ([^):]+)\)", action.help)] if match]
    assert stated or command in ("score", "audit")  # the others state some
    for action, text in stated:
        default = action.default if action.default is not None else resolved_later(action.option_strings[0])
        assert text == str(default), (action.option_strings, text, default)


def resolved_later(flag: str):
    """What the code uses for a flag left at None whose help states the value (read from the code using it)."""
    from ches.builder.candidates import ULTRAFEEDBACK_RATING
    from ches.options import FilterOptions

    return {"--quantile": FilterOptions().quantile_kept, "--window": FilterOptions(around=0.5).window_kept,
            "--rating-field": ULTRAFEEDBACK_RATING}[flag]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_without_a_stated_default_has_none_set(command):
    """A flag whose help names no default, or a computed one ("default: ..."), defaults to None (or is a switch):
    the value the help describes is chosen later by the code, not set silently by the parser."""
    for action in command_actions(command):
        if action.option_strings and "(default " not in action.help and action.nargs != 0 and action.required is False:
            assert action.default is None, (command, action.option_strings, action.default, action.help)


def test_validate_dtype_help_is_float32_everywhere():
    """ches.validate runs in float32 on every device unless told otherwise; its help says so, not score's rule."""
    from ches.options import ValidateOptions

    dtype = next(action for action in command_actions("validate") if "--dtype" in action.option_strings)
    assert "bfloat16 on CUDA" not in dtype.help
    assert dtype.help.endswith(f"(default {ValidateOptions().dtype})") and dtype.default == "float32"


def test_batch_tokens_help_states_the_cpu_default():
    from ches.model.models import CPU_BATCH_TOKENS

    batch = next(action for action in command_actions("score") if "--batch-tokens" in action.option_strings)
    assert f"{CPU_BATCH_TOKENS} on CPU" in batch.help


@pytest.mark.parametrize("command", ["report", "validate"])
def test_overwrite_help_of_single_file_outputs(command):
    overwrite = next(action for action in command_actions(command) if "--overwrite" in action.option_strings)
    assert "folder" not in overwrite.help


def test_api_md_summary_names_the_keys_summary_returns():
    """docs/api.md's `ches.summary` block names exactly the keys ches.summary returns, at every level."""
    import ches
    from ches.data.columns import MEASURES

    section = (ROOT / "docs" / "api.md").read_text().split("## `ches.summary`", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python", 1)[1].split("```", 1)[0]
    documented = set(re.findall(r'"([^"]+)":', block))
    rows = [{"chosen": "a", "rejected": "b", "ches": float(i), "ln_ches": i / 2, "last_hidden_ip": -i / 3,
             "edit_distance": float(i % 3), "chosen_tokens": i, "rejected_tokens": 4 - i % 2, "ches_skip": None,
             "ches_flags": ["empty_chosen"] if i == 1 else []}
            for i in range(1, 9)] + [{"chosen": "a", "rejected": "b", "ches": float("nan"), "ln_ches": float("nan"),
                                      "last_hidden_ip": float("nan"), "edit_distance": float("nan"), "chosen_tokens": 0,
                                      "rejected_tokens": 0, "ches_skip": "empty completion", "ches_flags": []}]
    result = ches.summary(rows)
    assert set(result["measures"]) == set(MEASURES)
    returned = set(result) | set(result["measures"]) | set(result["correlations"]) | set(result["flags"]) | \
        {name for stats in result["measures"].values() for name in stats}
    assert documented == returned
