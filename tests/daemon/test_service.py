"""The task loop: claims, cancel requests from other processes, cancel_all, and the stop's words and numbers."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime

import pytest

from pilot.config import DaemonConfig
from pilot.daemon import lifecycle
from pilot.daemon.service import Daemon
from pilot.state import open_store
from pilot.state.models import Task
from tests.daemon.test_process import gone, kill_quietly, leftover_group

SLEEP = (sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)")


@pytest.fixture
def store(isolated_home):
    with open_store(isolated_home, app_version="1.0.0") as opened:
        yield opened


def daemon_for(store, concurrency: int = 2) -> Daemon:
    session = store.start_session(version="1.0.0", pid=os.getpid())
    return Daemon(store, DaemonConfig(concurrency=concurrency), session_id=session.id,
                  log_dir=store.path.parent / "logs" / "tasks")


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def started(store, task_id: int) -> bool:
    task = store.task(task_id)
    return task.pgid is not None and "started" in task.log_tail


def test_a_cancel_request_from_another_process_ends_the_running_task_within_a_poll(store, isolated_home, caplog):
    caplog.set_level(logging.INFO)
    daemon = daemon_for(store)
    keep, stop = store.add_task("keep", SLEEP), store.add_task("stop", SLEEP)
    daemon.poll()
    wait_until(lambda: started(store, keep.id) and started(store, stop.id))
    with open_store(isolated_home, app_version="1.0.0") as cli:  # `pilot task cancel`, elsewhere
        assert cli.request_cancel(stop.id)[0] == "running"
    asked = time.monotonic()
    daemon.poll()
    wait_until(lambda: store.task(stop.id).status == "cancelled")
    assert time.monotonic() - asked < 2
    ended = store.task(stop.id)
    assert (ended.failure_reason, ended.exit_code) == ("cancelled", -signal.SIGTERM)
    assert store.task(keep.id).status == "running"
    assert f"task {stop.id}: cancel requested (pilot task cancel)" in caplog.text
    assert daemon.running_ids() == [keep.id]
    assert daemon.cancel_all("cancelled: the daemon quit") == 1
    assert daemon.wait_idle(10)
    assert store.task(keep.id).failure_reason == "cancelled: the daemon quit"
    assert daemon.cancel(keep.id) is False  # no longer running


def test_a_draining_daemon_claims_nothing_but_still_answers_cancel_requests(store):
    daemon = daemon_for(store, concurrency=1)
    running = store.add_task("running", SLEEP)
    daemon.poll()
    wait_until(lambda: started(store, running.id))
    daemon.drain()
    waiting = store.add_task("waiting", SLEEP)
    store.request_cancel(running.id)
    daemon.poll()
    assert daemon.wait_idle(10)
    assert store.task(running.id).status == "cancelled"
    assert store.task(waiting.id).status == "queued"


def test_a_cancel_right_after_the_claim_is_recorded_with_its_reason(store):
    daemon = daemon_for(store, concurrency=1)
    task = store.add_task("soon", SLEEP)
    daemon.poll()
    assert daemon.cancel(task.id, "cancelled: the daemon quit")
    assert not daemon.cancel(task.id, "cancelled")  # asked already: the first reason stays
    assert daemon.wait_idle(10)
    ended = store.task(task.id)
    assert ended.status == "cancelled" and ended.failure_reason == "cancelled: the daemon quit"


def test_a_pilot_failure_while_a_task_runs_is_recorded_not_raised_in_the_thread(store, monkeypatch, caplog):
    daemon = daemon_for(store, concurrency=1)
    task = store.add_task("doomed", (sys.executable, "-c", "print('x')"))

    def broken(*args, **kwargs):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(store, "set_task_cost", broken)
    monkeypatch.setattr(store, "append_log", broken)
    daemon.poll()
    assert daemon.wait_idle(10)
    ended = store.task(task.id)
    assert (ended.status, ended.failure_reason) == ("failed", "Pilot failed while running it: the disk went away")


# --- the stop's words and numbers -------------------------------------------------------------


def test_durations_read_the_way_config_yaml_writes_them():
    assert [lifecycle.duration_text(s) for s in (600, 90, 5400, 5, 0.5, 86400, 1800)] == [
        "10m", "1.5m", "1.5h", "5s", "0.5s", "1d", "30m"]


def test_the_exit_status_is_zero_unless_a_signal_cut_tasks_short():
    assert lifecycle.stop_exit_status(signal.SIGTERM, 0) == 0
    assert lifecycle.stop_exit_status(signal.SIGTERM, 2) == 143
    assert lifecycle.stop_exit_status(signal.SIGINT, 1) == 130
    assert lifecycle.stop_exit_status(signal.SIGHUP, 1) == 129
    assert lifecycle.stop_exit_status(None, 3) == 0  # the dashboard's user quit, having been asked


def task(task_id: int, status: str) -> Task:
    moment = datetime.now(UTC)
    return Task(task_id, "t", None, status, moment, moment, moment, 0)


def test_the_summary_counts_drained_and_cancelled_and_the_lines_say_so():
    summary = lifecycle.summarise([task(1, "done"), task(2, "failed"), task(3, "cancelled"), None], 1,
                                  signal.SIGINT)
    assert summary == lifecycle.StopSummary("SIGINT", 2, 1, 1, 130)
    assert lifecycle.stop_line("1.4.0", 42, summary) == (
        "pilot 1.4.0 daemon stopped (pid 42, SIGINT): 2 tasks drained, 1 cancelled; exit status 130")
    assert lifecycle.summarise([], 0, None).cause == "quit"
    assert lifecycle.waiting_line(1, 600, signal.SIGINT) == (
        "stopping: no new tasks; waiting up to 10m for 1 running task (Ctrl-C again cancels it)")
    assert lifecycle.waiting_line(2, 30, signal.SIGTERM) == (
        "stopping: no new tasks; waiting up to 30s for 2 running tasks "
        "(a second stop signal or `pilot stop --cancel-running` cancels them)")
    assert lifecycle.interrupted_line(1) == "1 task was interrupted when the daemon stopped; it is not re-run"
    assert lifecycle.interrupted_line(2) == "2 tasks were interrupted when the daemon stopped; they are not re-run"
    assert lifecycle.drain_timeout_reason(600) == "cancelled: the daemon stopped and its 10m drain timeout passed"


def test_the_next_start_stops_a_leftover_group_and_records_its_task_interrupted(store, caplog):
    caplog.set_level(logging.INFO)
    dead = store.start_session(version="0.9.0", pid=999999)
    for title in ("left running", "also left", "queued"):
        store.add_task(title, SLEEP)
    first, second = store.claim_next_task(dead.id), store.claim_next_task(dead.id)
    pgid, member = leftover_group()  # what the dead daemon's first task left behind
    try:
        store.set_task_process(first.id, pgid)
        store.set_task_process(second.id, 2**22 + 4321)  # its group is long gone
        interrupted = lifecycle.recover_leftovers(store)
        assert gone(pgid) and gone(member)
    finally:
        kill_quietly(pgid, member)
    assert [(t.id, t.status, t.failure_reason) for t in interrupted] == [
        (first.id, "interrupted", "interrupted: the daemon stopped"),
        (second.id, "interrupted", "interrupted: the daemon stopped")]
    assert store.queued_count() == 1  # never re-run, and the queue is untouched
    lines = [r.getMessage() for r in caplog.records]
    assert f"task {first.id}: stopped what was left of its process group {pgid}" in lines
    assert f"task {first.id} (left running) was interrupted: the daemon stopped while it ran" in lines
    assert lines[-1] == "2 tasks were interrupted when the daemon stopped; they are not re-run"
    assert lifecycle.recover_leftovers(store) == []
