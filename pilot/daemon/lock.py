"""One daemon per PILOT_HOME: the lock `pilot start` holds and `pilot status` asks about.

Kept apart from pilot.commands.start so `pilot status` does not import logging and the
daemon to learn whether one runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pilot.errors import StateError

_daemon_lock: list[int] = []


def hold_daemon_lock(home: Path, version: str) -> None:
    """One daemon per PILOT_HOME. The descriptor closes at exec, so the new version takes the lock again.

    The lock file says who holds it: "<pid> <version>" (`pilot status` tells a daemon older than the install)."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").split()[:1] or ["?"]
        os.close(fd)
        raise StateError(f"a Pilot daemon is already running for {home} (pid {holder[0]})",
                         hint="stop it first, or set PILOT_HOME for a second one") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {version}".encode())
    _daemon_lock.append(fd)


def running_daemon(home: Path) -> tuple[int, str | None] | None:
    """(pid, version) of the daemon holding the lock, or None when none runs (pid -1 if unreadable)."""
    try:
        fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CLOEXEC)
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
