"""Every command through every failure class: the exit code the README documents and one line (or JSON).

The real CLI in a subprocess (`python -m pilot`, the source tree). Each case is a command line,
a way to break the world, the expected exit status and a piece of the one line that must say why.
`PILOT_PRINT_MESSAGES=1` prints every message seen, for reviewing the wording in one place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEEN: list[tuple[str, str]] = []

# how to break the world -> (PILOT_HOME set-up)
BROKEN_HOMES = {
    "home is a file": lambda home: home.write_text("not a directory"),
    "config not YAML": lambda home: (home.mkdir(), (home / "config.yaml").write_text("upgrade: [unclosed\n")),
    "config unknown key": lambda home: (home.mkdir(), (home / "config.yaml").write_text("daemon:\n  speed: 11\n")),
    "config bad duration": lambda home: (home.mkdir(),
                                         (home / "config.yaml").write_text("upgrade:\n  check_interval: soon\n")),
}
HOME_MESSAGES = {
    "home is a file": "is not a directory",
    "config not YAML": "not valid YAML at line",
    "config unknown key": "unknown key daemon.speed",
    "config bad duration": "is not a duration like",
}
# every command that reads the state or the configuration
STATEFUL = [["status"], ["task", "add", "a title"], ["task", "list"], ["task", "show", "1"], ["task", "log", "1"],
            ["task", "cancel", "1"], ["task", "retry", "1"], ["config", "show"], ["config", "check"], ["start"],
            ["stop"]]


def pilot(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pilot", *args], capture_output=True, text=True, timeout=60,
                            cwd=REPO, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PILOT_HOME": str(home), **(env or {})})
    assert "Traceback" not in result.stderr, result.stderr
    SEEN.extend((" ".join(args), line) for line in (result.stderr + result.stdout).splitlines()
                if line.startswith(("pilot", "{\"error\"", "usage:")))
    return result


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("pilot")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("breakage", list(BROKEN_HOMES))
@pytest.mark.parametrize("args", STATEFUL, ids=" ".join)
def test_unusable_state_or_config_is_exit_4_in_one_line(args, breakage, tmp_path):
    home = tmp_path / "home"
    BROKEN_HOMES[breakage](home)
    result = pilot(home, *args)
    assert result.returncode == 4, result.stderr
    assert HOME_MESSAGES[breakage] in one_line(result)


@pytest.mark.parametrize("args", [a for a in STATEFUL if a not in (["start"], ["task", "log", "1"])], ids=" ".join)
def test_a_json_command_fails_in_json_too(args, tmp_path):
    home = tmp_path / "home"
    BROKEN_HOMES["home is a file"](home)
    result = pilot(home, *args, "--json")
    assert result.returncode == 4
    answer = json.loads(result.stdout)
    assert answer["exit_code"] == 4 and "is not a directory" in answer["error"]


@pytest.mark.parametrize("action", ["show", "log", "cancel", "retry"])
def test_an_unknown_task_is_a_usage_error_in_one_line(action, tmp_path):
    result = pilot(tmp_path / "home", "task", action, "42")
    assert result.returncode == 2 and "no task 42" in one_line(result)


def test_self_update_status_on_an_unusable_home_says_so(tmp_path):
    home = tmp_path / "home"
    home.write_text("")
    result = pilot(home, "self-update", "--status")
    assert result.returncode == 4 and "is not a directory" in one_line(result)


@pytest.mark.parametrize("args, usage", [
    (["task", "add", "--bogus", "t"], "usage: pilot task add"),
    (["task", "list", "--limit", "0"], "usage: pilot task list"),
    (["task", "list", "--limit", "x"], "usage: pilot task list"),
    (["task", "add"], "usage: pilot task add"),
    (["task", "add", "   "], "usage: pilot task add"),
    (["task", "add", "--", "sh", "-c", "echo hi"], "usage: pilot task add"),
    (["task", "add", "t", "--"], "usage: pilot task add"),
    (["status", "--bogus"], "usage: pilot status"),
    (["status", "--", "x"], "usage: pilot status"),
    (["self-update", "--to"], "usage: pilot self-update"),
    (["stop", "--timeout", "soon"], "usage: pilot stop"),
    (["nonsense"], "usage: pilot "),
])
def test_a_usage_error_shows_that_command_s_usage_and_exits_2(args, usage, tmp_path):
    result = pilot(tmp_path / "home", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(usage), result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]) and result.stdout == ""


def test_a_usage_error_of_a_json_command_is_json(tmp_path):
    result = pilot(tmp_path / "home", "task", "list", "--limit", "0", "--json")
    assert result.returncode == 2
    answer = json.loads(result.stdout)
    assert answer["exit_code"] == 2 and answer["error"].startswith("pilot task list: argument --limit")


def test_options_are_options_wherever_they_stand_before_the_double_dash(tmp_path):
    home = tmp_path / "home"
    queued = json.loads(pilot(home, "task", "add", "t", "--json").stdout)
    assert (queued["title"], queued["command"]) == ("t", None)
    first = json.loads(pilot(home, "task", "add", "--json", "run it", "--", "sh", "-c", "echo --json hi").stdout)
    assert (first["title"], first["command"]) == ("run it", ["sh", "-c", "echo --json hi"])
    plain = pilot(home, "task", "add", "  padded  ")
    assert plain.returncode == 0 and "queued task 3: padded" in plain.stdout


@pytest.mark.parametrize("args, code, message", [
    (["self-update", "--check"], 3, "source checkout"),
    (["self-update", "--yes"], 3, "source checkout"),
    (["self-update", "--rollback"], 3, "source checkout"),
])
def test_update_refusals_are_exit_3(args, code, message, tmp_path):
    result = pilot(tmp_path / "home", *args)
    assert result.returncode == code and message in one_line(result)


def test_self_update_check_json_fails_in_json(tmp_path):
    result = pilot(tmp_path / "home", "self-update", "--check", "--json")
    assert result.returncode == 3
    assert "source checkout" in json.loads(result.stdout)["error"]


def test_config_show_says_where_each_value_comes_from(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("upgrade:\n  channel: beta\nnotify:\n  telegram_token: '123:secret'\n")
    result = pilot(home, "config", "show", "--json", env={"PILOT_MANIFEST_URL": "https://r.example.org/beta/m.json"})
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)["values"]
    assert values["upgrade.channel"] == {"value": "beta", "source": "file"}
    assert values["upgrade.manifest_url"]["source"] == "environment (PILOT_MANIFEST_URL)"
    assert values["daemon.concurrency"] == {"value": 1, "source": "default"}
    assert values["notify.telegram_token"]["value"] == "(set, hidden)"
    assert "secret" not in result.stdout
    text = pilot(home, "config", "show").stdout
    assert "upgrade.channel" in text and "beta  [file]" in text and "secret" not in text


def test_config_check_refuses_what_the_daemon_would(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert pilot(home, "config", "check").returncode == 0
    (home / "config.yaml").write_text("upgrade:\n  notify_channel: telegram\n")
    result = pilot(home, "config", "check")
    assert result.returncode == 4 and "notify.telegram_token is required" in one_line(result)
    result = pilot(home, "config", "check", env={"PILOT_BOOT_TIMEOUT": "soon"})
    assert result.returncode == 4


def test_print_every_message(request):
    """Run last with PILOT_PRINT_MESSAGES=1 (and -s) to review every message these cases produced."""
    if os.environ.get("PILOT_PRINT_MESSAGES") == "1":
        for command, line in sorted(set(SEEN)):
            print(f"{command:40} {line}")
