"""One daemon per PILOT_HOME: the lock `pilot start` holds and `pilot status` asks about.

Kept apart from pilot.commands.start so `pilot status` does not import logging and the
daemon to learn whether one runs.
"""

from __future__ import annotations

import fcntl
import os

from pilot.errors import StateError

TYPE_CHECKING = False  # not `from typing import ...`, nor pathlib at run time: `pilot status` imports this
if TYPE_CHECKING:
    from pathlib import Path

_daemon_lock: list[int] = []


def hold_daemon_lock(home: Path | str, version: str) -> None:
    """One daemon per PILOT_HOME. The descriptor closes at exec, so the new version takes the lock again.

    The lock file says who holds it: "<pid> <version>" (`pilot status` tells a daemon older than the install)."""
    os.makedirs(home, exist_ok=True)
    fd = os.open(os.path.join(home, "daemon.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").split()[:1] or ["?"]
        os.close(fd)
        raise StateError(f"a Pilot daemon is already running for {home} (pid {holder[0]})",
                         hint="stop it with `pilot stop`, or set PILOT_HOME for a second one") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {version}".encode())
    _daemon_lock.append(fd)


def running_daemon(home: Path | str) -> tuple[int, str | None] | None:
    """(pid, version) of the daemon holding the lock, or None when none runs (pid -1 if unreadable)."""
    try:
        fd = os.open(os.path.join(home, "daemon.lock"), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        words = os.read(fd, 64).decode(errors="replace").split()
        pid = int(words[0]) if words and words[0].isdigit() else -1
        return pid, words[1] if len(words) > 1 else None
    finally:
        os.close(fd)
    return None


def daemon_pid(home: Path) -> int | None:
    """The pid of the daemon holding the lock, or None when none runs."""
    daemon = running_daemon(home)
    return daemon[0] if daemon else None


def signal_daemon(home: Path, pid: int, signum: int) -> bool:
    """Send `signum` to the daemon if it still holds the lock as `pid`; False when it is gone already.

    Where there are pidfds (Linux 5.3+), the process is pinned before the lock is checked, so a pid
    the system reused after the daemon ended is never signalled. PermissionError passes through."""
    import signal

    pidfd = _pidfd(pid)
    if pidfd == -1:
        return False
    try:
        holder = running_daemon(home)
        if holder is None or holder[0] != pid:
            return False
        if pidfd is None:
            os.kill(pid, signum)
        else:
            signal.pidfd_send_signal(pidfd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None and pidfd >= 0:
            os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    """A pidfd for pid; None where the system has none; -1 when there is no such process."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except ProcessLookupError:
        return -1
    except OSError:  # ENOSYS (an old kernel), EPERM under some sandboxes
        return None


def wait_until_stopped(home: Path, timeout: float, *, poll: float = 0.1) -> bool:
    """Wait up to `timeout` seconds for the daemon lock to be free; True once it is."""
    import time

    deadline = time.monotonic() + timeout
    while running_daemon(home) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True
