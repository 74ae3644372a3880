"""The command line from a source checkout: version, help, refusals, error handling and import cost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pilot import cli
from pilot.buildinfo import SOURCE_VERSION, BuildInfo, platform_tag, python_tag
from pilot.commands import version
from pilot.errors import PilotError, StateError, UpdateError
from pilot.launcher import Interrupted

REPO = Path(__file__).resolve().parents[1]
SELF_UPDATE_FLAGS = ["--check", "--status", "--rollback", "--yes", "-y", "--channel", "--to", "--manifest-url",
                     "--no-restart", "--from-file", "--manifest", "--json"]
EXIT_CODES = ["0  success", "1  other error", "2  usage error", "3  update refused or failed",
              "4  local state or config unusable", "5  archive built for another interpreter/platform"]


def pilot(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, "-m", "pilot", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's --help, --version and usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------ version


def test_python_m_pilot_version():
    result = pilot("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pilot {SOURCE_VERSION}\n"
    assert result.stderr == ""


def test_version_json_from_source(capsys):
    code, out, err = run_main(capsys, "version", "--json")
    assert code == 0 and err == ""
    info = json.loads(out)
    assert info["version"] == SOURCE_VERSION
    assert info["python"] == python_tag() == "cp{}{}".format(*sys.version_info[:2])
    assert info["platform"] == platform_tag()
    assert info["archive"] is None
    assert info["install_method"] == "source"
    assert info["build_id"] is None


def test_version_text_lists_the_same_fields(capsys):
    code, out, _ = run_main(capsys, "version")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == list(version.describe())
    assert "install_method  source" in out


def test_version_does_not_import_heavy_modules():
    """`pilot --version` is on every script's hot path: no network, crypto, rich or YAML imports."""
    result = pilot("--version", python_flags=("-X", "importtime"))
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "pilot" in imported  # the measurement works
    assert imported.isdisjoint({"urllib3", "cryptography", "rich", "yaml", "packaging", "textual"}), imported


def test_version_command_does_not_import_heavy_modules():
    code = ("import sys\nfrom pilot.cli import main\nmain(['version', '--json'])\n"
            "print(sorted(m for m in ('urllib3', 'cryptography', 'rich', 'yaml', 'textual') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------- help


def test_top_level_help_lists_commands_and_exit_codes(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for text in ["version", "self-update", "--version", *EXIT_CODES]:
        assert text in out


def test_no_command_prints_help(capsys):
    code, out, _ = run_main(capsys)
    assert code == 0
    assert "usage: pilot" in out and "self-update" in out


def test_self_update_help_mentions_every_flag_and_the_exit_codes(capsys):
    code, out, _ = run_main(capsys, "self-update", "--help")
    assert code == 0
    for flag in SELF_UPDATE_FLAGS:
        assert flag in out, flag
    for text in EXIT_CODES:
        assert text in out
    assert "--after-restart" not in out  # internal: the updater passes it to the new version
    assert "PILOT_MANIFEST_URL" in out and ".backup" in out


def test_every_self_update_option_is_in_the_flag_list():
    """A new flag must be added to SELF_UPDATE_FLAGS (and so be checked in the help above)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["self-update"]
    options = {o for a in sub._actions if a.help != "==SUPPRESS==" for o in a.option_strings} - {"-h", "--help"}
    assert options == set(SELF_UPDATE_FLAGS)


def test_a_usage_error_exits_2(capsys):
    code, _, err = run_main(capsys, "self-update", "--check", "--rollback")
    assert code == 2
    assert "not allowed with argument" in err


# -------------------------------------------------------------------------- self-update


def test_self_update_check_from_source_is_refused_naming_git_pull():
    result = pilot("self-update", "--check")
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pilot: ") and "git pull" in lines[0]


def test_self_update_status_works_from_source(capsys):
    code, out, _ = run_main(capsys, "self-update", "--status", "--json")
    assert code == 0
    assert json.loads(out)["state"] == "none"


@pytest.fixture
def as_archive(monkeypatch, tmp_path):
    """Make self-update believe it runs from an installed archive, so it gets past the install-method check."""
    build = BuildInfo(version="1.0.0", python_tag=python_tag(), platform_tag=platform_tag(), build_id="b1",
                      archive=tmp_path / "bin" / "pilot", trusted_keys=(), threshold=1, source_commit=None,
                      manifest_url=None)
    monkeypatch.setattr("pilot.update.updater.current_build", lambda: build)
    monkeypatch.setattr("pilot.update.updater.install_method", lambda: "pyz")
    return build


def test_from_file_without_manifest_is_a_one_line_usage_error(capsys, as_archive, tmp_path):
    code, out, err = run_main(capsys, "self-update", "--from-file", str(tmp_path / "pilot-2.0.0.pyz"), "--yes")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("pilot: --from-file needs --manifest")


def test_self_update_without_a_manifest_url_says_where_to_set_one(capsys, as_archive, isolated_home):
    code, _, err = run_main(capsys, "self-update", "--check")
    assert code == 4
    assert err.count("\n") == 1
    assert "no manifest URL is configured" in err and str(isolated_home / "config.yaml") in err


def test_the_next_command_after_a_rollback_says_so_once(capsys):
    from pilot.update import state

    record = {"from_version": "1.0.0", "to_version": "2.0.0", "install_path": "p", "backup_path": "b"}
    state.record(record, "rolled_back", "2.0.0 it hung")
    code, out, err = run_main(capsys, "version", "--json")
    assert code == 0 and json.loads(out)["version"] == SOURCE_VERSION
    assert err.count("\n") == 1 and "rolled back from 2.0.0 to 1.0.0: 2.0.0 it hung" in err
    assert run_main(capsys, "version", "--json")[2] == ""


# ----------------------------------------------------------------------- error handling


@pytest.mark.parametrize("error, code, line", [
    (StateError("state.json is unreadable", hint="remove it"), 4, "pilot: state.json is unreadable (remove it)"),
    (UpdateError("refused"), 3, "pilot: refused"),
    (PilotError("plain"), 1, "pilot: plain"),
    (PermissionError(13, "Permission denied", "/opt/pilot"), 1, "pilot: Permission denied: /opt/pilot"),
    (KeyboardInterrupt(), 130, "pilot: interrupted (SIGINT)"),
    (Interrupted(signal.SIGTERM), 143, "pilot: interrupted (SIGTERM)"),
    (Interrupted(signal.SIGHUP), 129, "pilot: interrupted (SIGHUP)"),
])
def test_an_error_in_a_handler_is_one_line_and_its_exit_code(capsys, monkeypatch, error, code, line):
    def handler(args):
        raise error

    monkeypatch.setattr(version, "run", handler)
    assert run_main(capsys, "version") == (code, "", line + "\n")


def test_an_unexpected_exception_is_not_swallowed(monkeypatch):
    def handler(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(version, "run", handler)
    with pytest.raises(ZeroDivisionError):
        cli.main(["version"])


def test_a_handler_returning_none_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(version, "run", lambda args: None)
    assert run_main(capsys, "version")[0] == 0
