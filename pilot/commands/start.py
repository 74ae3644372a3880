"""`pilot start [--dashboard]`: run the daemon, headless or with the terminal dashboard.

The exit status of a stop is `Runtime.shutdown`'s (pilot.daemon.lifecycle): 0 when every
running task finished within `daemon.drain_timeout` (or there was none, or the dashboard's
user quit having been asked), 128 + the signal when running tasks had to be cancelled.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pilot.buildinfo import current_version
from pilot.config import check_home
from pilot.daemon.lock import hold_daemon_lock
from pilot.daemon.logs import configure_logging
from pilot.errors import PilotError
from pilot.launcher import pilot_home, say

log = logging.getLogger("pilot")


def run(args: argparse.Namespace) -> int:
    from pilot.daemon.headless import install_stop_handlers, note_stop_signals
    from pilot.daemon.runtime import BannerText, Runtime

    noted = note_stop_signals()  # first: `pilot status` names this daemon once it holds the lock
    home = Path(pilot_home())
    check_home(home)  # an unusable PILOT_HOME is one line (exit 4) before the log is opened in it
    configure_logging(home, to_stderr=not args.dashboard)  # the dashboard owns the terminal: the file only
    hold_daemon_lock(home, current_version())
    runtime = Runtime.open()
    install_stop_handlers(runtime, noted)
    mode = "dashboard" if args.dashboard else "headless"
    log.info("pilot %s daemon started (pid %d, %s, session %d)", runtime.version, os.getpid(), mode,
             runtime.session.id)
    while True:
        outcome = run_ui(runtime, args.dashboard)
        if outcome is None:
            return stop(runtime, args.dashboard)
        try:
            runtime.reexec(outcome)  # returns only when a stop came first; raises when the swap or exec failed
            log.info("stopped before the restart; the new version starts with the next `pilot start`")
            return 0
        except PilotError as error:
            log.error("upgrade failed: %s", error.one_line())
            runtime = Runtime.open()
            install_stop_handlers(runtime)  # the restart had its own in place
            text = f"Upgrade failed, still running v{runtime.version}: {error.one_line()}"
            runtime.banner = BannerText("error", text)


def run_ui(runtime, dashboard: bool):
    if dashboard:
        from pilot.dashboard import run_dashboard

        return run_dashboard(runtime)
    from pilot.daemon.headless import run_headless

    return run_headless(runtime)


def stop(runtime, dashboard: bool) -> int:
    """Drain (a second stop signal cancels at once), then close; the exit status."""
    from pilot.daemon import lifecycle
    from pilot.daemon.headless import install_stop_handlers

    install_stop_handlers(runtime)  # the dashboard's went with it
    running = runtime.daemon.running_count()
    if dashboard and running and runtime.stopping.is_set() and not runtime.cancel_now.is_set():
        say(f"pilot: {lifecycle.waiting_line(running, runtime.config.daemon.drain_timeout, runtime.stop_signal)}")
    return runtime.shutdown()
