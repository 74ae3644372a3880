"""`pilot start` headless and `pilot stop`, as processes: drain, cancel, a second Ctrl-C, kill -9 and the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pilot.buildinfo import SOURCE_VERSION
from tests.commands.conftest import REPO, add_task, pid_gone, pilot, sleeper, task, wait_until

LINUX = sys.platform.startswith("linux")


def test_sigterm_lets_the_running_task_finish_starts_nothing_new_and_exits_zero(configure, daemon):
    configure(drain_timeout="30s")
    running_id = add_task("short", sleeper(2))
    waiting_id = add_task("waiting", sleeper(0))
    pilotd = daemon()
    pilotd.running(running_id)
    pilotd.signal(signal.SIGTERM)
    assert pilotd.wait(timeout=20) == 0
    finished = task(running_id)
    assert (finished["status"], finished["exit_code"], finished["failure_reason"]) == ("done", 0, None)
    assert finished["log_tail"].endswith("finished\n")
    assert task(waiting_id)["status"] == "queued"  # a stopping daemon takes no new task
    log = pilotd.log()
    assert "stopping: no new tasks; waiting up to 30s for 1 running task " \
           "(a second stop signal or `pilot stop --cancel-running` cancels it)" in log
    assert f"daemon stopped (pid {pilotd.pid}, SIGTERM): 1 task drained, 0 cancelled; exit status 0" in log
    assert "daemon stopped" in pilotd.output()  # headless: the same lines on stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_while_the_daemon_starts_is_a_clean_stop(signum, configure, isolated_home, tmp_path):
    """A stop the instant `pilot status` can name the daemon (it holds its lock; its runtime is not up yet,
    as right after it restarts into a new version): it comes up, stops as a running daemon does, ends its
    session and exits 0. Not death by the signal, not a traceback."""
    from pilot.state.store import open_store

    configure()
    lock, stderr_path = isolated_home / "daemon.lock", tmp_path / "stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "pilot", "start"], cwd=REPO, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            deadline = time.monotonic() + 30
            while not (lock.exists() and lock.read_text().startswith(f"{process.pid} ")):
                assert process.poll() is None and time.monotonic() < deadline, stderr_path.read_text()
                time.sleep(0.001)
            process.send_signal(signum)
            assert process.wait(timeout=30) == 0, stderr_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = stderr_path.read_text()
    assert "Traceback" not in output
    assert f"daemon stopped (pid {process.pid}, {signal.Signals(signum).name}): 0 tasks drained" in output
    with open_store(isolated_home, app_version=SOURCE_VERSION) as store:
        assert store.session(1).ended_at is not None


def test_a_task_longer_than_the_drain_timeout_is_cancelled_and_the_exit_status_says_so(configure, daemon):
    configure(drain_timeout="1s")
    long_id = add_task("long", sleeper(60, with_child=True))
    pilotd = daemon()
    pids = [int(word) for word in pilotd.running(long_id)["log_tail"].split()]
    began = time.monotonic()
    pilotd.signal(signal.SIGTERM)
    assert pilotd.wait(timeout=20) == 128 + signal.SIGTERM
    assert time.monotonic() - began < 8
    cancelled = task(long_id)
    assert (cancelled["status"], cancelled["exit_code"]) == ("cancelled", -signal.SIGTERM)
    assert cancelled["failure_reason"] == "cancelled: the daemon stopped and its 1s drain timeout passed"
    assert all(pid_gone(pid) for pid in pids)  # the task and its child
    assert f"(pid {pilotd.pid}, SIGTERM): 0 tasks drained, 1 cancelled; exit status 143" in pilotd.log()


def test_a_second_ctrl_c_during_the_drain_cancels_at_once(configure, daemon):
    configure(drain_timeout="10m")
    long_id = add_task("long", sleeper(60))
    pilotd = daemon()
    pilotd.running(long_id)
    pilotd.signal(signal.SIGINT)
    wait_until(lambda: "(Ctrl-C again cancels it)" in pilotd.output(), what="the waiting line")
    assert pilotd.process.poll() is None  # one Ctrl-C waits for the task
    began = time.monotonic()
    pilotd.signal(signal.SIGINT)
    assert pilotd.wait(timeout=20) == 128 + signal.SIGINT
    assert time.monotonic() - began < 3
    cancelled = task(long_id)
    assert (cancelled["status"], cancelled["failure_reason"]) == (
        "cancelled", "cancelled: the daemon was told to stop again")


def test_pilot_stop_wait_drains_and_says_how_the_tasks_ended(configure, daemon):
    configure(drain_timeout="30s")
    short_id = add_task("short", sleeper(1.5))
    pilotd = daemon()
    pilotd.running(short_id)
    result = pilot("stop", "--wait")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"stopped the daemon (pid {pilotd.pid}) after ")
    assert line.endswith(" s; 1 task drained, 0 cancelled")
    assert pilotd.wait(timeout=5) == 0
    assert task(short_id)["status"] == "done"
    again = pilot("stop", "--wait", "--json")
    assert (again.returncode, json.loads(again.stdout)["message"]) == (0, "no daemon is running")
    assert pilot("stop").stdout == "no daemon is running\n"


def test_pilot_stop_cancel_running_cancels_at_once_and_reports_json(configure, daemon):
    configure(drain_timeout="10m")
    long_id = add_task("long", sleeper(60))
    pilotd = daemon()
    pilotd.running(long_id)
    began = time.monotonic()
    result = pilot("stop", "--wait", "--cancel-running", "--json")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began < 8
    report = json.loads(result.stdout)
    assert {key: report[key] for key in ("running", "pid", "signalled", "stopped", "tasks_running", "drained",
                                         "cancelled", "cancel_running", "wait")} == {
        "running": True, "pid": pilotd.pid, "signalled": True, "stopped": True, "tasks_running": 1, "drained": 0,
        "cancelled": 1, "cancel_running": True, "wait": True}
    assert report["message"].endswith("; 0 tasks drained, 1 cancelled")
    assert pilotd.wait(timeout=5) == 128 + signal.SIGTERM
    assert task(long_id)["failure_reason"] == "cancelled: pilot stop --cancel-running"


def test_pilot_stop_without_wait_asks_and_returns_and_a_wait_that_times_out_says_why(configure, daemon):
    configure(drain_timeout="10m")
    long_id = add_task("long", sleeper(60))
    pilotd = daemon()
    pilotd.running(long_id)
    timed_out = pilot("stop", "--wait", "--timeout", "1s")
    assert timed_out.returncode == 1
    assert timed_out.stderr == (f"pilot: the daemon (pid {pilotd.pid}) is still running after 1s (it is waiting "
                                "for its running tasks: `pilot stop --cancel-running` cancels them)\n")
    asked = pilot("stop", "--cancel-running")
    assert (asked.returncode, asked.stdout) == (0, f"asked the daemon (pid {pilotd.pid}) to stop and cancel its 1 "
                                                   "running task\n")
    assert pilotd.wait(timeout=15) == 128 + signal.SIGTERM


def test_pilot_stop_without_wait_names_the_drain_it_will_wait_for(configure, daemon):
    configure(drain_timeout="2m")
    long_id = add_task("long", sleeper(60))
    pilotd = daemon()
    pilotd.running(long_id)
    asked = pilot("stop")
    assert asked.stdout == (f"asked the daemon (pid {pilotd.pid}) to stop; it lets 1 running task finish "
                            "(up to 2m), then cancels it\n")
    assert pilot("task", "cancel", str(long_id)).returncode == 0  # a cancel still works while it drains
    assert pilotd.wait(timeout=15) == 0  # the stop cut nothing short: the user cancelled the task
    assert task(long_id)["failure_reason"] == "cancelled"


@pytest.mark.skipif(not LINUX, reason="the death signal is Linux's; elsewhere the supervisor notices within 1 s")
def test_kill_9_of_the_daemon_ends_its_task_and_the_next_start_records_it_interrupted(configure, daemon):
    configure()
    long_id = add_task("long", sleeper(60, with_child=True))
    first = daemon()
    task_pid, child_pid = (int(word) for word in first.running(long_id)["log_tail"].split())
    first.signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert pid_gone(task_pid, timeout=3) and pid_gone(child_pid, timeout=3)
    assert task(long_id)["status"] == "running"  # nobody has recorded anything yet
    second = daemon()
    interrupted = task(long_id)
    assert (interrupted["status"], interrupted["failure_reason"]) == ("interrupted", "interrupted: the daemon stopped")
    assert "1 task was interrupted when the daemon stopped; it is not re-run" in second.output()
    assert f"task {long_id} (long) was interrupted: the daemon stopped while it ran" in second.log()
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0
    assert task(long_id)["status"] == "interrupted"  # never re-run


def test_pilot_log_records_the_daemon_and_every_task_in_one_line_each(configure, daemon):
    configure(drain_timeout="30s", concurrency=2)
    ok = add_task("ok", "print('fine')")
    bad = add_task("bad", "import sys; sys.exit(3)")
    missing = pilot("task", "add", "--json", "missing", "--", "pilot-test-no-such-program")
    missing_id = json.loads(missing.stdout)["id"]
    pilotd = daemon()
    wait_until(lambda: all(task(i)["status"] in ("done", "failed") for i in (ok, bad, missing_id)), what="the tasks")
    pilotd.signal(signal.SIGTERM)
    assert pilotd.wait(timeout=20) == 0
    lines = pilotd.log().splitlines()
    messages = [line.split(" ", 3)[3] for line in lines]  # date, time, level, message
    pid = pilotd.pid
    assert messages[0].startswith(f"pilot {SOURCE_VERSION} daemon started (pid {pid}, headless, session ")
    assert any(m.startswith(f"task {ok} started (process group ") and m.endswith(f"): ok; runs {sys.executable}")
               for m in messages)
    assert f"task {ok} done: exit status 0; 0 tokens in, 0 out, 0 cache read, 0 cache write; $0.0000" in messages
    assert f"task {bad} failed: exit status 3; 0 tokens in, 0 out, 0 cache read, 0 cache write; $0.0000" in messages
    assert (f"task {missing_id} failed (cannot run 'pilot-test-no-such-program': not found): did not start; "
            "0 tokens in, 0 out, 0 cache read, 0 cache write; $0.0000") in messages
    assert messages[-1].endswith(f"daemon stopped (pid {pid}, SIGTERM): 0 tasks drained, 0 cancelled; exit status 0")
    levels = {line.split(" ", 3)[3].split(":")[0]: line.split(" ", 3)[2] for line in lines}
    assert (levels[f"task {ok} done"], levels[f"task {bad} failed"]) == ("INFO", "WARNING")
