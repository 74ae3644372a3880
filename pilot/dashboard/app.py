"""The Pilot dashboard: header, update notice, upgrade progress, metrics and tasks.

Threads never touch widgets: the checker and the upgrade worker post messages, and the
app renders them. `u` prepares the upgrade in a thread worker while tasks keep running;
once it has drained, the app exits with a `Reexec`, so `App.run()` returns and restores
the terminal before the archive is swapped and exec'd.
"""

from __future__ import annotations

import asyncio
import os
import queue
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer
from textual.worker import get_current_worker

from pilot.daemon.runtime import BannerText, Reexec, Runtime
from pilot.dashboard.widgets import Banner, Logo, Metrics, TaskTable, UpdateNotice, UpgradeProgress
from pilot.errors import PilotError
from pilot.launcher import STOP_SIGNALS

REFRESH_SECONDS = 0.5


class CheckFinished(Message):
    """The background checker has a new outcome (read it from the runtime)."""


class UpgradeStep(Message):
    def __init__(self, text: str, percent: float | None = None) -> None:
        super().__init__()
        self.text = text
        self.percent = percent


class UpgradeFailed(Message):
    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class UpgradeReady(Message):
    def __init__(self, reexec: Reexec) -> None:
        super().__init__()
        self.reexec = reexec


class PilotApp(App[Reexec | None]):
    CSS_PATH = Path(__file__).with_name("pilot.tcss")  # absolute: subclasses live in other folders
    TITLE = "Pilot"
    BINDINGS: ClassVar = [
        Binding("u", "upgrade", "Upgrade"),
        Binding("q", "quit", "Quit"),
        Binding("w", "keep_waiting", "Keep waiting", show=False),
        Binding("c", "cancel_upgrade", "Cancel upgrade", show=False),
    ]

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.upgrading = False
        self.quit_armed = False
        self._decisions: queue.Queue[bool] = queue.Queue()
        self._asking = False

    def compose(self) -> ComposeResult:
        yield Logo(self.runtime.version, os.getpid())
        yield Banner(id="banner")
        yield UpdateNotice(id="notice")
        yield UpgradeProgress(id="upgrade")
        yield Metrics(id="metrics")
        yield TaskTable(id="tasks")
        yield Footer()

    def on_mount(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:  # a stop signal ends the dashboard the way 'q' does, and abandons an upgrade
            loop.add_signal_handler(signum, self.stop_requested)
        self.query_one(TaskTable).border_title = "TASKS"
        self.runtime.listeners.append(lambda: self.post_message(CheckFinished()))
        self.refresh_state()
        self.set_interval(REFRESH_SECONDS, self.refresh_state)
        self.call_after_refresh(self.boot_is_up)
        self.runtime.start_checker()

    def boot_is_up(self) -> None:
        """The first frame is drawn: commit a trial boot and show how the last update ended."""
        self.runtime.main_loop_up()
        self.show_banner()

    def show_banner(self) -> None:
        banner = self.runtime.banner
        self.query_one(Banner).show(banner.kind if banner else None, banner.text if banner else None)

    def set_banner(self, kind: str, text: str) -> None:
        self.runtime.banner = BannerText(kind, text)  # the runtime owns it: a later redraw shows the same
        self.show_banner()

    def refresh_state(self) -> None:
        self.runtime.daemon.poll()
        store = self.runtime.store
        self.query_one(Metrics).show(store.totals())
        self.query_one(TaskTable).show(store.tasks(limit=100))

    # -- update notice -----------------------------------------------------------------------

    def on_check_finished(self, _: CheckFinished) -> None:
        if self.upgrading:
            return
        runtime = self.runtime
        outcome = runtime.outcome
        quiet = f"update check failed: {outcome.error}" if outcome and outcome.error else None
        self.query_one(UpdateNotice).show(runtime.upgrade_target, quiet, installed=runtime.installed_other is not None)

    # -- the hot upgrade ---------------------------------------------------------------------

    def action_upgrade(self) -> None:
        target = self.runtime.upgrade_target
        if self.upgrading or target is None:
            self.bell()
            return
        self.upgrading = True
        self.query_one(UpdateNotice).display = False
        self.query_one(UpgradeProgress).start(target)
        self.upgrade()

    @work(thread=True, exclusive=True, group="upgrade")
    def upgrade(self) -> None:
        worker = get_current_worker()

        def progress(done: int, total: int) -> None:
            self.post_message(UpgradeStep("downloading", 80 * done / total if total else None))

        def step(text: str) -> None:
            percent = {"verifying": 85.0, "restarting": 100.0}.get(text)
            self.post_message(UpgradeStep(text, percent if percent else (90.0 if text.startswith("waiting") else None)))

        try:
            reexec = self.runtime.prepare_upgrade(on_step=step, on_progress=progress,
                                                  ask_to_keep_waiting=self.ask_to_keep_waiting,
                                                  cancelled=lambda: worker.is_cancelled)
        except PilotError as error:
            if not worker.is_cancelled:
                self.post_message(UpgradeFailed(error.one_line()))
            return
        self.post_message(UpgradeReady(reexec))

    def ask_to_keep_waiting(self, running: int) -> bool:
        """Called from the worker past the drain timeout: ask, never kill."""
        self._asking = True
        self.post_message(UpgradeStep(f"{running} task(s) still running: press 'w' to keep waiting, "
                                      "'c' to cancel the upgrade"))
        decision = self._decisions.get()
        self._asking = False
        return decision

    def action_keep_waiting(self) -> None:
        if self._asking:
            self._decisions.put(True)

    def action_cancel_upgrade(self) -> None:
        if self._asking:
            self._decisions.put(False)

    def on_upgrade_step(self, message: UpgradeStep) -> None:
        self.query_one(UpgradeProgress).step(message.text, message.percent)

    def on_upgrade_failed(self, message: UpgradeFailed) -> None:
        self.upgrading = False
        self.query_one(UpgradeProgress).stop()
        self.set_banner("error", f"Upgrade failed, still running v{self.runtime.version}: {message.reason}")
        self.on_check_finished(CheckFinished())

    def on_upgrade_ready(self, message: UpgradeReady) -> None:
        self.exit(message.reexec)

    # -- quitting ----------------------------------------------------------------------------

    def stop_requested(self) -> None:
        """SIGTERM, SIGHUP or SIGINT: stop at once; an upgrade under way is abandoned before its swap."""
        self.runtime.stopping.set()
        if self._asking:
            self._decisions.put(False)
        self.exit(None)

    async def action_quit(self) -> None:
        running = self.runtime.daemon.running_count()
        if running and not self.quit_armed:
            self.quit_armed = True
            self.set_banner("error", f"{running} task(s) running: press 'q' again to quit anyway "
                                     "(they are stopped and recorded as cancelled)")
            return
        if self._asking:
            self._decisions.put(False)
        self.exit(None)
