"""run_task with real subprocesses against a store that records every call."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from pilot.daemon import tasks
from pilot.daemon.tasks import command_for, run_task
from pilot.errors import StateError
from pilot.state import Store, Task, Usage, open_store

EXECUTOR = ("claude", "-p", "--output-format", "stream-json", "--verbose")


class RecordingStore:
    """The real SQLite Store, with every call run_task makes recorded with its time."""

    def __init__(self, store: Store, *, fail_on_usage: bool = False) -> None:
        self.store = store
        self.calls: list[tuple[float, str, object]] = []
        self.fail_on_usage = fail_on_usage
        self.finished: Task | None = None

    def add_task_usage(self, task_id: int, usage: Usage) -> None:
        if self.fail_on_usage:
            raise StateError("database is locked")
        self.calls.append((time.monotonic(), "usage", usage))
        self.store.add_task_usage(task_id, usage)

    def set_task_cost(self, task_id: int, cost_usd: float) -> None:
        self.calls.append((time.monotonic(), "cost", cost_usd))
        self.store.set_task_cost(task_id, cost_usd)

    def append_log(self, task_id: int, text: str) -> None:
        self.calls.append((time.monotonic(), "log", text))
        self.store.append_log(task_id, text)

    def finish_task(self, task_id: int, *, exit_code: int | None, failed: bool) -> Task:
        assert self.finished is None, "finished twice"
        self.calls.append((time.monotonic(), "finish", (exit_code, failed)))
        self.finished = self.store.finish_task(task_id, exit_code=exit_code, failed=failed)
        return self.finished

    @property
    def logs(self) -> list[str]:
        return [what for _, kind, what in self.calls if kind == "log"]


@pytest.fixture
def real_store(tmp_path) -> Iterator[Store]:
    with open_store(tmp_path / "home", app_version="0.1.0") as store:
        yield store


@pytest.fixture
def store(real_store) -> RecordingStore:
    return RecordingStore(real_store)


@pytest.fixture
def claim(real_store) -> Callable[..., Task]:
    """Queue a task and claim it the way the daemon does: it is then running in a session."""
    session = real_store.start_session(version="0.1.0", pid=os.getpid())

    def claim(title: str = "do it", command: tuple[str, ...] | None = None) -> Task:
        real_store.add_task(title, command)
        task = real_store.claim_next_task(session.id)
        assert task is not None and task.status == "running"
        return task

    return claim


def script(source: str) -> tuple[str, ...]:
    return (sys.executable, "-c", textwrap.dedent(source))


def lines_of(task: Task) -> list[str]:
    return task.log_tail.splitlines()


def event(obj: dict) -> str:
    return json.dumps(obj)


ASSISTANT_1A = event({"type": "assistant", "message": {"id": "msg_01", "content": [{"type": "text", "text": "Hi"}],
                      "usage": {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 100,
                                "cache_read_input_tokens": 200}}})
ASSISTANT_1B = event({"type": "assistant", "message": {"id": "msg_01", "content": [{"type": "tool_use"}],
                      "usage": {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 100,
                                "cache_read_input_tokens": 200}}})
ASSISTANT_2 = event({"type": "assistant", "message": {"id": "msg_02", "usage": {
    "input_tokens": 3, "output_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 300}}})
RESULT = event({"type": "result", "subtype": "success", "total_cost_usd": 0.0123, "num_turns": 2,
                "usage": {"input_tokens": 20, "output_tokens": 45, "cache_creation_input_tokens": 100,
                          "cache_read_input_tokens": 500}})
SYSTEM = event({"type": "system", "subtype": "init", "session_id": "s-1"})

FAKE_CLAUDE = f"""
import sys
lines = {[SYSTEM, "plain log line 1", ASSISTANT_1A, ASSISTANT_1B, "plain log line 2", ASSISTANT_2, RESULT]!r}
for line in lines:
    print(line, flush=True)
print("warning on stderr", file=sys.stderr, flush=True)
"""


def test_command_for_prefers_the_tasks_own_command():
    def task(command):
        return Task(1, "fix the bug", command, "running", datetime.now(UTC), None, None, None)

    assert command_for(task(None), EXECUTOR) == [*EXECUTOR, "fix the bug"]
    assert command_for(task(("make", "test")), EXECUTOR) == ["make", "test"]
    assert command_for(task(()), EXECUTOR) == [*EXECUTOR, "fix the bug"]


def test_stream_json_run_records_totals_cost_log_and_exit_code(store, claim, real_store):
    task, seen = claim(command=script(FAKE_CLAUDE)), []
    finished = run_task(task, store, EXECUTOR, on_line=lambda tid, line: seen.append((tid, line)))

    assert finished == real_store.task(task.id)
    assert (finished.status, finished.exit_code) == ("done", 0)
    # The result's cumulative usage is higher than the messages' sum (input 13 -> 20): it wins.
    assert finished.usage == Usage(input_tokens=20, output_tokens=45, cache_read_tokens=500,
                                   cache_write_tokens=100, cost_usd=0.0123)
    # Usage events are not log output; everything else is, stderr included, in order.
    assert lines_of(finished) == [SYSTEM, "plain log line 1", "plain log line 2", "warning on stderr"]
    # One committed usage write per non-empty delta: msg_01, its increase, msg_02, the result's top-up.
    assert [what for _, kind, what in store.calls if kind == "usage"] == [
        Usage(input_tokens=10, output_tokens=1, cache_read_tokens=200, cache_write_tokens=100),
        Usage(output_tokens=4), Usage(input_tokens=3, output_tokens=40, cache_read_tokens=300),
        Usage(input_tokens=7),
    ]
    assert store.calls[-1][1] == "finish"
    assert seen == [(task.id, line) for line in [SYSTEM, "plain log line 1", ASSISTANT_1A, ASSISTANT_1B,
                                                 "plain log line 2", ASSISTANT_2, RESULT, "warning on stderr"]]
    # The session running the task was charged the same.
    assert real_store.session(finished.session_id).usage == finished.usage


def test_executor_gets_the_title_as_its_last_argument(store, claim, tmp_path):
    fake_claude = tmp_path / "fake-claude"
    fake_claude.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake_claude.chmod(0o755)
    finished = run_task(claim("fix the 'quoted' bug; rm -rf /"), store, (str(fake_claude), "-p", "--verbose"))
    assert json.loads(lines_of(finished)[0]) == ["-p", "--verbose", "fix the 'quoted' bug; rm -rf /"]


def test_failing_command_is_failed_with_its_exit_code(store, claim):
    finished = run_task(claim(command=script("import sys; print('boom', file=sys.stderr); sys.exit(3)")),
                        store, EXECUTOR)
    assert (finished.status, finished.exit_code) == ("failed", 3)
    assert lines_of(finished) == ["boom"]
    assert finished.usage == Usage()


def test_missing_executable_fails_the_task_with_one_line(store, claim):
    finished = run_task(claim("fix it"), store, ("pilot-test-no-such-claude", "-p"))
    assert (finished.status, finished.exit_code) == ("failed", None)
    assert finished.log_tail == ("cannot run 'pilot-test-no-such-claude': not found; "
                                 "set daemon.executor in config.yaml\n")


def test_unexecutable_task_command_fails_the_task_with_one_line(store, claim, tmp_path):
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    finished = run_task(claim(command=(str(not_executable),)), store, EXECUTOR)
    assert (finished.status, finished.exit_code) == ("failed", None)
    assert lines_of(finished) == [f"cannot run {str(not_executable)!r}: permission denied; check the task's command"]


def test_child_runs_in_its_own_session_with_no_stdin(store, claim):
    source = """
    import os, sys
    print(os.getsid(0) == os.getpid(), repr(sys.stdin.read()), flush=True)
    """
    assert lines_of(run_task(claim(command=script(source)), store, EXECUTOR)) == ["True ''"]


def test_log_lines_are_batched_not_one_write_per_line(store, claim):
    finished = run_task(claim(command=script("for i in range(500): print(f'line {i}')")), store, EXECUTOR)
    assert "".join(store.logs).splitlines() == [f"line {i}" for i in range(500)]
    assert len(store.logs) <= 500 // tasks.LOG_BATCH_LINES + 2
    assert lines_of(finished)[-1] == "line 499" and len(finished.log_tail) <= 4000  # the store keeps the tail


def test_a_quiet_task_still_gets_its_log_and_usage_written_promptly(store, claim):
    """A line followed by silence is written within LOG_FLUSH_SECONDS, not when the next line comes."""
    source = f"""
    import time
    print('started', flush=True)
    print({ASSISTANT_2!r}, flush=True)
    time.sleep(1.5)
    print('done', flush=True)
    """
    task = claim(command=script(source))
    started = time.monotonic()
    run_task(task, store, EXECUTOR)
    written = {(kind, str(what)): at - started for at, kind, what in store.calls}
    assert written[("log", "started\n")] < 1.2
    assert written[("usage", str(Usage(input_tokens=3, output_tokens=40, cache_read_tokens=300)))] < 1.2
    assert written[("log", "done\n")] >= 1.4


def test_undecodable_output_is_logged_with_replacement_characters(store, claim):
    source = r"import sys; sys.stdout.buffer.write(b'caf\xe9 \xff\nok\n')"
    finished = run_task(claim(command=script(source)), store, EXECUTOR)
    assert finished.exit_code == 0
    assert lines_of(finished) == ["caf\ufffd \ufffd", "ok"]


def test_a_broken_on_line_callback_does_not_break_the_task(store, claim):
    def on_line(task_id, line):
        raise ValueError("dashboard bug")

    finished = run_task(claim(command=script("print('a'); print('b')")), store, EXECUTOR, on_line=on_line)
    assert (finished.exit_code, lines_of(finished)) == (0, ["a", "b"])


def test_cancel_terminates_the_process_group_and_fails_the_task(store, claim):
    source = """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(child.pid, flush=True)
    time.sleep(60)
    """
    cancel = threading.Event()

    def on_line(task_id, line):
        cancel.set()  # cancel as soon as the task is running

    started = time.monotonic()
    finished = run_task(claim(command=script(source)), store, EXECUTOR, cancel=cancel, on_line=on_line)
    assert time.monotonic() - started < 5
    assert (finished.status, finished.exit_code) == ("failed", -signal.SIGTERM)
    assert lines_of(finished)[-1] == "cancelled"
    _assert_gone(int(lines_of(finished)[0]))  # the grandchild went with it


def test_a_task_cancelled_before_it_starts_never_runs(store, claim, tmp_path):
    marker = tmp_path / "ran"
    cancel = threading.Event()
    cancel.set()
    task = claim(command=script(f"open({str(marker)!r}, 'w').close()"))
    finished = run_task(task, store, EXECUTOR, cancel=cancel)
    assert (finished.status, finished.exit_code) == ("failed", None)
    assert lines_of(finished) == ["cancelled before it started"]
    assert not marker.exists()


def test_output_held_open_by_a_background_child_does_not_hang_the_task(store, claim, monkeypatch):
    monkeypatch.setattr(tasks, "EXIT_GRACE_SECONDS", 0.5)
    source = """
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(child.pid, flush=True)
    """
    started, pids = time.monotonic(), []
    try:
        finished = run_task(claim(command=script(source)), store, EXECUTOR, on_line=lambda tid, line: pids.append(line))
        assert time.monotonic() - started < 5
        assert (finished.status, finished.exit_code) == ("done", 0)
    finally:
        if pids:
            os.kill(int(pids[0]), signal.SIGKILL)


def test_a_store_failure_propagates_and_leaves_no_process_behind(real_store, claim):
    source = f"""
    import os, time
    print(os.getpid(), flush=True)
    print({ASSISTANT_2!r}, flush=True)
    time.sleep(60)
    """
    store, pids = RecordingStore(real_store, fail_on_usage=True), []
    with pytest.raises(StateError, match="database is locked"):
        run_task(claim(command=script(source)), store, EXECUTOR, on_line=lambda tid, line: pids.append(line))
    _assert_gone(int(pids[0]))
    assert store.finished is None


def _assert_gone(pid: int) -> None:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A killed grandchild is re-parented and may linger as a zombie until init reaps it.
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    pytest.fail(f"process {pid} outlived its task")
