"""What a running daemon holds, shared by the headless loop and the dashboard.

The runtime opens the store, resumes the session a hot upgrade handed over (or starts one),
commits the boot once the caller's main loop is up, follows the background checker, and
runs the hot upgrade through the update engine's front door (pilot.update), which holds
every guard: prepare while tasks keep running, drain, wait (asking, never killing, past the
drain timeout), then hand a `Reexec` back to the caller, which leaves its UI before
`reexec` swaps the archive and execs it with the same arguments. When another process has
installed a different version meanwhile, the upgrade is an exec of that archive instead.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pilot.buildinfo import current_version
from pilot.config import Config, load_config
from pilot.daemon import lifecycle
from pilot.daemon.checker import CheckOutcome, UpdateChecker
from pilot.daemon.logs import keep_out_of_logs
from pilot.daemon.service import Daemon
from pilot.daemon.tasklog import task_log_dir
from pilot.daemon.tasks import KILL_GRACE_SECONDS
from pilot.errors import PilotError, UpdateCancelled, UpdateError
from pilot.launcher import handle_stop_signals

RESUME_SESSION_ENV = "PILOT_RESUME_SESSION"
PREPARE_CLEANUP_SECONDS = 10
DRAIN_POLL_SECONDS = 0.25
log = logging.getLogger("pilot")


@dataclass(frozen=True)
class Reexec:
    """Returned by a UI that should end so that a new version can take this process over.

    update + prepared: a downloaded, verified archive to swap in (pilot.update.Update, Prepared);
    neither: exec the archive another process installed."""

    update: object | None = None
    prepared: object | None = None


@dataclass(frozen=True)
class BannerText:
    kind: str  # "upgraded", "rolled_back", "error"
    text: str


class Runtime:
    def __init__(self, config: Config, store, *, notifier=None, updater=None) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier
        self.version = current_version()
        self.session = self._session()
        self.daemon = Daemon(store, config.daemon, session_id=self.session.id, log_dir=task_log_dir(config.home))
        self.updater = updater
        self.checker: UpdateChecker | None = None
        self.outcome: CheckOutcome | None = None
        self.banner: BannerText | None = None
        self.installed_other: str | None = None  # the version at the install path when it is not ours
        self.stopping = threading.Event()  # a stop was asked for (a signal): an upgrade in progress is abandoned
        self.stop_signal: int | None = None  # the signal that began the stop, if one did (the exit status says it)
        self._signals: list[int] = []  # stop signals received, not yet taken (see signal_received)
        self.cancel_now = threading.Event()  # cancel running tasks instead of waiting for them
        self.cancel_reason = lifecycle.STOPPED_AGAIN
        self.interrupted: list = []  # tasks a dead daemon left running, recorded interrupted by this start
        self.last_stop: lifecycle.StopSummary | None = None
        self._not_preparing = threading.Event()  # cleared while an upgrade downloads and self-tests
        self._not_preparing.set()
        self._announced: set[str] = set()
        self.listeners: list[Callable[[], None]] = []

    @classmethod
    def open(cls) -> Runtime:
        from pilot.notify import Notifier
        from pilot.state.store import open_store
        from pilot.update import open_background_updater

        config = load_config()
        updater = open_background_updater(config)  # a bad setting is refused now, before the daemon runs
        store = open_store(config.home, app_version=current_version())
        for warning in store.warnings:
            log.warning(warning)
        interrupted = lifecycle.recover_leftovers(store)
        runtime = cls(config, store, notifier=Notifier(config), updater=updater)
        runtime.interrupted = interrupted
        keep_out_of_logs(runtime.notifier.secrets)
        return runtime

    def _session(self):
        resumed = os.environ.pop(RESUME_SESSION_ENV, None)
        if resumed and resumed.isdigit():
            session = self.store.resume_session(int(resumed), version=self.version)
            if session is not None:
                return session
        return self.store.start_session(version=self.version, pid=os.getpid())

    # -- boot and background checks ----------------------------------------------------------

    def main_loop_up(self) -> BannerText | None:
        """Call once the UI or loop is really running: commits a trial boot and says how the last update ended."""
        from pilot.update import commit_boot, take_notice

        record = commit_boot()
        self.refresh_installed()
        if record is not None:
            log.info("upgraded from %s to %s: this start committed it", record["from_version"], self.version)
            self._announce("upgraded", record["from_version"], self.version, "")
            self.banner = BannerText("upgraded", f"✅ Upgraded from v{record['from_version']}")
            take_notice()
            return self.banner
        notice = take_notice()
        if notice is not None and notice.state == "rolled_back":
            log.warning("rolled back from %s to %s: %s", notice.to_version, notice.from_version, notice.reason)
            self._announce("rolled_back", notice.to_version, notice.from_version, notice.reason)
            self.banner = BannerText("rolled_back", f"⚠ Rolled back from v{notice.to_version}: {notice.reason}")
        return self.banner

    def _announce(self, kind: str, from_version: str | None, to_version: str | None, detail: str | None) -> None:
        if self.notifier is None or not self.notifier.enabled:
            log.info("%s notification not sent: notifications are off (upgrade.notify_channel: none)", kind)
            return
        text = f"Pilot {kind.replace('_', ' ')}: {from_version} -> {to_version}. {detail or ''}".strip()
        # A slow chat or webhook server must never hold up the UI or the loop; the notifier logs how it went.
        threading.Thread(target=self.notifier.send, args=(kind, text), name="notify", daemon=True).start()

    def start_checker(self) -> None:
        if self.updater is None or not self.config.upgrade.auto_check:
            return
        self.checker = UpdateChecker(self.updater, interval=self.config.upgrade.check_interval,
                                     on_outcome=self._on_check, first_delay=self.updater.settings.first_check_delay)
        threading.Thread(target=self.checker.run, name="update-checker", daemon=True).start()

    def _on_check(self, outcome: CheckOutcome) -> None:
        self.outcome = outcome
        self.refresh_installed()
        for listener in self.listeners:  # first: the UI shows the news even if recording it fails
            listener()
        choice = self.available
        log.info("%s", check_line(outcome, self.version, choice, self.installed_other))
        standing = self.standing()
        if standing is not None and standing not in self._announced:  # logged once per news
            self._announced.add(standing)
            log.warning("%s", standing)
        if outcome.error is None and choice is not None and str(choice.release.version) not in self._announced:
            version = str(choice.release.version)
            self._announced.add(version)
            self._announce("update_available", self.version, version, "press 'u' in the dashboard to upgrade")

    def refresh_installed(self) -> None:
        """Notice when the install path holds another version than this daemon runs (a hand update)."""
        if self.updater is None:
            return
        installed = self.updater.installed_version()
        other = installed if installed not in (None, self.version) else None
        if other is not None and other != self.installed_other:
            log.warning("pilot %s is installed, but this daemon still runs %s; it restarts into %s at its next "
                        "upgrade", other, self.version, other)
        self.installed_other = other

    @property
    def available(self):
        """The release an upgrade would install, unless the installed archive is another version already."""
        result = self.outcome.result if self.outcome else None
        choice = result.choice if result is not None else None
        if choice is None or self.installed_other is not None or str(choice.release.version) == self.version:
            return None
        return choice

    def standing(self, how: str = "with `pilot self-update`") -> str | None:
        """The last check's word on the running version: below the channel's minimum, yanked or halted."""
        result = self.outcome.result if self.outcome else None
        return result.standing_line(how) if result is not None else None

    @property
    def upgrade_required(self) -> bool:
        """Below the channel's min_supported_version with a release to go to: the daemon upgrades by itself,
        whatever upgrade.auto_upgrade_on_idle says."""
        result = self.outcome.result if self.outcome else None
        return result is not None and result.required and self.available is not None

    @property
    def can_upgrade(self) -> bool:
        return self.installed_other is not None or self.available is not None

    @property
    def upgrade_target(self) -> str | None:
        choice = self.available
        return self.installed_other or (str(choice.release.version) if choice is not None else None)

    # -- the hot upgrade ---------------------------------------------------------------------

    def cancelled(self) -> bool:
        return bool(self._signals) or self.stopping.is_set()

    def prepare_upgrade(self, *, on_step: Callable[[str], None], on_progress: Callable[[int, int], None],
                        ask_to_keep_waiting: Callable[[int], bool], cancelled: Callable[[], bool]) -> Reexec:
        """Everything up to the swap, while tasks keep running; then drain. Nothing is changed yet."""
        target = self.upgrade_target
        self._not_preparing.clear()
        try:
            return self._prepare_upgrade(_logged_steps(target, on_step), on_progress, ask_to_keep_waiting,
                                         lambda: cancelled() or self.cancelled())
        except UpdateCancelled as error:
            log.info("upgrade to %s cancelled: %s", target, error.one_line())
            raise
        except PilotError as error:
            log.warning("upgrade%s failed, still running %s: %s", f" to {target}" if target else "", self.version,
                        error.one_line())
            raise
        finally:
            self._not_preparing.set()

    def _prepare_upgrade(self, on_step, on_progress, ask_to_keep_waiting, stop) -> Reexec:
        self.refresh_installed()
        if self.updater is None or not self.can_upgrade:
            raise UpdateError("no update is available")
        # Another version installed by hand needs no download, just the exec; else the engine's guards first:
        # the whole-update lock, no open trial, the install not replaced under us.
        update = None if self.installed_other is not None else self.updater.begin()
        prepared = None
        try:
            if update is not None:
                prepared = update.prepare(self.available, progress=on_progress, on_step=on_step, cancelled=stop,
                                          on_note=on_step)  # "downloaded 21 KB of 14.6 MB (delta)", in the dashboard
            self._drain(on_step, ask_to_keep_waiting, stop)
        except BaseException:
            if prepared is not None:
                prepared.discard()
            if update is not None:
                update.close()
            self.daemon.resume()
            raise
        on_step("restarting")
        return Reexec(update, prepared)

    def _drain(self, on_step, ask_to_keep_waiting, cancelled) -> None:
        self.daemon.drain()
        waited_since = time.monotonic()
        while not self.daemon.wait_idle(0.25):
            running = self.daemon.running_count()
            on_step(f"waiting for {running} task{'s' if running != 1 else ''}")
            if cancelled():
                raise UpdateCancelled("upgrade cancelled")
            if time.monotonic() - waited_since > self.config.daemon.drain_timeout:
                if not ask_to_keep_waiting(running):
                    raise UpdateCancelled(f"upgrade cancelled: {running} task(s) still running")
                waited_since = time.monotonic()

    def reexec(self, reexec: Reexec) -> str:
        """Swap the prepared archive in (or take the installed one) and exec it with this process's arguments.

        Returns "stopped" when a stop was asked for first (the new version then starts next time);
        raises a PilotError when the swap or the exec failed. Nothing prepared is left behind."""
        os.environ[RESUME_SESSION_ENV] = str(self.session.id)
        handle_stop_signals()  # the UI's handlers are gone: from here a stop waits for the swap, and is not lost
        log.info("pilot %s daemon (pid %d) restarting into %s: same pid, same session", self.version, os.getpid(),
                 self.upgrade_target or "the installed version")
        try:
            self.stop()
            self.store.close()  # exec runs no finally blocks: commit and close first
            argv = tuple(sys.argv[1:])
            if reexec.update is None:
                self.updater.restart_into_installed(argv, cancelled=self.cancelled)
                done = "stopped"
            else:
                done = reexec.update.apply(reexec.prepared, restart=True, resume_argv=argv, cancelled=self.cancelled)
        except KeyboardInterrupt:
            done = "stopped"
        finally:
            if reexec.prepared is not None:
                reexec.prepared.discard()
            if reexec.update is not None:
                reexec.update.close()
        os.environ.pop(RESUME_SESSION_ENV, None)
        self._end_session_after_stop()
        return done

    def _end_session_after_stop(self) -> None:
        from pilot.state.store import open_store

        with open_store(self.config.home, app_version=self.version) as store:
            store.end_session(self.session.id)

    def stop(self) -> None:
        if self.checker is not None:
            self.checker.stop()

    # -- stopping ----------------------------------------------------------------------------

    def signal_received(self, signum: int) -> None:
        """The signal handler's whole work: note the signal (a list append takes no lock). The loop that
        runs next takes it (`take_signals`). Setting an Event here could deadlock: the interrupted code may
        hold that Event's lock, e.g. inside `stopping.wait()`."""
        self._signals.append(signum)

    def take_signals(self) -> None:
        """Turn the stop signals received since the last call into stop requests; call it from a loop."""
        while self._signals:
            self.request_stop(self._signals.pop(0))

    def request_stop(self, signum: int | None = None, *, cancel: bool = False, reason: str | None = None) -> None:
        """Ask the daemon to stop (from a thread or an event loop; a signal handler calls `signal_received`).

        The first request drains (no new tasks; running ones may finish within daemon.drain_timeout);
        a second one, or `cancel=True`, cancels running tasks at once with `reason`. `signum` is the
        signal that asked, kept for the exit status."""
        if signum is not None and self.stop_signal is None:
            self.stop_signal = signum
        if cancel or self.stopping.is_set():
            if not self.cancel_now.is_set():
                self.cancel_reason = reason or lifecycle.STOPPED_AGAIN
            self.cancel_now.set()
        self.stopping.set()

    def shutdown(self) -> int:
        """Stop: drain, cancel what is left (recorded cancelled), end the session, close; the exit status.

        Without a stop request first (the dashboard's 'q', which asks before quitting with tasks
        running), running tasks are cancelled at once."""
        self.take_signals()
        if not self.stopping.is_set():
            self.request_stop(cancel=True, reason=lifecycle.DASHBOARD_QUIT)
        self.stop()
        self.daemon.drain()
        if not self._not_preparing.wait(PREPARE_CLEANUP_SECONDS):  # an abandoned upgrade removes its download
            log.warning("an abandoned upgrade did not finish cleaning up in time")
        running = self.daemon.running_ids()
        reason = self._drain_for_stop(running)
        cut_short = self.daemon.cancel_all(reason) if reason else 0
        if cut_short and not self.daemon.wait_idle(KILL_GRACE_SECONDS + 5):
            log.warning("some tasks did not stop in time; they will show as interrupted at the next start")
        summary = lifecycle.summarise([self.store.task(task_id) for task_id in running], cut_short, self.stop_signal)
        self.last_stop = summary
        self.store.end_session(self.session.id)
        self.store.close()
        log.info("%s", lifecycle.stop_line(self.version, os.getpid(), summary))
        return summary.exit_status

    def _drain_for_stop(self, running: list[int]) -> str | None:
        """Wait for running tasks to end by themselves; the reason to cancel the rest, or None if none is left."""
        timeout = self.config.daemon.drain_timeout
        if running and not self.cancel_now.is_set():
            log.info("%s", lifecycle.waiting_line(len(running), timeout, self.stop_signal))
        deadline = time.monotonic() + timeout
        while not self.daemon.wait_idle(0):
            self.take_signals()
            if self.cancel_now.is_set():
                return self.cancel_reason
            if self.store.session_cancel_requested(self.session.id):
                return lifecycle.CANCEL_RUNNING
            if time.monotonic() >= deadline:
                return lifecycle.drain_timeout_reason(timeout)
            self.daemon.wait_idle(DRAIN_POLL_SECONDS)
            self.daemon.poll()  # draining claims nothing, but `pilot task cancel` still works
        return None

    def close(self) -> None:
        """Quit without draining: running tasks are cancelled at once. (`pilot start` stops through `shutdown`.)"""
        self.stop()
        if not self._not_preparing.wait(PREPARE_CLEANUP_SECONDS):  # an abandoned upgrade removes its download
            log.warning("an abandoned upgrade did not finish cleaning up in time")
        if not self.daemon.stop():
            log.warning("some tasks did not stop in time; they will show as interrupted at the next start")
        self.store.end_session(self.session.id)
        self.store.close()


def check_line(outcome: CheckOutcome, running: str, choice, installed_other: str | None) -> str:
    """Pure: the log line for one update check's outcome."""
    if outcome.error:
        wait = f"; the server asked to wait {outcome.retry_after:.0f} s (Retry-After)" if outcome.retry_after else ""
        return f"update check failed: {outcome.error}{wait}"
    if installed_other is not None:
        return f"update check: pilot {installed_other} is installed; this daemon ({running}) restarts into it"
    if choice is not None:
        return f"update check: {choice.release.version} is available (running {running})"
    return f"update check: up to date ({running})"


def _logged_steps(target: str | None, on_step: Callable[[str], None]) -> Callable[[str], None]:
    """The caller's on_step, with each new step logged once ("waiting for 1 task" repeats while it waits)."""
    last: list[str] = []

    def step(text: str) -> None:
        if not last or last[-1] != text:
            last[:] = [text]
            log.info("upgrade to %s: %s", target, text)
        on_step(text)

    return step
