"""Run one task as a subprocess and record what it does in the store.

Every output line (stdout and stderr merged) goes to the task's log file (pilot.daemon.tasklog,
the full output, capped) and through a `UsageTracker`: token increases are written at once (one
committed transaction each) and the result line's cost is the task's final cost; the agent's own
session id is recorded once it appears; every other line is log output, appended newline-terminated
to the store's short tail in small batches (at most `LOG_BATCH_LINES` lines, at least every
`LOG_FLUSH_SECONDS`) so a chatty task does not cost one SQLite commit per line.

The command runs under the supervisor (pilot.daemon.process, pilot/daemon/supervisor.py) in its own
session and process group, recorded in the store: a Ctrl-C in the daemon's terminal does not reach
it, cancelling signals its whole group, and it dies with the daemon. `run_task` never raises for a
command that cannot be started; it finishes the task as failed with one log line that says what to
fix. A task that ends other than done always gets a failure reason: "exit status 2", "killed by
SIGKILL", "cannot run 'claude': not found", or the reason it was cancelled for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pilot.daemon.process import spawn
from pilot.daemon.tasklog import TaskLog
from pilot.daemon.usage import UsageTracker
from pilot.net import one_line
from pilot.state.models import CANCELLED, Task, Usage, exit_reason

__all__ = ["EXIT_GRACE_SECONDS", "LOG_BATCH_LINES", "LOG_FLUSH_SECONDS", "Cancel", "command_for", "run_task"]

log = logging.getLogger(__name__)

LOG_BATCH_LINES = 50
LOG_FLUSH_SECONDS = 0.5
# After the task's process exits, how long to wait for the end of its output. A background child
# that inherited stdout can hold the pipe open forever; the task is over all the same.
EXIT_GRACE_SECONDS = 5.0
# After a cancel's SIGTERM, how long before SIGKILL.
KILL_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.1
_EOF = None

OnLine = Callable[[int, str], object]


class Cancel:
    """A request to stop one task, and the reason it is recorded with; the first request's reason wins."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.reason = CANCELLED

    def set(self, reason: str = CANCELLED) -> bool:
        """Ask; False if it had been asked already."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self._event.set()
            return True

    def is_set(self) -> bool:
        return self._event.is_set()


class TaskStore(Protocol):
    """The part of pilot.state's Store that running a task needs."""

    def add_task_usage(self, task_id: int, usage: Usage) -> None: ...

    def set_task_cost(self, task_id: int, cost_usd: float) -> None: ...

    def append_log(self, task_id: int, text: str) -> None: ...

    def set_task_process(self, task_id: int, pgid: int | None) -> None: ...

    def set_agent_session(self, task_id: int, agent_session_id: str) -> None: ...

    def finish_task(self, task_id: int, *, exit_code: int | None, failed: bool = False, cancelled: bool = False,
                    failure_reason: str | None = None) -> Task: ...


def command_for(task: Task, executor: tuple[str, ...]) -> list[str]:
    """The task's own command if it has one, else the executor with the task's title as the prompt."""
    if task.command:
        return list(task.command)
    return [*executor, task.title]


def run_task(task: Task, store: TaskStore, executor: tuple[str, ...], *, cancel: Cancel | threading.Event | None = None,
             on_line: OnLine | None = None, log_dir: Path | None = None) -> Task:
    """Run the task to completion and return it as finished by the store.

    `cancel`, when set, sends SIGTERM to the task's process group (SIGKILL after
    `KILL_GRACE_SECONDS`); the task then finishes as cancelled, with the cancel's reason.
    `on_line(task_id, line)` sees every output line, usage events included, for live display; an
    exception from it is logged once and otherwise ignored. `log_dir` gets the task's log file.
    """
    argv = command_for(task, executor)
    if cancel is not None and cancel.is_set():  # cancelled while it waited: do not start it at all
        store.append_log(task.id, "cancelled before it started\n")
        return finish(store, task.id, exit_code=None, cancelled=True, reason=_reason_of(cancel))
    try:
        process = spawn(argv)
    except (OSError, ValueError) as exc:  # not found, not executable, bad format, NUL in an argument
        why, hint = _cannot_run(argv, exc, from_executor=not task.command)
        store.append_log(task.id, f"{why}; {hint}\n")
        return finish(store, task.id, exit_code=None, failed=True, reason=why)
    run = _Run(task, store, process, cancel, on_line, log_dir)
    try:
        store.set_task_process(task.id, process.pid)  # start_new_session: the group id is the supervisor's pid
    except BaseException:
        run.kill()
        raise
    log.info("task %s started (process group %d): %s; runs %s", task.id, process.pid, one_line(task.title, 80),
             one_line(argv[0], 120))
    return run.wait()


def finish(store: TaskStore, task_id: int, *, exit_code: int | None, failed: bool = False, cancelled: bool = False,
           reason: str | None = None) -> Task:
    """Record the end in the store and log one line about it."""
    task = store.finish_task(task_id, exit_code=exit_code, failed=failed, cancelled=cancelled,
                             failure_reason=reason)
    log.log(logging.WARNING if task.status == "failed" else logging.INFO, "%s", finished_line(task))
    return task


def finished_line(task: Task) -> str:
    """Pure: "task 3 failed: exit status 2; 1,200 tokens in, 34 out, 0 cache read, 0 cache write; $0.0125"."""
    ended = "did not start" if task.exit_code is None else exit_reason(task.exit_code)
    reason = _without_status(task.failure_reason, task.status)
    why = f" ({reason})" if reason and reason != ended else ""
    usage = task.usage
    return (f"task {task.id} {task.status}{why}: {ended}; {usage.input_tokens:,} tokens in, "
            f"{usage.output_tokens:,} out, {usage.cache_read_tokens:,} cache read, "
            f"{usage.cache_write_tokens:,} cache write; ${usage.cost_usd:.4f}")


def _without_status(reason: str | None, status: str) -> str | None:
    """Pure: "cancelled: pilot stop" -> "pilot stop" beside the status cancelled; "cancelled" -> None."""
    if reason is None or reason == status:
        return None
    return reason.removeprefix(f"{status}: ")


def _reason_of(cancel: object) -> str:
    reason = getattr(cancel, "reason", None)
    return reason if isinstance(reason, str) and reason else CANCELLED


def _cannot_run(argv: list[str], exc: BaseException, *, from_executor: bool) -> tuple[str, str]:
    """(the failure reason, the hint): ("cannot run 'claude': not found", "set daemon.executor in config.yaml")."""
    program = argv[0] if argv else ""
    if isinstance(exc, FileNotFoundError):
        why = "not found"
    elif isinstance(exc, PermissionError):
        why = "permission denied"
    elif isinstance(exc, OSError):
        why = exc.strerror or type(exc).__name__
    else:
        why = str(exc) or type(exc).__name__
    hint = "set daemon.executor in config.yaml" if from_executor else "check the task's command"
    return f"cannot run {program!r}: {why}", hint


class _Run:
    """One running task: a reader thread feeds lines through a queue so the loop can also keep time."""

    def __init__(self, task: Task, store: TaskStore, process: subprocess.Popen, cancel: Cancel | threading.Event | None,
                 on_line: OnLine | None, log_dir: Path | None) -> None:
        self.task = task
        self.store = store
        self.process = process
        self.cancel = cancel
        self.on_line = on_line
        self.tracker = UsageTracker()
        self.agent_session: str | None = None
        self.file = TaskLog(log_dir, task.id) if log_dir is not None else None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.pending: list[str] = []
        self.flush_at = 0.0
        self.terminated_at: float | None = None
        self.killed = False
        self.exited_at: float | None = None
        self.reader = threading.Thread(target=self._read, name=f"task-{task.id}-output", daemon=True)

    def wait(self) -> Task:
        self.reader.start()
        try:
            self._loop()
            self._flush()
            exit_code = self.process.wait()
        except BaseException:
            self.kill()  # the store or the caller failed us: leave no orphan behind
            raise
        finally:
            if self.file is not None:
                self.file.close()
        if self.terminated_at is not None:  # cancelled, whatever the exit status says
            reason = _reason_of(self.cancel)
            self.store.append_log(self.task.id, f"{reason}\n")
            return finish(self.store, self.task.id, exit_code=exit_code, cancelled=True, reason=reason)
        # A negative code is a signal (-15 = SIGTERM); any non-zero code is a failure.
        if exit_code != 0:
            return finish(self.store, self.task.id, exit_code=exit_code, failed=True, reason=exit_reason(exit_code))
        return finish(self.store, self.task.id, exit_code=0)

    def _read(self) -> None:
        try:
            for line in self.process.stdout:
                self.lines.put(line)
        except (OSError, ValueError):  # the pipe broke or was closed under us
            pass
        finally:
            self.lines.put(_EOF)
        with contextlib.suppress(OSError):
            self.process.stdout.close()

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            timeout = _POLL_SECONDS
            if self.pending:
                timeout = min(timeout, max(self.flush_at - now, 0.0))
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pass
            else:
                if line is _EOF:
                    return
                self._handle(line.rstrip("\r\n"))
            now = time.monotonic()
            if self.pending and (len(self.pending) >= LOG_BATCH_LINES or now >= self.flush_at):
                self._flush()
            self._check_cancel(now)
            if self.exited_at is None and self.process.poll() is not None:
                self.exited_at = now
            if self.exited_at is not None and now - self.exited_at > EXIT_GRACE_SECONDS and self.lines.empty():
                log.warning("task %s: output still open %.0f s after exit; stopped reading",
                            self.task.id, EXIT_GRACE_SECONDS)
                return

    def _handle(self, line: str) -> None:
        if self.file is not None:
            self.file.write_line(line)
        if self.on_line is not None:
            try:
                self.on_line(self.task.id, line)
            except Exception:
                log.exception("task %s: on_line callback failed; live output disabled", self.task.id)
                self.on_line = None
        update = self.tracker.feed(line)
        if self.tracker.session_id != self.agent_session:
            self.agent_session = self.tracker.session_id
            self.store.set_agent_session(self.task.id, self.agent_session)
        if update is None:
            if not self.pending:
                self.flush_at = time.monotonic() + LOG_FLUSH_SECONDS
            self.pending.append(line)
            return
        if not update.empty:
            self.store.add_task_usage(self.task.id, update.delta)
        if update.final_cost is not None:
            self.store.set_task_cost(self.task.id, update.final_cost)

    def _flush(self) -> None:
        if self.pending:
            text, self.pending = "".join(line + "\n" for line in self.pending), []
            self.store.append_log(self.task.id, text)

    def _check_cancel(self, now: float) -> None:
        if self.cancel is None or not self.cancel.is_set() or self.process.poll() is not None:
            return
        if self.terminated_at is None:
            self.terminated_at = now
            why = _without_status(_reason_of(self.cancel), CANCELLED)
            log.info("task %s: cancelling%s: SIGTERM to process group %d", self.task.id, f" ({why})" if why else "",
                     self.process.pid)
            self._signal(signal.SIGTERM)
        elif not self.killed and now - self.terminated_at > KILL_GRACE_SECONDS:
            self.killed = True
            log.warning("task %s: still running %.0f s after SIGTERM: SIGKILL to process group %d", self.task.id,
                        KILL_GRACE_SECONDS, self.process.pid)
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)  # start_new_session: the group id is the supervisor's pid

    def kill(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=KILL_GRACE_SECONDS)
