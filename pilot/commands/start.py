"""`pilot start [--dashboard]`: run the daemon, headless or with the terminal dashboard."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pilot.buildinfo import current_version
from pilot.daemon.lock import hold_daemon_lock
from pilot.errors import PilotError
from pilot.launcher import pilot_home


def run(args: argparse.Namespace) -> int:
    from pilot.daemon.runtime import BannerText, Runtime

    home = Path(pilot_home())
    configure_logging(home, to_stderr=not args.dashboard)
    hold_daemon_lock(home, current_version())
    runtime = Runtime.open()
    while True:
        outcome = run_ui(runtime, args.dashboard)
        if outcome is None:
            runtime.close()
            return 0
        try:
            runtime.reexec(outcome)  # returns only when a stop came first; raises when the swap or exec failed
            logging.getLogger("pilot").info("stopped before the restart; the new version starts with the next "
                                            "`pilot start`")
            return 0
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


def configure_logging(home: Path, *, to_stderr: bool) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(logs / "pilot.log", encoding="utf-8")]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")
