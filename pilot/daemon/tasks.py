"""Run one task as a subprocess and record what it does in the store.

Every output line (stdout and stderr merged) goes through a `UsageTracker`: token increases are
written at once (one committed transaction each) and the result line's cost is the task's final
cost; every other line is log output, appended newline-terminated in small batches (at most `LOG_BATCH_LINES` lines,
at least every `LOG_FLUSH_SECONDS`) so a chatty task does not cost one SQLite commit per line.

The child runs in its own session: a Ctrl-C in the daemon's terminal does not reach it, and
cancelling signals its whole process group. `run_task` never raises for a command that cannot be
started; it finishes the task as failed with one log line that says what to fix.
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
from typing import Protocol

from pilot.daemon.usage import UsageTracker
from pilot.state.models import Task, Usage

__all__ = ["EXIT_GRACE_SECONDS", "LOG_BATCH_LINES", "LOG_FLUSH_SECONDS", "command_for", "run_task"]

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


class TaskStore(Protocol):
    """The part of pilot.state's Store that running a task needs."""

    def add_task_usage(self, task_id: int, usage: Usage) -> None: ...

    def set_task_cost(self, task_id: int, cost_usd: float) -> None: ...

    def append_log(self, task_id: int, text: str) -> None: ...

    def finish_task(self, task_id: int, *, exit_code: int | None, failed: bool) -> Task: ...


def command_for(task: Task, executor: tuple[str, ...]) -> list[str]:
    """The task's own command if it has one, else the executor with the task's title as the prompt."""
    if task.command:
        return list(task.command)
    return [*executor, task.title]


def run_task(task: Task, store: TaskStore, executor: tuple[str, ...], *,
             cancel: threading.Event | None = None, on_line: OnLine | None = None) -> Task:
    """Run the task to completion and return it as finished by the store.

    `cancel`, when set, sends SIGTERM to the task's process group (SIGKILL after
    `KILL_GRACE_SECONDS`); the task then finishes as failed. `on_line(task_id, line)` sees every
    output line, usage events included, for live display; an exception from it is logged once
    and otherwise ignored.
    """
    argv = command_for(task, executor)
    if cancel is not None and cancel.is_set():  # cancelled while it waited: do not start it at all
        store.append_log(task.id, "cancelled before it started\n")
        return store.finish_task(task.id, exit_code=None, failed=True)
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1, start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # not found, not executable, bad format, NUL in an argument
        store.append_log(task.id, _cannot_run(argv, exc, from_executor=not task.command) + "\n")
        return store.finish_task(task.id, exit_code=None, failed=True)
    return _Run(task, store, process, cancel, on_line).wait()


def _cannot_run(argv: list[str], exc: BaseException, *, from_executor: bool) -> str:
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
    return f"cannot run {program!r}: {why}; {hint}"


class _Run:
    """One running task: a reader thread feeds lines through a queue so the loop can also keep time."""

    def __init__(self, task: Task, store: TaskStore, process: subprocess.Popen, cancel: threading.Event | None,
                 on_line: OnLine | None) -> None:
        self.task = task
        self.store = store
        self.process = process
        self.cancel = cancel
        self.on_line = on_line
        self.tracker = UsageTracker()
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
            self._kill()  # the store or the caller failed us: leave no orphan behind
            raise
        if self.terminated_at is not None:
            self.store.append_log(self.task.id, "cancelled\n")
        # A negative code is a signal (-15 = SIGTERM); any non-zero code, or a cancel, is a failure.
        failed = exit_code != 0 or self.terminated_at is not None
        return self.store.finish_task(self.task.id, exit_code=exit_code, failed=failed)

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
        if self.on_line is not None:
            try:
                self.on_line(self.task.id, line)
            except Exception:
                log.exception("task %s: on_line callback failed; live output disabled", self.task.id)
                self.on_line = None
        update = self.tracker.feed(line)
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
            self._signal(signal.SIGTERM)
        elif not self.killed and now - self.terminated_at > KILL_GRACE_SECONDS:
            self.killed = True
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)  # start_new_session: the group id is the child's pid

    def _kill(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=KILL_GRACE_SECONDS)
