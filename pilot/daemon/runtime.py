"""What a running daemon holds, shared by the headless loop and the dashboard.

The runtime opens the store, resumes the session a hot upgrade handed over (or starts one),
commits the boot once the caller's main loop is up, follows the background checker, and
runs the hot upgrade: prepare while tasks keep running, drain, wait (asking, never killing,
past the drain timeout), then hand a `Reexec` back to the caller, which leaves its UI
before `reexec` swaps the archive and execs it with the same arguments.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pilot.buildinfo import current_build, current_version, install_method
from pilot.config import Config, load_config
from pilot.daemon.checker import CheckOutcome, UpdateChecker
from pilot.daemon.service import Daemon
from pilot.errors import UpdateError
from pilot.update import sentinel

RESUME_SESSION_ENV = "PILOT_RESUME_SESSION"
log = logging.getLogger("pilot")


@dataclass(frozen=True)
class Reexec:
    """Returned by a UI that should end so the prepared archive can be swapped in and exec'd."""

    prepared: object  # pilot.update.updater.Prepared


@dataclass(frozen=True)
class BannerText:
    kind: str  # "upgraded", "rolled_back", "error"
    text: str


class Runtime:
    def __init__(self, config: Config, store, *, notifier=None) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier
        self.version = current_version()
        self.session = self._session()
        self.daemon = Daemon(store, config.daemon, session_id=self.session.id)
        self.updater = self._updater()
        self.checker: UpdateChecker | None = None
        self.outcome: CheckOutcome | None = None
        self.banner: BannerText | None = None
        self._announced: set[str] = set()
        self.listeners: list[Callable[[], None]] = []

    @classmethod
    def open(cls) -> Runtime:
        from pilot.notify import Notifier
        from pilot.state.db import open_store

        config = load_config()
        store = open_store(config.home, app_version=current_version())
        for warning in store.warnings:
            log.warning(warning)
        for task in store.interrupt_running("the daemon stopped while this task ran"):
            log.warning("task %s (%s) was interrupted by a stopped daemon; it is not re-run", task.id, task.title)
        return cls(config, store, notifier=Notifier(config))

    def _session(self):
        resumed = os.environ.pop(RESUME_SESSION_ENV, None)
        if resumed and resumed.isdigit():
            session = self.store.resume_session(int(resumed), version=self.version)
            if session is not None:
                return session
        return self.store.start_session(version=self.version, pid=os.getpid())

    def _updater(self):
        build = current_build()
        if build is None or install_method() != "pyz" or not self.config.upgrade.manifest_url:
            return None
        from pilot.update.fetch import HttpFetcher
        from pilot.update.updater import Updater

        return Updater(build=build, config=self.config, fetcher=HttpFetcher(),
                       manifest_url=self.config.upgrade.manifest_url)

    # -- boot and background checks ----------------------------------------------------------

    def main_loop_up(self) -> BannerText | None:
        """Call once the UI or loop is really running: commits a trial boot and says how the last update ended."""
        record = sentinel.commit_boot(current_build())
        if record is not None:
            self._announce("upgraded", record["from_version"], self.version, "")
            self.banner = BannerText("upgraded", f"✅ Upgraded from v{record['from_version']}")
            return self.banner
        notice = sentinel.take_notice()
        if notice and notice.get("state") == "rolled_back":
            bad, reason = notice.get("to_version"), notice.get("reason")
            self._announce("rolled_back", bad, notice.get("from_version"), reason)
            self.banner = BannerText("rolled_back", f"⚠ Rolled back from v{bad}: {reason}")
        return self.banner

    def _announce(self, kind: str, from_version: str | None, to_version: str | None, detail: str | None) -> None:
        event = {"upgraded": "upgrade", "rolled_back": "rollback", "update_available": "available"}[kind]
        self.store.record_update_event(event, from_version=from_version, to_version=to_version, detail=detail)
        if self.notifier is not None and self.notifier.enabled:
            text = f"Pilot {kind.replace('_', ' ')}: {from_version} -> {to_version}. {detail or ''}".strip()
            # A slow chat or webhook server must never hold up the UI or the loop.
            threading.Thread(target=self.notifier.send, args=(kind, text), name="notify", daemon=True).start()

    def start_checker(self) -> None:
        if self.updater is None or not self.config.upgrade.auto_check:
            return
        self.checker = UpdateChecker(self.updater, interval=self.config.upgrade.check_interval,
                                     on_outcome=self._on_check)
        threading.Thread(target=self.checker.run, name="update-checker", daemon=True).start()

    def _on_check(self, outcome: CheckOutcome) -> None:
        self.outcome = outcome
        for listener in self.listeners:  # first: the UI shows the news even if recording it fails
            listener()
        choice = self.available
        if outcome.error:
            log.info("update check failed: %s", outcome.error)
        elif choice is not None and str(choice.release.version) not in self._announced:
            version = str(choice.release.version)
            self._announced.add(version)
            log.info("update available: %s", version)
            self._announce("update_available", self.version, version, "press 'u' in the dashboard to upgrade")

    @property
    def available(self):
        result = self.outcome.result if self.outcome else None
        return result.choice if result is not None else None

    # -- the hot upgrade ---------------------------------------------------------------------

    def prepare_upgrade(self, *, on_step: Callable[[str], None], on_progress: Callable[[int, int], None],
                        ask_to_keep_waiting: Callable[[int], bool], cancelled: Callable[[], bool]) -> Reexec:
        choice = self.available
        if self.updater is None or choice is None:
            raise UpdateError("no update is available")
        if sentinel.open_trial_record() is not None:
            raise UpdateError("a new version is still starting (its trial boot is open); try again in a moment")
        prepared = self.updater.prepare(choice, progress=on_progress, on_step=on_step)
        try:
            self._drain(on_step, ask_to_keep_waiting, cancelled)
        except BaseException:
            prepared.discard()
            self.daemon.resume()
            raise
        on_step("restarting")
        return Reexec(prepared)

    def _drain(self, on_step, ask_to_keep_waiting, cancelled) -> None:
        self.daemon.drain()
        waited_since = time.monotonic()
        while not self.daemon.wait_idle(0.25):
            running = self.daemon.running_count()
            on_step(f"waiting for {running} task{'s' if running != 1 else ''}")
            if cancelled():
                raise UpdateError("upgrade cancelled")
            if time.monotonic() - waited_since > self.config.daemon.drain_timeout:
                if not ask_to_keep_waiting(running):
                    raise UpdateError(f"upgrade cancelled: {running} task(s) still running")
                waited_since = time.monotonic()

    def reexec(self, reexec: Reexec) -> None:
        """Swap the prepared archive in and exec it with this process's arguments; returns only on failure."""
        os.environ[RESUME_SESSION_ENV] = str(self.session.id)
        self.stop()
        self.store.close()  # exec runs no finally blocks: commit and close first
        self.updater.apply(reexec.prepared, restart=True, resume_argv=tuple(sys.argv[1:]))

    def stop(self) -> None:
        if self.checker is not None:
            self.checker.stop()

    def close(self) -> None:
        self.stop()
        if not self.daemon.stop():
            log.warning("some tasks did not stop in time; they will show as interrupted at the next start")
        self.store.end_session(self.session.id)
        self.store.close()
