"""`pilot task show|log|cancel|retry ID`: one task, read from (and for cancel and retry, written to) the store.

    show    command, status, times, exit code, tokens, cost, why it failed, Pilot's and the agent's
            session; --json: the task as `pilot task list --json` shows it, with its log file
    log     the task's whole output as kept in $PILOT_HOME/logs/tasks (pilot.daemon.tasklog: the first
            1 MiB and the last 4 to 8 MiB); --follow keeps printing new output until the task ends
    cancel  a queued task is cancelled at once; a running one by its daemon, which polls the store
            and stops the task's process group (this waits up to CANCEL_WAIT_SECONDS to say how it
            ended); a finished task is a one-line refusal (exit 1)
    retry   queues a new task with the same title and command (a finished task only)

An unknown id is a usage error (exit 2): the id is a bad argument.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from pilot.commands.tasks import open_store, task_json
from pilot.errors import PilotError, UsageError
from pilot.launcher import pilot_home, say
from pilot.net import one_line
from pilot.state.models import FINISHED_STATUSES, Task

SHOW_LIMIT = 2000  # characters of a title or command on its one line (--json has them whole)
CANCEL_WAIT_SECONDS = 10.0  # the daemon's poll, SIGTERM, and the SIGKILL 5 s after it
POLL_SECONDS = 0.2


def task_or_refuse(store, task_id: int) -> Task:
    task = store.task(task_id)
    if task is None:
        raise UsageError(f"no task {task_id}", hint="`pilot task list` shows the ids")
    return task


def as_json(task: Task) -> dict:
    return task_json(task)


# --- show -------------------------------------------------------------------------------------


def show(args: argparse.Namespace) -> int:
    from pilot.daemon.tasklog import log_files, task_log_dir

    with open_store() as store:
        task = task_or_refuse(store, args.task_id)
    head, _ = log_files(task_log_dir(Path(pilot_home())), task.id)
    if args.json:
        print(json.dumps({**as_json(task), "log_file": str(head) if head else None}, indent=2))
        return 0
    for label, value in show_rows(task, head):
        print(f"{label + ':':<13}{value}" if label else value)
    return 0


def show_rows(task: Task, log_file: Path | None) -> list[tuple[str, str]]:
    """Pure: the (label, value) lines of `pilot task show`; the first has no label."""
    rows = [("", f"task {task.id}: {one_line(task.title, SHOW_LIMIT)}"), ("status", status_text(task)),
            ("command", one_line(shlex.join(task.command), SHOW_LIMIT) if task.command else
             "the executor (daemon.executor), with the title as its prompt"),
            ("created", when(task.created_at))]
    if task.started_at:
        rows.append(("started", when(task.started_at)))
    if task.ended_at:
        ran = f" (ran {ran_for(task)})" if task.started_at else ""
        rows.append(("ended", when(task.ended_at) + ran))
    if task.exit_code is not None:
        rows.append(("exit code", str(task.exit_code)))
    usage = task.usage
    rows += [("tokens", f"{usage.input_tokens:,} in, {usage.output_tokens:,} out, {usage.cache_read_tokens:,} "
                        f"cache read, {usage.cache_write_tokens:,} cache write"),
             ("cost", f"${usage.cost_usd:.4f}")]
    if task.failure_reason:
        rows.append(("reason", one_line(task.failure_reason, SHOW_LIMIT)))
    sessions = f"pilot {task.session_id}" if task.session_id is not None else "pilot -"
    rows.append(("session", sessions + (f", agent {task.agent_session_id}" if task.agent_session_id else "")))
    rows.append(("log", f"{log_file} (pilot task log {task.id})" if log_file else "none kept"))
    return rows


def status_text(task: Task) -> str:
    if task.status == "running" and task.cancel_requested_at:
        return f"running (cancel requested {when(task.cancel_requested_at)})"
    if task.status == "running" and task.pgid:
        return f"running (process group {task.pgid})"
    return task.status


def when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def ran_for(task: Task) -> str:
    seconds = (task.ended_at - task.started_at).total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min {rest} s"


# --- log --------------------------------------------------------------------------------------


def log(args: argparse.Namespace) -> int:
    from pilot.daemon.tasklog import follow, read_log, task_log_dir

    home = Path(pilot_home())
    directory = task_log_dir(home)
    with open_store() as store:
        task = task_or_refuse(store, args.task_id)
        if getattr(args, "follow", False):
            wrote = False
            for chunk in follow(directory, task.id, finished=lambda: over(store, home, task.id), poll=POLL_SECONDS):
                write(chunk)
                wrote = True
            task = store.task(task.id)
            if not wrote:
                no_file(task)
            if task.status == "running":
                tell(f"task {task.id}: no daemon runs it any more (the next `pilot start` records it interrupted)")
            else:
                tell(f"task {task.id} ended: {ended_text(task)}")
            return 0
    data = read_log(directory, task.id)
    if data is None:
        no_file(task)
    else:
        write(data)
    return 0


def over(store, home: Path, task_id: int) -> bool:
    """Whether following is over: the task has ended, or it shows running with no daemon left to run it."""
    from pilot.daemon.lock import running_daemon

    status = store.task(task_id).status
    return status in FINISHED_STATUSES or (status == "running" and running_daemon(home) is None)


def no_file(task: Task) -> None:
    """No log file: a task that never started, or one run by a Pilot that kept only the short tail."""
    if task.status == "queued":
        tell(f"task {task.id} has not started yet: no output")
    elif task.log_tail and task.status != "running":
        tell(f"task {task.id} has no log file; this is the last of its output, as the task list keeps it")
        write(task.log_tail.encode())
    elif task.started_at is None:
        tell(f"task {task.id} never started: no output")
    else:
        tell(f"task {task.id} has no output")


def ended_text(task: Task) -> str:
    if task.status == "done" or not task.failure_reason:
        return task.status
    return f"{task.status} ({task.failure_reason})"


def write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def tell(line: str) -> None:
    say(f"pilot: {line}")


# --- cancel and retry -------------------------------------------------------------------------


def cancel(args: argparse.Namespace) -> int:
    from pilot.daemon.lock import running_daemon

    with open_store() as store:
        task = task_or_refuse(store, args.task_id)
        if task.status in FINISHED_STATUSES:
            raise PilotError(f"task {task.id} is already {task.status}: nothing to cancel")
        if task.status == "running" and running_daemon(Path(pilot_home())) is None:
            raise PilotError(f"task {task.id} is marked running, but no daemon is running",
                             hint="the next `pilot start` stops what is left of it and records it interrupted")
        previous, task = store.request_cancel(task.id)
        if previous in FINISHED_STATUSES:  # it ended between the two reads
            raise PilotError(f"task {task.id} is already {previous}: nothing to cancel")
        if previous == "running":
            task = wait_for_end(store, task.id, CANCEL_WAIT_SECONDS)
    line = cancel_line(previous, task)
    if args.json:
        print(json.dumps({"message": line, "previous_status": previous, "task": as_json(task)}))
    else:
        print(line)
    return 0


def wait_for_end(store, task_id: int, timeout: float) -> Task:
    deadline = time.monotonic() + timeout
    while (task := store.task(task_id)).status not in FINISHED_STATUSES and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return task


def cancel_line(previous: str, task: Task) -> str:
    title = one_line(task.title, SHOW_LIMIT)
    if previous == "queued":
        return f"cancelled task {task.id} before it started: {title}"
    if task.status == "running":
        return f"asked the daemon to cancel task {task.id}; it is still stopping: {title}"
    if task.status == "cancelled":
        return f"cancelled task {task.id}: {title}"
    return f"task {task.id} ended {ended_text(task)} before the cancel reached it: {title}"


def retry(args: argparse.Namespace) -> int:
    with open_store() as store:
        task = task_or_refuse(store, args.task_id)
        if task.status not in FINISHED_STATUSES:
            raise PilotError(f"task {task.id} is still {task.status}: retry it once it has ended",
                             hint=f"or cancel it first: pilot task cancel {task.id}")
        new = store.add_task(task.title, task.command)
    if args.json:
        print(json.dumps({**as_json(new), "retry_of": task.id}))
    else:
        print(f"queued task {new.id}: {one_line(new.title, SHOW_LIMIT)} (a retry of task {task.id})")
    return 0
