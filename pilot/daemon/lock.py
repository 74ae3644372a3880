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


def hold_daemon_lock(home: Path) -> None:
    """One daemon per PILOT_HOME. The descriptor closes at exec, so the new version takes the lock again."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateError(f"a Pilot daemon is already running for {home} (pid {holder})",
                         hint="stop it first, or set PILOT_HOME for a second one") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _daemon_lock.append(fd)


def daemon_pid(home: Path) -> int | None:
    """The pid of the daemon holding the lock, or None when none runs."""
    try:
        fd = os.open(home / "daemon.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None
