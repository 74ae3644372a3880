"""`pilot stop [--wait] [--cancel-running] [--timeout DURATION] [--json]`: stop the daemon of this PILOT_HOME.

It finds the daemon through its lock (pilot.daemon.lock) and sends it SIGTERM: the daemon takes
no new task and lets the running ones finish, up to `daemon.drain_timeout`, then cancels them.
With --cancel-running, the daemon's session is marked first (in the store, so the request
cannot race the signal) and the daemon cancels its running tasks at once instead.

Without --wait it says it asked and returns. With --wait it waits until the lock is free, up
to --timeout (default: daemon.drain_timeout plus STOP_MARGIN_SECONDS; with --cancel-running,
the cancel's SIGTERM-to-SIGKILL grace plus the margin), and says how the running tasks ended.

Exit status: 0 when the daemon was asked (or, with --wait, has stopped), and also when no daemon
is running, since the state asked for holds; 1 when --wait timed out or the daemon cannot be
signalled; 4 when the lock names no readable pid.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

from pilot.buildinfo import current_version
from pilot.daemon.lifecycle import duration_text, tasks_text
from pilot.daemon.lock import running_daemon, signal_daemon, wait_until_stopped
from pilot.errors import PilotError, StateError
from pilot.launcher import pilot_home

STOP_MARGIN_SECONDS = 15.0
CANCEL_GRACE_SECONDS = 5.0  # pilot.daemon.tasks.KILL_GRACE_SECONDS, without importing the task runner


def run(args: argparse.Namespace) -> int:
    from pilot.config import load_config

    home = load_config().home  # an unusable PILOT_HOME or config.yaml: one line, exit 4, like every command
    daemon = running_daemon(home)
    if daemon is None:
        return report(args, "no daemon is running", running=False, pid=None, version=None, signalled=False)
    pid, version = daemon
    if pid <= 0:
        raise StateError(f"a daemon holds {home / 'daemon.lock'} but its pid cannot be read",
                         hint="`pilot status` shows what is known; stop it by hand")
    running = ask_to_stop(home, pid, cancel=args.cancel_running)
    if running is None:  # it ended between the lock check and the signal
        return report(args, "no daemon is running", running=False, pid=None, version=None, signalled=False)
    facts = {"running": True, "pid": pid, "version": version, "signalled": True, "tasks_running": len(running)}
    if not args.wait:
        return report(args, asked_line(pid, len(running), cancel=args.cancel_running), **facts)
    timeout = args.timeout if args.timeout is not None else default_timeout(args.cancel_running)
    began = time.monotonic()
    if not wait_until_stopped(home, timeout):
        raise PilotError(f"the daemon (pid {pid}) is still running after {duration_text(timeout)}",
                         hint=still_running_hint(args.cancel_running))
    seconds = time.monotonic() - began
    drained, cancelled = how_they_ended(running)
    line = (f"stopped the daemon (pid {pid}) after {seconds:.1f} s; {tasks_text(drained)} drained, "
            f"{cancelled} cancelled")
    return report(args, line, **facts, stopped=True, seconds=round(seconds, 3), drained=drained,
                  cancelled=cancelled)


def ask_to_stop(home: Path, pid: int, *, cancel: bool) -> list[int] | None:
    """Mark the daemon's session for a cancel if asked, then SIGTERM it; the ids of the tasks it was running
    (None when it is gone already)."""
    from pilot.state.store import open_store

    with open_store(home, app_version=current_version()) as store:
        running = [task.id for task in store.running_tasks()]
        if cancel:
            store.request_session_cancel(pid)
    try:
        signalled = signal_daemon(home, pid, signal.SIGTERM)
    except PermissionError:
        raise PilotError(f"cannot signal the daemon (pid {pid}): permission denied",
                         hint="it runs as another user") from None
    return running if signalled else None


def asked_line(pid: int, running: int, *, cancel: bool) -> str:
    if not running:
        return f"asked the daemon (pid {pid}) to stop"
    them = "it" if running == 1 else "them"
    if cancel:
        return f"asked the daemon (pid {pid}) to stop and cancel its {running} running task{'s' * (running != 1)}"
    return (f"asked the daemon (pid {pid}) to stop; it lets {running} running task{'s' * (running != 1)} finish "
            f"(up to {duration_text(drain_timeout())}), then cancels {them}")


def default_timeout(cancel: bool) -> float:
    return (CANCEL_GRACE_SECONDS if cancel else drain_timeout() + CANCEL_GRACE_SECONDS) + STOP_MARGIN_SECONDS


def drain_timeout() -> float:
    from pilot.config import load_config

    return load_config().daemon.drain_timeout


def still_running_hint(cancel: bool) -> str:
    if cancel:
        return "its tasks have not stopped yet: see `pilot status` and $PILOT_HOME/logs/pilot.log"
    return "it is waiting for its running tasks: `pilot stop --cancel-running` cancels them"


def how_they_ended(task_ids: list[int]) -> tuple[int, int]:
    """(drained, cancelled) of the tasks that were running when the stop was asked."""
    from pilot.state.store import open_store

    with open_store(Path(pilot_home()), app_version=current_version()) as store:
        tasks = [store.task(task_id) for task_id in task_ids]
    statuses = [task.status for task in tasks if task is not None]
    return sum(s in ("done", "failed") for s in statuses), sum(s == "cancelled" for s in statuses)


def report(args: argparse.Namespace, line: str, **facts: object) -> int:
    if args.json:
        shape = {"running": None, "pid": None, "version": None, "signalled": False, "tasks_running": None,
                 "stopped": not facts["running"], "seconds": None, "drained": None, "cancelled": None}
        print(json.dumps({**shape, **facts, "cancel_running": bool(args.cancel_running), "wait": bool(args.wait),
                          "message": line}))
    else:
        print(line)
    return 0
