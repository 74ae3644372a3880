"""Replace this process with an archive: same PID, same terminal.

exec runs no `finally` blocks or atexit handlers and drops Python's buffers, so callers
commit and close their state first; this module flushes the standard streams.

A stop signal (SIGINT, SIGTERM, SIGHUP) must not be lost in the exec: one that is already
pending means no exec at all, and for a new version whose entry module understands it
(boot protocol 2) the signals stay blocked across the exec, so one arriving in between
waits for the new version, which honours it as soon as its handlers are in place.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from pilot.launcher import SIGNALS_BLOCKED_ENV, stop_signals


def exec_archive(archive: Path, argv: list[str], *, stop_requested: Callable[[], bool] = lambda: False,
                 keep_stop_signals_blocked: bool = False) -> None:
    """Exec `python archive argv...`. Returns only when a stop was requested first (or exec failed: raises)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if keep_stop_signals_blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals())
        os.environ[SIGNALS_BLOCKED_ENV] = "1"
    try:
        if not (stop_requested() or set(stop_signals()) & signal.sigpending()):
            os.execv(sys.executable, [sys.executable, str(archive), *argv])
    finally:  # reached only without an exec: put the mask back, and a pending signal is delivered here
        os.environ.pop(SIGNALS_BLOCKED_ENV, None)
        if keep_stop_signals_blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals())
