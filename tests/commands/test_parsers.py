"""pilot.cli fills in only the parser of the command a command line names: every answer must be the one
the whole parser gives (help texts, usage errors, the parsed arguments)."""

from __future__ import annotations

import shutil

import pytest

from pilot import cli

# Command lines that end in argparse: help, version, usage errors.
ANSWERED_BY_ARGPARSE = [
    [], ["--help"], ["-h", "status"], ["--he", "status"], ["--hel", "task", "list"], ["--version"],
    ["--version", "status"], ["status", "--version"], ["--json"], ["--json", "status"], ["bogus"], ["-", "status"],
    ["status", "--help"], ["status", "--bogus"], ["status", "--json", "extra"], ["task"], ["task", "--help"],
    ["task", "-h", "list"], ["task", "--help", "show"], ["task", "lst"], ["task", "--json"], ["task", "--", "list"],
    ["task", "--json", "list"], ["task", "list", "-h"], ["task", "list", "--limit"], ["task", "list", "--limit", "0"],
    ["task", "list", "--limit=x", "--json"], ["task", "add"], ["task", "add", " "], ["task", "add", "t", "--"],
    ["task", "show"], ["task", "show", "x"], ["task", "log", "--help"], ["config"], ["config", "-h", "check"],
    ["debug"], ["debug", "-h"], ["self-update", "--help"], ["self-update", "--check", "--rollback"],
    ["stop", "--timeout", "soon"], ["version", "--help"],
]
PARSED = [
    ["status"], ["status", "--json"], ["task", "list"], ["task", "list", "--limit", "3"],
    ["task", "list", "--json"], ["task", "add", "a title"], ["task", "add", "--json", "status", "--", "ls", "-l"],
    ["task", "show", "3", "--json"], ["config", "check"], ["self-update", "--to", "1.2.3", "--yes"],
    ["stop", "--wait", "--timeout", "90s"], ["debug", "failpoints"], ["version", "--json"],
]


@pytest.fixture(autouse=True)
def fixed_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")


def whole_parser(argv=None, build=cli.build_parser):
    return build(None)


@pytest.mark.parametrize("argv", ANSWERED_BY_ARGPARSE, ids=" ".join)
def test_help_and_usage_errors_are_those_of_the_whole_parser(argv, capsys, monkeypatch):
    answers = []
    for _ in range(2):
        with pytest.raises(SystemExit) as ended:
            code = cli.main(argv)  # `pilot` alone prints the help and returns
            raise SystemExit(code)
        answers.append((ended.value.code, *capsys.readouterr()))
        monkeypatch.setattr(cli, "build_parser", whole_parser)
    assert answers[0] == answers[1]


@pytest.mark.parametrize("argv", PARSED, ids=" ".join)
def test_the_parsed_arguments_are_those_of_the_whole_parser(argv):
    def parsed(parser) -> dict:
        found = vars(cli.parse_command_line(parser, list(argv)))
        return {key: value for key, value in found.items() if key != "leaf_parser"}

    assert parsed(cli.build_parser(argv)) == parsed(cli.build_parser())


@pytest.mark.parametrize("columns", ["100", "0", "wide", None])
def test_the_help_is_as_wide_as_shutil_would_say(columns, monkeypatch):
    if columns is None:
        monkeypatch.delenv("COLUMNS")
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli.terminal_width() == shutil.get_terminal_size().columns
