"""`pilot start` without the dashboard: the task loop, logging to a file and stderr.

With `upgrade.auto_upgrade_on_idle`, an available update is applied after the daemon has
been idle for `daemon.idle_upgrade_after` (default 5 minutes).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from pilot.daemon.runtime import Reexec, Runtime
from pilot.errors import PilotError

log = logging.getLogger("pilot")
POLL_SECONDS = 0.5


def run_headless(runtime: Runtime) -> Reexec | None:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runtime.start_checker()
        banner = runtime.main_loop_up()
        log.info("pilot %s daemon running (pid %d)%s", runtime.version, os.getpid(),
                 f"; {banner.text}" if banner else "")
        while not stop.wait(POLL_SECONDS):
            runtime.daemon.poll()
            if should_upgrade_now(runtime):
                reexec = upgrade_when_idle(runtime)
                if reexec is not None:
                    return reexec
        log.info("pilot daemon stopping")
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def should_upgrade_now(runtime: Runtime) -> bool:
    return (runtime.config.upgrade.auto_upgrade_on_idle and runtime.available is not None
            and runtime.daemon.idle_for() >= runtime.config.daemon.idle_upgrade_after)


def upgrade_when_idle(runtime: Runtime) -> Reexec | None:
    version = runtime.available.release.version
    log.info("idle for %.0f s: upgrading to %s", runtime.daemon.idle_for(), version)
    try:
        return runtime.prepare_upgrade(on_step=lambda step: log.info("upgrade: %s", step), on_progress=lambda *_: None,
                                       ask_to_keep_waiting=lambda running: True, cancelled=lambda: False)
    except PilotError as error:
        log.warning("upgrade to %s failed, still running %s: %s", version, runtime.version, error.one_line())
        runtime.outcome = None  # forget the offer until the next check
        return None
