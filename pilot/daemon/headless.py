"""`pilot start` without the dashboard: the task loop, logging to a file and stderr.

With `upgrade.auto_upgrade_on_idle`, an available update is applied after the daemon has
been idle for `daemon.idle_upgrade_after` (default 5 minutes); so is the move off a release its
publisher yanked or halted. Below the channel's `min_supported_version` the update is applied at
once, with or without that setting (running tasks still finish first: the upgrade drains). SIGINT, SIGTERM and SIGHUP
stop the loop (`Runtime.request_stop`): no new task starts, and the caller's
`Runtime.shutdown` waits for the running ones up to `daemon.drain_timeout`, cancelling them
past it or at a second signal. An upgrade under way is abandoned (before the swap) or its new
version starts with the next `pilot start` (after it).
"""

from __future__ import annotations

import logging
import signal

from pilot.daemon.runtime import Reexec, Runtime
from pilot.errors import PilotError
from pilot.launcher import stop_signals

log = logging.getLogger("pilot")
POLL_SECONDS = 0.5


def note_stop_signals() -> list[int]:
    """Until the runtime exists, a stop signal is only noted here; install_stop_handlers hands it over.

    So a daemon stopped while it starts, or while it restarts into a new version, stops as a running one
    does: its main loop comes up (a trial boot is confirmed), then it drains and ends its session."""
    noted: list[int] = []
    for signum in stop_signals():
        signal.signal(signum, lambda received, _frame: noted.append(received))
    return noted


def install_stop_handlers(runtime: Runtime, noted: list[int] | None = None) -> None:
    """SIGINT, SIGTERM and SIGHUP ask the runtime to stop: the first drains, the next cancels at once.

    The handler only notes the signal; the loops take it within their poll interval. They stay
    installed after the loop, for the drain; `Runtime.reexec` puts its own in place. `noted`: the
    signals note_stop_signals received before the runtime was there."""
    for signum in stop_signals():
        signal.signal(signum, lambda received, _frame: runtime.signal_received(received))
    for signum in noted or ():
        runtime.signal_received(signum)


def run_headless(runtime: Runtime) -> Reexec | None:
    """Run tasks until a stop is asked for (None) or an idle upgrade is ready to exec (a Reexec)."""
    runtime.main_loop_up()  # first: a trial boot is confirmed before a stop (noted meanwhile) is taken
    runtime.start_checker()
    while not runtime.stopping.wait(POLL_SECONDS):
        runtime.take_signals()
        if runtime.stopping.is_set():
            break
        runtime.daemon.poll()
        if should_upgrade_now(runtime):
            reexec = upgrade_when_idle(runtime)
            if reexec is not None:
                return reexec
    return None


def should_upgrade_now(runtime: Runtime) -> bool:
    if runtime.upgrade_required:
        return True
    return (runtime.config.upgrade.auto_upgrade_on_idle and runtime.can_upgrade
            and runtime.daemon.idle_for() >= runtime.config.daemon.idle_upgrade_after)


def upgrade_when_idle(runtime: Runtime) -> Reexec | None:
    if runtime.upgrade_required:
        log.info("pilot %s is below the channel's minimum supported version: upgrading to %s now", runtime.version,
                 runtime.upgrade_target)
    else:
        log.info("idle for %.0f s: upgrading to %s", runtime.daemon.idle_for(), runtime.upgrade_target)
    try:
        return runtime.prepare_upgrade(on_step=lambda step: None, on_progress=lambda *_: None,
                                       ask_to_keep_waiting=lambda running: True, cancelled=runtime.cancelled)
    except PilotError:  # logged by the runtime, with the version this daemon still runs
        runtime.take_signals()  # a stop that cancelled it ends the loop next
        runtime.outcome = None  # forget the offer until the next check
        return None
