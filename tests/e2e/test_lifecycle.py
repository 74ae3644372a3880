"""A real archive's headless daemon in a real terminal: Ctrl-C drains, a second Ctrl-C cancels; `pilot stop` from
another pane drains and says so in both panes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time

import pytest

from tests.commands.conftest import sleeper
from tests.daemon.test_process import gone
from tests.support.tmux import Tmux

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")]

WIDTH = 220  # no log line wraps


@pytest.fixture
def terminal():
    tmux = Tmux(width=WIDTH)
    yield tmux
    tmux.close()


def prepare(pilot) -> dict[str, str]:
    pilot.home.mkdir(parents=True, exist_ok=True)
    (pilot.home / "config.yaml").write_text("upgrade:\n  auto_check: false\ndaemon:\n  drain_timeout: 10m\n")
    return {**pilot.env, "PILOT_HOME": str(pilot.home), "SHIV_ROOT": os.environ["SHIV_ROOT"],
            "HOME": os.environ["HOME"], "PYENV_ROOT": os.environ["PYENV_ROOT"]}


def add(pilot, title: str, source: str) -> int:
    result = pilot.run("task", "add", "--json", title, "--", sys.executable, "-c", source)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def show(pilot, task_id: int) -> dict:
    return json.loads(pilot.run("task", "show", "--json", str(task_id)).stdout)


def running(pilot, task_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = show(pilot, task_id)
        if task["status"] == "running" and task["log_tail"]:
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not start: {task}")


def wait_dead(terminal: Tmux, pane: str, timeout: float = 30) -> None:
    """Wait for the pane's program to end. (Its exit status is not asked of tmux, which does not always collect
    it; the daemon's last log line and `pilot stop`'s own echo of it say it instead.)"""
    deadline = time.monotonic() + timeout
    while terminal._tmux("display-message", "-p", "-t", pane, "#{pane_dead}").strip() != "1":
        if time.monotonic() > deadline:
            raise AssertionError(f"pane {pane} is still running:\n{everything(terminal, pane)}")
        time.sleep(0.2)


def everything(terminal: Tmux, pane: str) -> str:
    """The pane's text, its scrollback included (a dead pane's screen is not all that is left)."""
    return terminal._tmux("capture-pane", "-p", "-S", "-", "-t", pane)


def test_ctrl_c_in_the_terminal_drains_and_a_second_ctrl_c_cancels(v1, install_factory, terminal):
    pilot = install_factory(v1)
    env = prepare(pilot)
    terminal.start([sys.executable, str(pilot.path), "start"], env)
    terminal.wait_for("daemon started (pid")
    task_id = add(pilot, "long", sleeper(60, with_child=True))
    pids = [int(word) for word in running(pilot, task_id)["log_tail"].split()]

    terminal.send("C-c")
    terminal.wait_for("stopping: no new tasks; waiting up to 10m for 1 running task (Ctrl-C again cancels it)")
    time.sleep(1)
    assert show(pilot, task_id)["status"] == "running"  # the terminal's Ctrl-C never reached the task itself
    assert not any(gone(pid, timeout=0) for pid in pids)

    daemon_pid = terminal.pane_pid()
    terminal.send("C-c")
    wait_dead(terminal, terminal.session)
    screen = everything(terminal, terminal.session)
    assert f"(pid {daemon_pid}, SIGINT): 0 tasks drained, 1 cancelled; exit status 130" in screen
    cancelled = show(pilot, task_id)
    assert (cancelled["status"], cancelled["failure_reason"]) == ("cancelled", "cancelled: the daemon was told to "
                                                                               "stop again")
    assert all(gone(pid) for pid in pids)


def test_pilot_stop_from_another_pane_drains_the_running_task(v1, install_factory, terminal):
    pilot = install_factory(v1)
    env = prepare(pilot)
    terminal.start([sys.executable, str(pilot.path), "start"], env)
    terminal.wait_for("daemon started (pid")
    pid = terminal.pane_pid()
    task_id = add(pilot, "short", sleeper(3))
    running(pilot, task_id)

    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    stop = shlex.join([sys.executable, str(pilot.path), "stop", "--wait"])
    terminal._tmux("split-window", "-d", "-v", "-t", terminal.session,
                   f"env {exports} {stop}; echo \"pilot stop exited with $?\"")
    other = f"{terminal.session}.1"
    wait_dead(terminal, other)
    said = everything(terminal, other)
    assert f"stopped the daemon (pid {pid}) after " in said and " s; 1 task drained, 0 cancelled" in said
    assert "pilot stop exited with 0" in said

    wait_dead(terminal, f"{terminal.session}.0")
    screen = everything(terminal, f"{terminal.session}.0")
    assert f"daemon stopped (pid {pid}, SIGTERM): 1 task drained, 0 cancelled; exit status 0" in screen
    assert show(pilot, task_id)["status"] == "done"
