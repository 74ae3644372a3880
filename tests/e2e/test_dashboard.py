"""The dashboard in a real terminal: run a task, see the update notice, press u, come back as v2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support.tmux import Tmux

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")]


def stream_json_task(tokens_in: int, tokens_out: int, cost: float, sleep: float = 0.0) -> list[str]:
    """A command that talks like `claude -p --output-format stream-json`: usage lines, then a result."""
    usage = {"input_tokens": tokens_in, "output_tokens": tokens_out, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}
    lines = [
        {"type": "system", "subtype": "init"},
        {"type": "assistant", "message": {"id": "msg_1", "usage": usage}},
        {"type": "result", "subtype": "success", "total_cost_usd": cost, "usage": usage},
    ]
    script = (f"import json, time\nprint(json.dumps({lines[0]!r}), flush=True)\ntime.sleep({sleep})\n"
              + "".join(f"print(json.dumps({line!r}), flush=True)\n" for line in lines[1:]))
    return [sys.executable, "-c", script]


@pytest.fixture
def terminal():
    tmux = Tmux()
    yield tmux
    tmux.close()


def start_dashboard(v1, release_site, install_factory, terminal):
    """v1.0.0 installed and its dashboard up in the terminal, checking for updates every second."""
    release_site.publish(v1)
    pilot = install_factory(v1)
    pilot.home.mkdir(parents=True, exist_ok=True)
    (pilot.home / "config.yaml").write_text("upgrade:\n  check_interval: 1s\n")
    env = {**pilot.env, "PILOT_HOME": str(pilot.home), "SHIV_ROOT": os.environ["SHIV_ROOT"],
           "HOME": os.environ["HOME"], "PYENV_ROOT": os.environ["PYENV_ROOT"], "PILOT_FIRST_CHECK_DELAY": "0.2"}
    pilot.env = env
    terminal.start([sys.executable, str(pilot.path), "start", "--dashboard"], env)
    terminal.wait_for("v1.0.0", "METRICS", "TASKS")
    return pilot


def test_hot_upgrade_in_a_real_terminal_keeps_pid_tokens_and_history(v1, v2, release_site, install_factory,
                                                                      terminal):
    pilot = start_dashboard(v1, release_site, install_factory, terminal)
    pid = terminal.pane_pid()
    assert f"pid {pid}" in terminal.screen()

    assert pilot.run("task", "add", "first", "--", *stream_json_task(1200, 34, 0.0125)).returncode == 0
    terminal.wait_for("1,200", "$0.0125")
    assert pilot.run("task", "add", "slow", "--", *stream_json_task(800, 66, 0.0075, sleep=4)).returncode == 0
    terminal.wait_for("running")

    release_site.publish(v2)
    terminal.wait_for("Update available: v2.0.0 (press 'u' to upgrade)", timeout=30)
    terminal.send("u")

    screen = terminal.wait_for("v2.0.0", "Upgraded from v1.0.0", timeout=120)
    assert terminal.pane_pid() == pid
    assert f"pid {pid}" in screen
    terminal.wait_for("2,000", "$0.0200")  # both tasks' tokens and cost, the slow one counted once

    tasks = json.loads(pilot.run("task", "list", "--json").stdout)
    assert sorted((t["title"], t["status"]) for t in tasks) == [("first", "done"), ("slow", "done")]
    status = json.loads(pilot.run("status", "--json").stdout)
    assert status["tokens"]["input"] == 2000
    assert status["tokens"]["output"] == 100
    assert status["daemon_pid"] == pid
    assert pilot.status()["state"] == "committed"
    # The dashboard ran here, so the upgrade's pre-flight imported the dashboard's code as well.
    assert json.loads((pilot.home / "update" / "state.json").read_text())["dashboard_user"] is True

    terminal.send("q")
    deadline = time.monotonic() + 20
    while not terminal.pane_dead() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert terminal.pane_dead()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
@pytest.mark.parametrize("upgraded", [False, True], ids=["as started", "after a hot upgrade"])
def test_closing_the_terminal_stops_the_dashboard(upgraded, v1, v2, release_site, install_factory, terminal):
    """The terminal goes away (its window closed, ssh dropped): the kernel sends SIGHUP and SIGCONT, and the
    daemon must end, its session closed, whether it is the process that started or the version it exec'd
    into. A stray SIGCONT before (`kill -CONT`) starts no second screen: no second writer or input thread."""
    from tests.daemon.test_process import gone

    pilot = start_dashboard(v1, release_site, install_factory, terminal)
    pid = terminal.pane_pid()
    if upgraded:
        release_site.publish(v2)
        terminal.wait_for("Update available: v2.0.0 (press 'u' to upgrade)", timeout=30)
        terminal.send("u")
        terminal.wait_for("v2.0.0", "Upgraded from v1.0.0", timeout=120)
    time.sleep(1)  # the start's passing threads have come and gone
    threads = len(os.listdir(f"/proc/{pid}/task"))
    for _ in range(3):
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.3)
    assert pilot.run("task", "add", "after", "--", *stream_json_task(500, 5, 0.001)).returncode == 0
    terminal.wait_for("$0.0010")  # the screen still follows the numbers
    assert len(os.listdir(f"/proc/{pid}/task")) == threads

    terminal.close()
    log = pilot.home / "logs" / "pilot.log"
    assert gone(pid, timeout=20), log.read_text()
    version = "2.0.0" if upgraded else "1.0.0"
    assert f"pilot {version} daemon stopped (pid {pid}, SIGHUP): 0 tasks drained, 0 cancelled; exit status 0" \
        in log.read_text()
    assert "Traceback" not in log.read_text()


def start_headless(pilot) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(pilot.path), "start"], env={**os.environ, **pilot.env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def test_sigkill_loses_no_committed_task_or_token(v1, install_factory, tmp_path):
    pilot = install_factory(v1)
    for index in range(3):
        assert pilot.run("task", "add", f"t{index}", "--", *stream_json_task(100, 10, 0.001)).returncode == 0
    assert pilot.run("task", "add", "long", "--", *stream_json_task(500, 50, 0.005, sleep=30)).returncode == 0
    daemon = start_headless(pilot)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = json.loads(pilot.run("status", "--json").stdout)
            if status["tasks"]["done"] == 3 and status["tasks"]["running"] == 1:
                break
            time.sleep(0.3)
        committed = status
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert committed["tasks"]["done"] == 3

    after = json.loads(pilot.run("status", "--json").stdout)
    assert after["tokens"] == committed["tokens"]
    assert after["tasks"]["done"] == 3
    restarted = start_headless(pilot)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            final = json.loads(pilot.run("status", "--json").stdout)
            if final["tasks"]["interrupted"] == 1:
                break
            time.sleep(0.3)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=20)
    assert final["tasks"] == {**committed["tasks"], "running": 0, "interrupted": 1}
    assert final["tokens"] == committed["tokens"]
