"""Task processes: start one under the supervisor, and stop what a dead daemon left behind.

`spawn` starts a task's command as `python -I -S supervisor.py <daemon pid> <fd> -- <command>`
in a new session and process group (see pilot/daemon/supervisor.py for why a separate process
and not a `preexec_fn`). The group id is the supervisor's pid; the daemon records it in the
store. A command that cannot start raises the same OSError `subprocess.Popen` would (not found,
permission denied), read back from the supervisor's status pipe.

`reap_group` is the next start's side: a task the store still shows running has no daemon any
more; if its process group is still there (macOS has no death signal, or something escaped the
supervisor), it is stopped: SIGTERM, then SIGKILL after REAP_GRACE_SECONDS. A group id can be
reused only once its group is empty, so a live group is the task's unless its leader (pid ==
group id) is a younger process than the task: a new program that took the number. That one is
left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

__all__ = ["REAP_GRACE_SECONDS", "SUPERVISOR", "group_alive", "process_start_time", "reap_group", "spawn"]

log = logging.getLogger(__name__)

SUPERVISOR = Path(__file__).with_name("supervisor.py")
SPAWN_REPORT_SECONDS = 30.0  # the supervisor reports within milliseconds; this only bounds a wedged one
REAP_GRACE_SECONDS = 2.0
PID_REUSE_SLACK_SECONDS = 30.0  # a leader started this long after the task did is another program
_warned: list[bool] = []


def supervisor_argv(argv: list[str], status_fd: int) -> list[str] | None:
    """The supervised command line, or None where there is no interpreter or supervisor file to run."""
    if not sys.executable or not SUPERVISOR.is_file():
        return None
    return [sys.executable, "-I", "-S", str(SUPERVISOR), str(os.getpid()), str(status_fd), "--", *argv]


def spawn(argv: list[str]) -> subprocess.Popen:
    """Start argv in a new process group under the supervisor; its stdout and stderr are one text pipe."""
    read_end, write_end = os.pipe()
    try:
        supervised = supervisor_argv(argv, write_end)
        if supervised is None and not _warned:
            _warned.append(True)
            log.warning("the task supervisor is not available (%s): tasks will not die with the daemon", SUPERVISOR)
        process = subprocess.Popen(
            supervised or argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1, start_new_session=True,
            pass_fds=(write_end,) if supervised else (),
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    try:
        error = _spawn_report(read_end)
    finally:
        os.close(read_end)
    if error:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=SPAWN_REPORT_SECONDS)
        if process.stdout is not None:
            process.stdout.close()
        raise OSError(error, os.strerror(error), argv[0] if argv else "")
    return process


def _spawn_report(fd: int) -> int:
    """The errno the supervisor wrote, or 0 once it closed the pipe (the command is running)."""
    data = b""
    deadline = time.monotonic() + SPAWN_REPORT_SECONDS
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    text = data.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else 0


# --- the reaper -------------------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """Whether a process group with this id exists (one we may not signal counts: it exists)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> float | None:
    """When the process started (seconds since the epoch), or None when there is no such process.

    Raises OSError when this system cannot tell."""
    if sys.platform.startswith("linux"):
        return _linux_start_time(pid)
    return _ps_start_time(pid)


def _linux_start_time(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = int(stat.rsplit(") ", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _ps_start_time(pid: int) -> float | None:
    """From `ps -o etime=` ([[dd-]hh:]mm:ss ago), which every POSIX ps has."""
    result = subprocess.run(["ps", "-o", "etime=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    text = result.stdout.strip()
    if result.returncode != 0 and not text:
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    seconds = sum(value * 60 ** index for index, value in enumerate(reversed(parts)))
    return time.time() - seconds - (int(days) * 86400 if days else 0)


def reap_group(pgid: int, task_started: datetime | None, *, grace: float = REAP_GRACE_SECONDS) -> str:
    """Stop a dead daemon's leftover task group: "gone", "killed", "reused" (not the task's) or "unknown"."""
    if pgid <= 1 or not group_alive(pgid):
        return "gone"
    try:
        leader = process_start_time(pgid)
    except (OSError, ValueError, IndexError, StopIteration, subprocess.SubprocessError):
        return "unknown"
    if leader is not None and task_started is not None and \
            leader > task_started.timestamp() + PID_REUSE_SLACK_SECONDS:
        return "reused"
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    return "killed"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
