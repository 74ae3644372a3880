"""`pilot start [--dashboard]`: run the daemon, headless or with the terminal dashboard."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pilot.errors import PilotError, StateError
from pilot.launcher import pilot_home


def run(args: argparse.Namespace) -> int:
    from pilot.daemon.runtime import BannerText, Runtime

    home = Path(pilot_home())
    configure_logging(home, to_stderr=not args.dashboard)
    hold_daemon_lock(home)
    runtime = Runtime.open()
    while True:
        outcome = run_ui(runtime, args.dashboard)
        if outcome is None:
            runtime.close()
            return 0
        try:
            runtime.reexec(outcome)  # returns only when the swap or exec failed
        except PilotError as error:
            logging.getLogger("pilot").error("upgrade failed: %s", error.one_line())
            runtime = Runtime.open()
            text = f"Upgrade failed, still running v{runtime.version}: {error.one_line()}"
            runtime.banner = BannerText("error", text)


def run_ui(runtime, dashboard: bool):
    if dashboard:
        from pilot.dashboard import run_dashboard

        return run_dashboard(runtime)
    from pilot.daemon.headless import run_headless

    return run_headless(runtime)


_daemon_lock: list[int] = []


def hold_daemon_lock(home: Path) -> None:
    """One daemon per PILOT_HOME. The descriptor closes at exec, so the new version takes the lock again."""
    import fcntl

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
    import fcntl

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


def configure_logging(home: Path, *, to_stderr: bool) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(logs / "pilot.log", encoding="utf-8")]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")
