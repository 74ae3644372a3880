"""The Store: task queue, token accounting, sessions, update history; threads and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC
from pathlib import Path

import pytest

from pilot.errors import StateError
from pilot.state import db
from pilot.state.db import DB_FILENAME
from pilot.state.models import Totals, Usage, exit_reason
from pilot.state.store import LOG_TAIL_CHARS, Store, open_store
from tests.state import children

REPO = Path(__file__).resolve().parents[2]
APP = "1.0.0"


@pytest.fixture
def store(isolated_home):
    with open_store(isolated_home, app_version=APP) as opened:
        yield opened


def test_tasks_are_claimed_oldest_first_and_listed_newest_first(store):
    session = store.start_session(version=APP, pid=123)
    first = store.add_task("first", ("echo", "one"))
    store.add_task("second")
    assert first.status == "queued" and first.command == ("echo", "one") and first.created_at.tzinfo == UTC
    claimed = store.claim_next_task(session.id)
    assert (claimed.id, claimed.status, claimed.session_id) == (first.id, "running", session.id)
    assert claimed.started_at is not None
    assert store.claim_next_task(session.id).title == "second"
    assert store.claim_next_task(session.id) is None
    assert [task.title for task in store.tasks()] == ["second", "first"]
    assert [task.title for task in store.tasks(limit=1)] == ["second"]
    assert store.task(first.id).command == ("echo", "one") and store.task(first.id + 1).command is None
    assert store.task(999) is None


def test_usage_goes_to_the_task_and_its_session_and_the_final_cost_replaces_the_sum(store):
    session = store.start_session(version=APP, pid=1)
    store.add_task("a")
    task = store.claim_next_task(session.id)
    store.add_task_usage(task.id, Usage(100, 10, 1000, 50, 0.01))
    store.add_task_usage(task.id, Usage(1, 2, 3, 4, 0.02))
    assert store.task(task.id).usage == Usage(101, 12, 1003, 54, 0.03)
    store.set_task_cost(task.id, 0.5)  # the result line's authoritative cost
    assert store.task(task.id).usage.cost_usd == 0.5
    assert store.session(session.id).usage == Usage(101, 12, 1003, 54, pytest.approx(0.5))
    unclaimed = store.add_task("not running yet")
    store.add_task_usage(unclaimed.id, Usage(input_tokens=7))  # no session to charge
    assert store.session(session.id).usage.input_tokens == 101
    assert store.totals().usage.input_tokens == 108


def test_totals_count_every_status_and_sum_every_task(store):
    session = store.start_session(version=APP, pid=1)
    for title in ("ok", "bad", "cut", "busy", "waiting"):
        store.add_task(title)
    for failed in (False, True):
        task = store.claim_next_task(session.id)
        store.add_task_usage(task.id, Usage(1, 1, 1, 1, 0.25))
        finished = store.finish_task(task.id, exit_code=1 if failed else 0, failed=failed)
        assert (finished.status, finished.exit_code) == ("failed" if failed else "done", 1 if failed else 0)
        assert finished.ended_at is not None
    store.claim_next_task(session.id)
    store.interrupt_running("test")
    store.claim_next_task(session.id)
    store.request_cancel(store.add_task("never run").id)
    assert store.totals() == Totals(usage=Usage(2, 2, 2, 2, 0.5), done=1, failed=1, queued=1, running=1,
                                    interrupted=1, cancelled=1)
    assert store.queued_count() == 1


def test_finishing_records_the_status_and_the_reason_it_is_given(store):
    session = store.start_session(version=APP, pid=1)
    for title in ("ok", "exit", "told", "cancel", "cancel told"):
        store.add_task(title)
    ids = [store.claim_next_task(session.id).id for _ in range(5)]
    ended = [
        store.finish_task(ids[0], exit_code=0, failure_reason="ignored for a task that is done"),
        store.finish_task(ids[1], exit_code=2, failed=True),  # no reason given: none invented (the daemon's job)
        store.finish_task(ids[2], exit_code=None, failed=True, failure_reason="cannot run 'claude': not found"),
        store.finish_task(ids[3], exit_code=-15, cancelled=True, failure_reason="cancelled"),
        store.finish_task(ids[4], exit_code=0, failed=True, cancelled=True, failure_reason="cancelled: pilot stop"),
    ]
    assert [(t.status, t.exit_code, t.failure_reason) for t in ended] == [
        ("done", 0, None), ("failed", 2, None), ("failed", None, "cannot run 'claude': not found"),
        ("cancelled", -15, "cancelled"), ("cancelled", 0, "cancelled: pilot stop"),
    ]
    assert all(t.ended_at is not None for t in ended)
    assert [store.task(i) for i in ids] == ended


def test_exit_reason_names_the_exit_status_or_the_signal():
    assert exit_reason(0) == "exit status 0"
    assert exit_reason(127) == "exit status 127"
    assert exit_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_reason(-200) == "killed by signal 200"
    assert exit_reason(None) == "no exit status"


def test_a_queued_task_is_cancelled_at_once_and_never_claimed(store):
    session = store.start_session(version=APP, pid=1)
    queued = store.add_task("not yet")
    before, task = store.request_cancel(queued.id)
    assert before == "queued"
    assert (task.status, task.failure_reason, task.started_at) == ("cancelled", "cancelled", None)
    assert task.ended_at is not None and task.cancel_requested_at is not None
    assert store.claim_next_task(session.id) is None
    assert store.request_cancel(queued.id) == ("cancelled", task)  # a second request changes nothing
    assert store.request_cancel(999) is None


def test_a_running_task_gets_a_request_its_own_daemon_sees(store):
    mine, other = store.start_session(version=APP, pid=1), store.start_session(version=APP, pid=2)
    store.add_task("mine")
    store.add_task("theirs")
    running = store.claim_next_task(mine.id)
    theirs = store.claim_next_task(other.id)
    assert store.cancel_requests(mine.id) == []
    before, task = store.request_cancel(running.id)
    assert (before, task.status) == ("running", "running")  # the daemon ends it, and records how
    first = task.cancel_requested_at
    assert first is not None
    assert store.request_cancel(running.id)[1].cancel_requested_at == first  # the first request's time is kept
    assert store.cancel_requests(mine.id) == [running.id]
    assert store.cancel_requests(other.id) == []
    store.request_cancel(theirs.id)
    assert store.cancel_requests(other.id) == [theirs.id]
    store.finish_task(running.id, exit_code=-15, cancelled=True, failure_reason="cancelled")
    assert store.cancel_requests(mine.id) == []  # answered
    finished = store.task(running.id)
    assert store.request_cancel(running.id) == ("cancelled", finished)


def test_a_finished_task_is_left_as_it_is_by_a_cancel_request(store):
    session = store.start_session(version=APP, pid=1)
    store.add_task("quick")
    done = store.finish_task(store.claim_next_task(session.id).id, exit_code=0)
    assert store.request_cancel(done.id) == ("done", done)


def test_the_process_group_and_the_agent_session_are_kept(store):
    session = store.start_session(version=APP, pid=1)
    store.add_task("agent")
    task = store.claim_next_task(session.id)
    assert (task.pgid, task.agent_session_id) == (None, None)
    store.set_task_process(task.id, 4242)
    store.set_agent_session(task.id, "8f3c2a1e-session")
    task = store.task(task.id)
    assert (task.pgid, task.agent_session_id, task.session_id) == (4242, "8f3c2a1e-session", session.id)
    with pytest.raises(StateError, match="task 99 does not exist"):
        store.set_task_process(99, 1)
    with pytest.raises(StateError, match="task 99 does not exist"):
        store.set_agent_session(99, "x")


def test_a_whole_session_can_be_asked_to_cancel_by_its_daemon_pid(store):
    old = store.start_session(version=APP, pid=77)
    store.end_session(old.id)
    live, other = store.start_session(version=APP, pid=77), store.start_session(version=APP, pid=78)
    assert not store.session_cancel_requested(live.id)
    assert store.request_session_cancel(77) == 1  # only the open one
    assert store.session_cancel_requested(live.id)
    assert not store.session_cancel_requested(old.id) and not store.session_cancel_requested(other.id)
    assert store.request_session_cancel(4444) == 0
    assert not store.session_cancel_requested(999)


def test_interrupt_running_marks_what_a_dead_daemon_left_and_never_requeues(store):
    session = store.start_session(version=APP, pid=1)
    store.add_task("was running")
    store.add_task("still queued")
    running = store.claim_next_task(session.id)
    store.append_log(running.id, "half the output")
    [interrupted] = store.interrupt_running("the daemon died")
    assert (interrupted.id, interrupted.status) == (running.id, "interrupted")
    assert interrupted.ended_at is not None and interrupted.exit_code is None
    assert interrupted.log_tail.startswith("half the output")
    assert "[interrupted: the daemon died]" in interrupted.log_tail
    assert interrupted.failure_reason == "interrupted: the daemon died"
    assert store.running_tasks() == [] and store.queued_count() == 1
    assert store.claim_next_task(session.id).title == "still queued"  # the interrupted one is not run again
    assert store.interrupt_running("again") == [store.task(2)]


def test_the_log_tail_keeps_the_last_characters(store):
    task = store.add_task("noisy")
    lines = [f"line {index:04d} é\n" for index in range(400)]  # 12 characters a line: 4800 in all
    for line in lines:
        store.append_log(task.id, line)
    tail = store.task(task.id).log_tail
    assert len(tail) == LOG_TAIL_CHARS  # characters, not bytes: é is two bytes in UTF-8
    assert tail == "".join(lines)[-LOG_TAIL_CHARS:]
    store.append_log(task.id, "x" * 10_000)
    assert store.task(task.id).log_tail == "x" * LOG_TAIL_CHARS


def test_sessions_start_resume_after_exec_and_end(store):
    session = store.start_session(version="1.0.0", pid=os.getpid())
    assert (session.version, session.pid, session.ended_at, session.usage) == ("1.0.0", os.getpid(), None, Usage())
    resumed = store.resume_session(session.id, version="2.0.0")
    assert (resumed.id, resumed.version, resumed.started_at) == (session.id, "2.0.0", session.started_at)
    store.end_session(session.id)
    assert store.session(session.id).ended_at is not None
    assert store.resume_session(session.id, version="3.0.0") is None
    assert store.resume_session(999, version="3.0.0") is None


def test_an_unknown_task_is_a_state_error_and_writes_nothing(store):
    with pytest.raises(StateError, match="task 42 does not exist"):
        store.add_task_usage(42, Usage(input_tokens=1))
    assert store.totals().usage == Usage()


@pytest.mark.parametrize("connections", ["one shared store", "a store per thread"])
def test_concurrent_claims_never_hand_out_a_task_twice(connections, isolated_home):
    stores = [open_store(isolated_home, app_version=APP)]
    stores.append(stores[0] if connections == "one shared store" else open_store(isolated_home, app_version=APP))
    session = stores[0].start_session(version=APP, pid=1)
    expected = [stores[0].add_task(f"task {index}").id for index in range(60)]
    claimed: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def claim_all(worker: int) -> None:
        barrier.wait()
        try:
            while (task := stores[worker].claim_next_task(session.id)) is not None:
                claimed[worker].append(task.id)
        except BaseException as error:  # e.g. a deferred BEGIN failing to upgrade to a write
            errors.append(error)

    threads = [threading.Thread(target=claim_all, args=(worker,)) for worker in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    every = claimed[0] + claimed[1]
    assert sorted(every) == expected and len(set(every)) == len(every)
    for opened in stores:
        opened.close()


def test_sigkill_while_writing_usage_loses_no_committed_delta(isolated_home):
    child = subprocess.Popen([sys.executable, "-m", "tests.state.children", "write-usage", str(isolated_home)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _, task_id, session_id = child.stdout.readline().split()
        reported = 0
        while reported < 200:
            reported = int(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.wait()
    reported = max([reported, *(int(line) for line in rest.split())])
    with open_store(isolated_home, app_version=APP) as store:
        task = store.task(int(task_id))
        count = task.usage.input_tokens
        # The child may have been killed between a commit and its print: at most one unreported delta.
        assert reported <= count <= reported + 1
        d = children.DELTA
        assert task.usage == Usage(count * d.input_tokens, count * d.output_tokens, count * d.cache_read_tokens,
                                   count * d.cache_write_tokens, count * d.cost_usd)
        assert store.session(int(session_id)).usage == task.usage
        assert store.totals().usage == task.usage
        assert [t.id for t in store.interrupt_running("the daemon was killed")] == [task.id]


def test_close_checkpoints_the_wal_and_is_idempotent(isolated_home):
    reader = None
    store = open_store(isolated_home, app_version=APP)
    store.add_task("kept")
    reader = db.connect(isolated_home / DB_FILENAME)  # a CLI with the file open keeps the -wal in place
    store.close()
    store.close()
    wal = isolated_home / f"{DB_FILENAME}-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert reader.execute("SELECT title FROM tasks").fetchall() == [("kept",)]
    with pytest.raises(StateError, match="already closed"):
        store.tasks()
    reader.close()


def test_a_store_can_be_built_on_a_connection_with_a_clock(isolated_home):
    from datetime import datetime

    conn = db.connect(isolated_home / DB_FILENAME)
    db.migrate(conn, app_version=APP, snapshot_dir=isolated_home / db.SNAPSHOT_DIRNAME)
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with Store(conn, path=isolated_home / DB_FILENAME, clock=lambda: moment) as store:
        assert store.add_task("timed").created_at == moment
