"""run_task with real subprocesses against a store that records every call."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from pilot.daemon import tasklog, tasks
from pilot.daemon.tasks import Cancel, command_for, finished_line, run_task
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

    def set_task_process(self, task_id: int, pgid: int | None) -> None:
        self.calls.append((time.monotonic(), "process", pgid))
        self.store.set_task_process(task_id, pgid)

    def set_agent_session(self, task_id: int, agent_session_id: str) -> None:
        self.calls.append((time.monotonic(), "agent", agent_session_id))
        self.store.set_agent_session(task_id, agent_session_id)

    def finish_task(self, task_id: int, *, exit_code: int | None, failed: bool = False, cancelled: bool = False,
                    failure_reason: str | None = None) -> Task:
        assert self.finished is None, "finished twice"
        self.calls.append((time.monotonic(), "finish", (exit_code, failed, cancelled, failure_reason)))
        self.finished = self.store.finish_task(task_id, exit_code=exit_code, failed=failed, cancelled=cancelled,
                                               failure_reason=failure_reason)
        return self.finished

    @property
    def logs(self) -> list[str]:
        return [what for _, kind, what in self.calls if kind == "log"]

    def kinds(self, kind: str) -> list[object]:
        return [what for _, k, what in self.calls if k == kind]


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


def test_stream_json_run_records_totals_cost_log_and_exit_code(store, claim, real_store, tmp_path):
    task, seen = claim(command=script(FAKE_CLAUDE)), []
    logs = tmp_path / "logs" / "tasks"
    finished = run_task(task, store, EXECUTOR, on_line=lambda tid, line: seen.append((tid, line)), log_dir=logs)

    assert finished == real_store.task(task.id)
    assert (finished.status, finished.exit_code, finished.failure_reason) == ("done", 0, None)
    assert finished.agent_session_id == "s-1"  # Claude Code's own session, from its init line
    assert store.kinds("agent") == ["s-1"]  # written once, not once a line
    # The log file has the full output, usage events included, in order.
    assert (logs / f"{task.id}.log").read_text().splitlines() == [line for _, line in seen]
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
    assert (finished.status, finished.exit_code, finished.failure_reason) == ("failed", 3, "exit status 3")
    assert lines_of(finished) == ["boom"]
    assert finished.usage == Usage()


def test_missing_executable_fails_the_task_with_one_line(store, claim):
    finished = run_task(claim("fix it"), store, ("pilot-test-no-such-claude", "-p"))
    assert (finished.status, finished.exit_code) == ("failed", None)
    assert finished.failure_reason == "cannot run 'pilot-test-no-such-claude': not found"
    assert finished.log_tail == ("cannot run 'pilot-test-no-such-claude': not found; "
                                 "set daemon.executor in config.yaml\n")


def test_unexecutable_task_command_fails_the_task_with_one_line(store, claim, tmp_path):
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    finished = run_task(claim(command=(str(not_executable),)), store, EXECUTOR)
    assert (finished.status, finished.exit_code) == ("failed", None)
    assert lines_of(finished) == [f"cannot run {str(not_executable)!r}: permission denied; check the task's command"]
    assert finished.failure_reason == f"cannot run {str(not_executable)!r}: permission denied"


def test_child_runs_in_its_own_recorded_process_group_and_session_with_no_stdin(store, claim):
    source = """
    import os, sys
    print(os.getpgid(0), os.getsid(0), os.getppid(), repr(sys.stdin.read()), flush=True)
    """
    finished = run_task(claim(command=script(source)), store, EXECUTOR)
    pgid, sid, parent, stdin = lines_of(finished)[0].split()
    # The group leader is the supervisor, the command's parent; the store knows the group.
    assert int(pgid) == int(sid) == int(parent) == finished.pgid == store.kinds("process")[0]
    assert int(sid) != os.getsid(0) and stdin == "''"


def test_the_command_gets_default_signal_dispositions(store, claim):
    """Python ignores SIGPIPE; a task's shell pipeline must not inherit that (nor anything else ignored)."""
    finished = run_task(claim(command=("sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status")), store, EXECUTOR)
    assert lines_of(finished) == ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"]


def test_death_by_a_signal_is_a_failure_named_after_it(store, claim):
    finished = run_task(claim(command=script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")),
                        store, EXECUTOR)
    assert (finished.status, finished.exit_code, finished.failure_reason) == (
        "failed", -signal.SIGKILL, "killed by SIGKILL")


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


def test_cancel_terminates_the_process_group_and_records_the_task_cancelled(store, claim):
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
    assert (finished.status, finished.exit_code, finished.failure_reason) == (
        "cancelled", -signal.SIGTERM, "cancelled")
    assert lines_of(finished)[-1] == "cancelled"
    _assert_gone(int(lines_of(finished)[0]))  # the grandchild went with it


def test_a_cancel_keeps_its_reason_and_a_task_that_ignores_sigterm_gets_sigkill(store, claim, monkeypatch):
    monkeypatch.setattr(tasks, "KILL_GRACE_SECONDS", 0.5)
    source = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("stubborn", flush=True)
    time.sleep(60)
    """
    cancel = Cancel()
    finished = run_task(claim(command=script(source)), store, EXECUTOR, cancel=cancel,
                        on_line=lambda tid, line: cancel.set("cancelled: the daemon stopped"))
    assert not cancel.set("a later reason")  # the first one is kept
    assert (finished.status, finished.exit_code, finished.failure_reason) == (
        "cancelled", -signal.SIGKILL, "cancelled: the daemon stopped")
    assert lines_of(finished)[-1] == "cancelled: the daemon stopped"


def test_a_cancelled_task_that_exits_zero_is_still_cancelled(store, claim):
    source = """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    time.sleep(60)
    """
    cancel = Cancel()
    finished = run_task(claim(command=script(source)), store, EXECUTOR, cancel=cancel,
                        on_line=lambda tid, line: cancel.set())
    assert (finished.status, finished.exit_code, finished.failure_reason) == ("cancelled", 0, "cancelled")


def test_a_task_cancelled_before_it_starts_never_runs(store, claim, tmp_path):
    marker = tmp_path / "ran"
    cancel = Cancel()
    cancel.set("cancelled: the daemon stopped")
    task = claim(command=script(f"open({str(marker)!r}, 'w').close()"))
    finished = run_task(task, store, EXECUTOR, cancel=cancel)
    assert (finished.status, finished.exit_code, finished.failure_reason) == (
        "cancelled", None, "cancelled: the daemon stopped")
    assert lines_of(finished) == ["cancelled before it started"]
    assert not marker.exists()
    assert store.kinds("process") == []


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


def test_the_finish_line_says_status_reason_exit_status_tokens_and_cost():
    moment = datetime.now(UTC)

    def task(status, exit_code, reason=None, usage=None):
        return Task(3, "t", None, status, moment, moment, moment, exit_code, usage=usage or Usage(),
                    failure_reason=reason)

    zero = "0 tokens in, 0 out, 0 cache read, 0 cache write; $0.0000"
    assert finished_line(task("done", 0, usage=Usage(1200, 34, 5, 6, 0.0125))) == (
        "task 3 done: exit status 0; 1,200 tokens in, 34 out, 5 cache read, 6 cache write; $0.0125")
    assert finished_line(task("failed", 2, "exit status 2")) == f"task 3 failed: exit status 2; {zero}"
    assert finished_line(task("failed", None, "cannot run 'claude': not found")) == (
        f"task 3 failed (cannot run 'claude': not found): did not start; {zero}")
    assert finished_line(task("cancelled", -15, "cancelled")) == f"task 3 cancelled: killed by SIGTERM; {zero}"
    assert finished_line(task("cancelled", None, "cancelled: pilot stop --cancel-running")) == (
        f"task 3 cancelled (pilot stop --cancel-running): did not start; {zero}")


def test_a_task_logs_its_start_with_its_process_group_and_its_end(store, claim, caplog):
    caplog.set_level(logging.INFO)
    task = claim("say\nhi", command=script("import sys; sys.exit(4)"))
    finished = run_task(task, store, EXECUTOR)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == f"task {task.id} started (process group {finished.pgid}): say\\nhi; runs {sys.executable}"
    assert lines[-1] == finished_line(finished) and "failed: exit status 4" in lines[-1]


def test_the_log_file_keeps_the_head_and_the_last_parts(store, claim, tmp_path, monkeypatch):
    monkeypatch.setattr(tasklog, "HEAD_BYTES", 1000)
    monkeypatch.setattr(tasklog, "PART_BYTES", 1000)
    source = "for i in range(400): print(f'line {i:04d}')"  # 10 bytes a line: 4000 bytes
    finished = run_task(claim(command=script(source)), store, EXECUTOR, log_dir=tmp_path)
    head, parts = tasklog.log_files(tmp_path, finished.id)
    assert head.read_text().splitlines() == [f"line {i:04d}" for i in range(100)]
    assert [n for n, _ in parts] == [2, 3]  # part 1 was dropped once part 3 began
    text = tasklog.read_log(tmp_path, finished.id).decode()
    lines = text.splitlines()
    assert lines[:100] == [f"line {i:04d}" for i in range(100)]
    assert lines[100] == "[... output skipped: the log keeps the first 1000 bytes and the last 1000 to 2000 bytes ...]"
    assert lines[101:] == [f"line {i:04d}" for i in range(200, 400)]
