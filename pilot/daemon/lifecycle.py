"""How a daemon stops, and what its next start finds: the words and numbers, and the leftovers' recovery.

A stop (SIGINT, SIGTERM or SIGHUP headless; the same signals or quitting in the dashboard)
takes no new task and waits for the running ones up to `daemon.drain_timeout`; past it, or on
a second stop signal, or when `pilot stop --cancel-running` asked, the rest are cancelled and
recorded `cancelled` with the reason. The exit status is `stop_exit_status`: 0 when no running
task was cut short (or the user quit the dashboard, having been asked), else 128 + the signal
that began the stop, the shell's "ended by signal N".

The next start stops whatever is left of the groups of tasks the store still shows running
(`recover_leftovers`: the reaper, pilot.daemon.process.reap_group) and records those tasks
`interrupted`; they are never re-run, since they may have had effects.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

from pilot.daemon.process import reap_group
from pilot.net import one_line
from pilot.state.models import Task

log = logging.getLogger("pilot")

INTERRUPTED_BY = "the daemon stopped"  # a leftover's reason: "interrupted: the daemon stopped"
CANCEL_RUNNING = "cancelled: pilot stop --cancel-running"
STOPPED_AGAIN = "cancelled: the daemon was told to stop again"
DASHBOARD_QUIT = "cancelled: the dashboard quit"


@dataclass(frozen=True)
class StopSummary:
    cause: str  # "SIGTERM", "SIGINT", "SIGHUP", or "quit" (the dashboard, without a signal)
    drained: int  # running when the stop began, and ended by themselves
    cancelled: int  # cancelled by the stop (or by `pilot task cancel` meanwhile)
    cut_short: int  # how many the stop itself cancelled
    exit_status: int


def duration_text(seconds: float) -> str:
    """Pure: 600 -> "10m", 90 -> "90s", 5400 -> "1.5h", in the grammar config.yaml reads."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size * 10).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def tasks_text(count: int) -> str:
    return f"{count} task{'' if count == 1 else 's'}"


def drain_timeout_reason(timeout: float) -> str:
    return f"cancelled: the daemon stopped and its {duration_text(timeout)} drain timeout passed"


def cause_of(signum: int | None) -> str:
    if signum is None:
        return "quit"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stop_exit_status(signum: int | None, cut_short: int) -> int:
    """Pure: 0 for a clean drain or a quit the user confirmed; 128 + the signal when tasks were cut short."""
    return 128 + signum if signum is not None and cut_short else 0


def stop_line(version: str, pid: int, summary: StopSummary) -> str:
    """Pure: "pilot 1.4.0 daemon stopped (pid 42, SIGTERM): 1 task drained, 0 cancelled; exit status 0"."""
    return (f"pilot {version} daemon stopped (pid {pid}, {summary.cause}): {tasks_text(summary.drained)} drained, "
            f"{summary.cancelled} cancelled; exit status {summary.exit_status}")


def waiting_line(running: int, timeout: float, signum: int | None) -> str:
    """Pure: "stopping: no new tasks; waiting up to 10m for 1 running task (Ctrl-C again cancels it)"."""
    again = "Ctrl-C again" if signum == signal.SIGINT else "a second stop signal or `pilot stop --cancel-running`"
    return (f"stopping: no new tasks; waiting up to {duration_text(timeout)} for {running} running "
            f"task{'' if running == 1 else 's'} ({again} cancels {'it' if running == 1 else 'them'})")


def interrupted_line(count: int) -> str:
    """Pure: "2 tasks were interrupted when the daemon stopped; they are not re-run"."""
    if count == 1:
        return "1 task was interrupted when the daemon stopped; it is not re-run"
    return f"{count} tasks were interrupted when the daemon stopped; they are not re-run"


def summarise(tasks: list[Task | None], cut_short: int, signum: int | None) -> StopSummary:
    """Pure: the stop's numbers from the tasks that were running when it began, as the store has them now."""
    ended = [task for task in tasks if task is not None]
    cancelled = sum(1 for task in ended if task.status == "cancelled")
    drained = sum(1 for task in ended if task.status in ("done", "failed"))
    return StopSummary(cause_of(signum), drained, cancelled, cut_short, stop_exit_status(signum, cut_short))


def recover_leftovers(store) -> list[Task]:
    """At start, under the daemon lock: stop what dead daemons left running, and record it interrupted."""
    for task in store.running_tasks():
        if task.pgid is not None:
            _reap(task)
    interrupted = store.interrupt_running(INTERRUPTED_BY)
    for task in interrupted:
        log.warning("task %s (%s) was interrupted: the daemon stopped while it ran", task.id, one_line(task.title, 80))
    if interrupted:
        log.warning("%s", interrupted_line(len(interrupted)))
    return interrupted


def _reap(task: Task) -> None:
    outcome = reap_group(task.pgid, task.started_at)
    if outcome == "killed":
        log.warning("task %s: stopped what was left of its process group %d", task.id, task.pgid)
    elif outcome == "reused":
        log.warning("task %s: process group %d now belongs to another program; left alone", task.id, task.pgid)
    elif outcome == "unknown":
        log.warning("task %s: cannot tell whether process group %d is still the task's; left alone "
                    "(stop it yourself if it is)", task.id, task.pgid)
