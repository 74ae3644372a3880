"""`pilot start` without the dashboard: the task loop, logging to a file and stderr.

With `upgrade.auto_upgrade_on_idle`, an available update is applied after the daemon has
been idle for `daemon.idle_upgrade_after` (default 5 minutes). SIGINT, SIGTERM and SIGHUP
stop the loop; an upgrade under way is abandoned (before the swap) or its new version
starts with the next `pilot start` (after it).
"""

from __future__ import annotations

import logging
import os
import signal

from pilot.daemon.runtime import Reexec, Runtime
from pilot.errors import PilotError
from pilot.launcher import STOP_SIGNALS

log = logging.getLogger("pilot")
POLL_SECONDS = 0.5


def run_headless(runtime: Runtime) -> Reexec | None:
    banner = runtime.main_loop_up()  # first: a trial boot is confirmed before anything can stop it
    previous = {sig: signal.signal(sig, lambda *_: runtime.stopping.set()) for sig in STOP_SIGNALS}
    try:
        runtime.start_checker()
        log.info("pilot %s daemon running (pid %d)%s", runtime.version, os.getpid(),
                 f"; {banner.text}" if banner else "")
        while not runtime.stopping.wait(POLL_SECONDS):
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
    return (runtime.config.upgrade.auto_upgrade_on_idle and runtime.can_upgrade
            and runtime.daemon.idle_for() >= runtime.config.daemon.idle_upgrade_after)


def upgrade_when_idle(runtime: Runtime) -> Reexec | None:
    version = runtime.upgrade_target
    log.info("idle for %.0f s: upgrading to %s", runtime.daemon.idle_for(), version)
    try:
        return runtime.prepare_upgrade(on_step=lambda step: log.info("upgrade: %s", step), on_progress=lambda *_: None,
                                       ask_to_keep_waiting=lambda running: True, cancelled=runtime.stopping.is_set)
    except PilotError as error:
        if not runtime.stopping.is_set():
            log.warning("upgrade to %s failed, still running %s: %s", version, runtime.version, error.one_line())
        runtime.outcome = None  # forget the offer until the next check
        return None
