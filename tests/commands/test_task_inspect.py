"""`pilot task show|log|cancel|retry`, as processes, against a real daemon where one is needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.commands.conftest import REPO, add_task, pilot, sleeper, task, wait_until

STREAM_JSON = """
import json, time
print(json.dumps({"type": "system", "subtype": "init", "session_id": "agent-7f3c"}), flush=True)
print("thinking", flush=True)
print(json.dumps({"type": "assistant", "message": {"id": "m1", "usage": {"input_tokens": 1200, "output_tokens": 34}}}),
      flush=True)
print(json.dumps({"type": "result", "subtype": "success", "session_id": "agent-7f3c", "total_cost_usd": 0.0125,
                  "usage": {"input_tokens": 1200, "output_tokens": 34}}), flush=True)
raise SystemExit(2)
"""


def test_show_tells_everything_about_a_failed_agent_task(configure, daemon):
    configure()
    task_id = add_task("fix the flaky test", STREAM_JSON)
    pilotd = daemon()
    wait_until(lambda: task(task_id)["status"] == "failed", what="the task")
    shown = pilot("task", "show", str(task_id))
    assert shown.returncode == 0, shown.stderr
    rows = dict(line.split(":", 1) for line in shown.stdout.splitlines()[1:])
    rows = {key: value.strip() for key, value in rows.items()}
    assert shown.stdout.splitlines()[0] == f"task {task_id}: fix the flaky test"
    assert rows["status"] == "failed" and rows["exit code"] == "2" and rows["reason"] == "exit status 2"
    assert rows["command"].startswith(f"{sys.executable} -c ")
    assert rows["tokens"] == "1,200 in, 34 out, 0 cache read, 0 cache write"
    assert rows["cost"] == "$0.0125"
    assert rows["session"] == f"pilot {task(task_id)['session_id']}, agent agent-7f3c"
    assert rows["log"] == f"{pilotd.home}/logs/tasks/{task_id}.log (pilot task log {task_id})"
    assert {"created", "started", "ended"} <= set(rows) and "(ran " in rows["ended"]
    as_json = json.loads(pilot("task", "show", str(task_id), "--json").stdout)
    assert (as_json["failure_reason"], as_json["agent_session_id"], as_json["exit_code"]) == (
        "exit status 2", "agent-7f3c", 2)
    assert as_json["log_file"] == f"{pilotd.home}/logs/tasks/{task_id}.log"
    assert as_json["usage"]["cost_usd"] == 0.0125


def test_log_prints_the_whole_output_and_follow_streams_it_until_the_task_ends(configure, daemon):
    configure()
    source = "import time\nfor i in range(30):\n    print(f'step {i}', flush=True)\n    time.sleep(0.1)\n"
    task_id = add_task("steps", source)
    follower = subprocess.Popen([sys.executable, "-m", "pilot", "task", "log", "--follow", str(task_id)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(0.5)  # following a task that has not started: it waits
    assert follower.poll() is None
    daemon()
    first = follower.stdout.readline()
    assert first == "step 0\n"
    assert task(task_id)["status"] == "running"  # streamed live, not printed at the end
    # not communicate(): it reads the raw pipe and would drop what readline() already buffered
    out, err = follower.stdout.read(), follower.stderr.read()
    follower.wait(timeout=30)
    assert first + out == "".join(f"step {i}\n" for i in range(30))
    assert err == f"pilot: task {task_id} ended: done\n" and follower.returncode == 0
    again = pilot("task", "log", str(task_id))
    assert (again.returncode, again.stdout, again.stderr) == (0, first + out, "")


def test_log_of_a_task_without_a_file_says_why_and_shows_what_there_is():
    task_id = add_task("waiting", "print('x')")
    result = pilot("task", "log", str(task_id))
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "", f"pilot: task {task_id} has not started yet: no output\n")
    pilot("task", "cancel", str(task_id))
    followed = pilot("task", "log", "--follow", str(task_id))
    assert followed.stderr == (f"pilot: task {task_id} never started: no output\n"
                               f"pilot: task {task_id} ended: cancelled (cancelled)\n")


def test_cancel_of_a_running_task_is_done_by_the_daemon_within_seconds(configure, daemon):
    configure(drain_timeout="10m")
    long_id = add_task("long", sleeper(60))
    pilotd = daemon()
    pid = int(pilotd.running(long_id)["log_tail"].split()[0])
    began = time.monotonic()
    result = pilot("task", "cancel", str(long_id))
    assert (result.returncode, result.stdout) == (0, f"cancelled task {long_id}: long\n"), result.stderr
    assert time.monotonic() - began < 4
    cancelled = task(long_id)
    assert (cancelled["status"], cancelled["failure_reason"], cancelled["exit_code"]) == (
        "cancelled", "cancelled", -signal.SIGTERM)
    assert cancelled["cancel_requested_at"] is not None
    from tests.commands.conftest import pid_gone

    assert pid_gone(pid)
    assert pilotd.process.poll() is None  # the daemon goes on
    refused = pilot("task", "cancel", str(long_id))
    assert (refused.returncode, refused.stderr) == (1, f"pilot: task {long_id} is already cancelled: "
                                                       "nothing to cancel\n")


def test_cancel_of_a_queued_task_is_immediate_and_needs_no_daemon():
    task_id = add_task("not yet", "print('never')")
    result = pilot("task", "cancel", "--json", str(task_id))
    report = json.loads(result.stdout)
    assert report["message"] == f"cancelled task {task_id} before it started: not yet"
    assert (report["previous_status"], report["task"]["status"], report["task"]["failure_reason"]) == (
        "queued", "cancelled", "cancelled")


def test_cancel_of_a_task_a_dead_daemon_left_running_is_refused_with_what_to_do(isolated_home):
    from pilot.state import open_store

    with open_store(isolated_home, app_version="1.0.0") as store:
        session = store.start_session(version="1.0.0", pid=999999)
        store.add_task("orphan")
        orphan = store.claim_next_task(session.id)
    result = pilot("task", "cancel", str(orphan.id))
    assert (result.returncode, result.stderr) == (
        1, f"pilot: task {orphan.id} is marked running, but no daemon is running (the next `pilot start` stops "
           "what is left of it and records it interrupted)\n")
    assert task(orphan.id)["cancel_requested_at"] is None


def test_retry_queues_the_same_title_and_command_and_refuses_an_unfinished_task():
    first = add_task("flaky", "print('again')")
    refused = pilot("task", "retry", str(first))
    assert (refused.returncode, refused.stderr) == (
        1, f"pilot: task {first} is still queued: retry it once it has ended (or cancel it first: "
           f"pilot task cancel {first})\n")
    pilot("task", "cancel", str(first))
    result = pilot("task", "retry", str(first))
    assert result.returncode == 0
    assert result.stdout == f"queued task {first + 1}: flaky (a retry of task {first})\n"
    again = json.loads(pilot("task", "retry", "--json", str(first)).stdout)
    assert (again["id"], again["retry_of"], again["status"]) == (first + 2, first, "queued")
    assert task(first + 1)["command"] == task(first)["command"] and task(first + 1)["title"] == "flaky"


def test_an_unknown_id_is_one_line_and_a_usage_error_for_every_command():
    for action in ("show", "log", "cancel", "retry"):
        result = pilot("task", action, "42")
        assert (result.returncode, result.stdout, result.stderr) == (
            2, "", "pilot: no task 42 (`pilot task list` shows the ids)\n"), action
    as_json = pilot("task", "show", "42", "--json")
    assert (as_json.returncode, json.loads(as_json.stdout)["exit_code"]) == (2, 2)


def test_follow_ends_when_the_daemon_running_the_task_is_gone(configure, daemon):
    configure()
    long_id = add_task("long", sleeper(60))
    pilotd = daemon()
    pilotd.running(long_id)
    follower = subprocess.Popen([sys.executable, "-m", "pilot", "task", "log", "--follow", str(long_id)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    assert follower.stdout.readline().strip().isdigit()  # the task's first line: its pid
    pilotd.signal(signal.SIGKILL)
    _, err = follower.communicate(timeout=10)
    assert follower.returncode == 0
    assert err == (f"pilot: task {long_id}: no daemon runs it any more (the next `pilot start` records it "
                   "interrupted)\n")
