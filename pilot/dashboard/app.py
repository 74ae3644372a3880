"""The Pilot dashboard: header, update notice, upgrade progress, metrics and tasks.

Threads never touch widgets: the checker and the upgrade worker post messages, and the
app renders them. `u` prepares the upgrade in a thread worker while tasks keep running;
once it has drained, the app exits with a `Reexec`, so `App.run()` returns and restores
the terminal before the archive is swapped and exec'd.

The footer offers `u` only when there is something to upgrade to; pressing it otherwise
says why not. Every way to quit from the keyboard (q, ctrl+q, ctrl+c, the command palette)
asks once while tasks run; a stop signal quits at once, since a service manager cannot answer.
"""

from __future__ import annotations

import asyncio
import os
import queue
import time
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer
from textual.worker import get_current_worker

from pilot.daemon.runtime import BannerText, Reexec, Runtime
from pilot.dashboard.driver import DashboardDriver
from pilot.dashboard.widgets import Banner, Logo, Metrics, TaskTable, UpdateNotice, UpgradeProgress
from pilot.errors import PilotError
from pilot.launcher import stop_signals

REFRESH_SECONDS = 0.5
NOTE_SECONDS = 10.0  # how long "no update available" stays before the notice shows the usual status again
QUIT_CONFIRM_SECONDS = 10.0  # a second quit key within this long quits; later, it asks again


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
    # A key bound here replaces the App's own binding for it: ctrl+q and ctrl+c (Textual's quit and
    # "how to quit" keys) both reach action_quit, and so through the same question as 'q'.
    BINDINGS: ClassVar = [
        Binding("u", "upgrade", "Upgrade"),  # shown only while check_action allows it
        Binding("u", "no_upgrade", show=False),  # the same key when there is nothing to upgrade to
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("ctrl+c", "quit", "Quit", show=False),  # not priority: a text selection is copied first
        Binding("w", "keep_waiting", "Keep waiting", show=False),
        Binding("c", "cancel_upgrade", "Cancel upgrade", show=False),
    ]

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(driver_class=DashboardDriver)  # tests run headless: Textual's own driver then
        self.runtime = runtime
        self.upgrading = False
        self.quit_armed = False
        self._decisions: queue.Queue[bool] = queue.Queue()
        self._asking = False
        self._note: str | None = None  # a passing line in the notice area, e.g. why 'u' did nothing
        self._note_timer = None

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
        for signum in stop_signals():  # a stop signal ends the dashboard at once, unasked, and abandons an upgrade
            loop.add_signal_handler(signum, self.stop_requested, signum)
        self.query_one(TaskTable).border_title = "TASKS"
        self.runtime.listeners.append(lambda: self.post_message(CheckFinished()))
        self.refresh_state()
        self.set_interval(REFRESH_SECONDS, self.refresh_state)
        self.call_after_refresh(self.boot_is_up)
        self.runtime.start_checker()

    def boot_is_up(self) -> None:
        """The first frame is drawn: commit a trial boot and show how the last update ended."""
        self.runtime.main_loop_up()  # also reads the install path: a stale daemon is shown from the start
        self.runtime.take_signals()  # a stop that came while the dashboard started: it leaves now, as on_mount's would
        if self.runtime.stopping.is_set():
            self.exit(None)
            return
        self.show_banner()
        self.show_notice()

    def show_banner(self) -> None:
        if self.quit_armed:
            return  # the quit question stays until it is answered or lapses; then the banner is shown
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
        self.show_notice()
        if self.runtime.upgrade_required and not self.upgrading:  # below the channel's minimum: at once, unasked
            self.action_upgrade()

    def show_notice(self) -> None:
        """The offer, or a passing note, or the last check's quiet status; and the footer to match."""
        self.refresh_bindings()
        if self.upgrading:
            return
        runtime = self.runtime
        outcome = runtime.outcome
        quiet = self._note or (f"update check failed: {outcome.error}" if outcome and outcome.error else None)
        self.query_one(UpdateNotice).show(runtime.upgrade_target, quiet, installed=runtime.installed_other is not None,
                                          running=runtime.version, standing=runtime.standing("(press 'u')"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`u` is offered in the footer only when an upgrade is possible; otherwise it explains (no_upgrade)."""
        if action == "upgrade":
            return not self.upgrading and self.runtime.can_upgrade
        if action == "no_upgrade":
            return not self.upgrading and not self.runtime.can_upgrade
        return True

    def action_no_upgrade(self) -> None:
        self.runtime.refresh_installed()  # a hand update since the last check is offered at once
        if not self.runtime.can_upgrade:
            self._note = no_update_text(self.runtime.outcome)
            if self._note_timer is not None:
                self._note_timer.stop()
            self._note_timer = self.set_timer(NOTE_SECONDS, self._end_note)
        self.show_notice()

    def _end_note(self) -> None:
        self._note = None
        self._note_timer = None
        self.show_notice()

    # -- the hot upgrade ---------------------------------------------------------------------

    def action_upgrade(self) -> None:
        target = self.runtime.upgrade_target
        if self.upgrading or target is None:
            self.bell()
            return
        self.upgrading = True
        self.refresh_bindings()
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
        self.post_message(UpgradeStep(f"{running} task(s) still running: press 'w' to keep waiting or 'c' to cancel"))
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
        self.show_notice()

    def on_upgrade_ready(self, message: UpgradeReady) -> None:
        self.exit(message.reexec)

    # -- quitting ----------------------------------------------------------------------------

    def stop_requested(self, signum: int | None = None) -> None:
        """SIGTERM, SIGHUP or SIGINT: leave at once (the runtime then drains, as headless does); an upgrade
        under way is abandoned before its swap."""
        self.runtime.request_stop(signum)
        if self._asking:
            self._decisions.put(False)
        self.exit(None)

    async def action_quit(self) -> None:
        """q, ctrl+q, ctrl+c and the palette's Quit: while tasks run, the first press only asks."""
        running = self.runtime.daemon.running_count()
        if running and not self.quit_armed:
            self.quit_armed = True
            # Not the runtime's banner: once the question lapses, the banner it replaced comes back.
            self.query_one(Banner).show("error", f"{running} task(s) running: press 'q' again to quit and cancel them")
            self.set_timer(QUIT_CONFIRM_SECONDS, self._disarm_quit)
            return
        if self._asking:
            self._decisions.put(False)
        self.exit(None)

    async def action_help_quit(self) -> None:
        """Textual binds ctrl+c to a hint by default; should anything still reach it, it quits the same way."""
        await self.action_quit()

    def _disarm_quit(self) -> None:
        self.quit_armed = False
        self.show_banner()


def no_update_text(outcome) -> str:
    """Pure: why 'u' did nothing, from the last check's outcome (None: no check has ended yet)."""
    if outcome is None:
        return "no update available (not checked yet)"
    if outcome.error:
        return f"no update available: the last check failed ({outcome.error})"
    return f"no update available (last checked {time.strftime('%H:%M:%S', time.localtime(outcome.at))})"
