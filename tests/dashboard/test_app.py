"""The dashboard driven with Textual's own test pilot: notice, `u`, progress, banners, quitting, layout.

The update side is real where it matters: a v2 archive published to a release tree on
127.0.0.1, checked and prepared (download, signature, sha256, self-test) by the same Updater
self-update uses. Layout snapshots are plain text, one file per terminal size; rerun with
PILOT_UPDATE_SNAPSHOTS=1 to rewrite them after an intended change.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from pilot.buildinfo import BuildInfo, TrustedKey, platform_tag, python_tag
from pilot.config import load_config
from pilot.daemon.runtime import Reexec, Runtime
from pilot.dashboard import app as app_module
from pilot.dashboard.app import CheckFinished, PilotApp, UpgradeStep
from pilot.dashboard.widgets import Banner, Metrics, UpdateNotice, UpgradeProgress, failure_reason, fit
from pilot.launcher import write_json
from pilot.state.models import Task, Totals, Usage
from pilot.state.store import open_store

SNAPSHOTS = Path(__file__).with_name("snapshots")
SIZE = (80, 24)  # the smallest terminal the dashboard is laid out for


def screen_text(app: PilotApp) -> str:
    """The screen as plain text, rendered the way App.export_screenshot renders it."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def footer_text(app: PilotApp) -> str:
    return screen_text(app).rstrip("\n").splitlines()[-1]


async def wait_until(pilot, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the screen shows:\n{screen_text(pilot.app)}")
        await pilot.pause(0.1)


class RecordingApp(PilotApp):
    """The real app, keeping a list of the upgrade steps it showed."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.steps: list[str] = []

    def on_upgrade_step(self, message: UpgradeStep) -> None:
        self.steps.append(message.text)
        super().on_upgrade_step(message)


@pytest.fixture
def store(isolated_home):
    opened = open_store(isolated_home, app_version="1.0.0")
    yield opened
    opened.close()


@pytest.fixture
def runtime(store):
    return Runtime(load_config(), store)


@pytest.fixture
def updatable(runtime, archives, release_site, release_key, tmp_path):
    """A runtime whose updater runs for real against a release tree offering 2.0.0."""
    from pilot.daemon.checker import UpdateChecker
    from pilot.update.fetch import HttpFetcher
    from pilot.update.updater import Settings, Updater

    v1, v2 = archives.build("1.0.0"), archives.build("2.0.0")
    release_site.publish(v2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copyfile(v1, bin_dir / "pilot")
    build = BuildInfo(version="1.0.0", python_tag=python_tag(), platform_tag=platform_tag(), build_id="0" * 64,
                      archive=bin_dir / "pilot", trusted_keys=(TrustedKey(release_key.public.keyid,
                                                                          release_key.public.raw),),
                      threshold=1, source_commit=None, manifest_url=release_site.manifest_url)
    settings = Settings.read(runtime.config, os.environ, manifest_url=release_site.manifest_url)
    runtime.updater = Updater(build=build, settings=settings, fetcher=HttpFetcher())
    runtime.checker = UpdateChecker(runtime.updater, interval=3600, on_outcome=runtime._on_check)
    runtime.version = build.version  # what this "archive" reports, as an archive's runtime would
    runtime.v2 = v2
    return runtime


def check_now(runtime: Runtime) -> None:
    runtime._on_check(runtime.checker.check_once())


class HandUpdatable:
    """An updater whose install path holds whatever version the test puts there (a hand update)."""

    def __init__(self, installed: str | None) -> None:
        self.installed = installed

    def installed_version(self) -> str | None:
        return self.installed


@pytest.fixture
def hand_updatable(runtime, monkeypatch):
    """A runtime at v1.0.0 that checks nothing by itself, with a HandUpdatable install path."""
    runtime.version = "1.0.0"
    runtime.updater = HandUpdatable(None)
    monkeypatch.setattr(runtime, "start_checker", lambda: None)
    return runtime


def sleeper(store):
    return store.add_task("sleeper", (sys.executable, "-c", "import time; time.sleep(30)"))


@pytest.mark.slow
async def test_notice_u_progress_and_reexec(updatable):
    app = RecordingApp(updatable)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        notice = app.query_one(UpdateNotice)
        assert not notice.display
        assert "Upgrade" not in footer_text(app)
        check_now(updatable)
        await wait_until(pilot, lambda: notice.display)
        assert str(notice.content) == "⬆ Update available: v2.0.0 (press 'u' to upgrade)"
        await wait_until(pilot, lambda: "u Upgrade" in footer_text(app))

        await pilot.press("u")
        progress = app.query_one(UpgradeProgress)
        assert progress.display
        assert "Upgrading to v2.0.0..." in screen_text(app)
        await wait_until(pilot, lambda: app.return_value is not None, timeout=120)

    reexec = app.return_value
    assert isinstance(reexec, Reexec)
    assert reexec.prepared.candidate.read_bytes() == updatable.v2.read_bytes()
    assert app.steps[0] == "downloading"
    assert {"verifying", "restarting"} <= set(app.steps)
    assert app.steps[-1] == "restarting"
    reexec.prepared.discard()


@pytest.mark.slow
async def test_below_the_channels_minimum_it_says_so_and_upgrades_unasked(updatable, release_site):
    from tests.conftest import run_release_tool

    result = run_release_tool("min-supported", "--root", str(release_site.root), "--channel", "stable", "--key",
                              str(release_site.key), "2.0.0")
    assert result.returncode == 0, result.stderr
    app = RecordingApp(updatable)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        check_now(updatable)
        await wait_until(pilot, lambda: app.return_value is not None or "below" in screen_text(app), timeout=60)
        assert app.return_value is not None or "2.0.0" in screen_text(app)
        await wait_until(pilot, lambda: app.return_value is not None, timeout=120)  # nobody pressed u
    reexec = app.return_value
    assert isinstance(reexec, Reexec)
    assert reexec.prepared.candidate.read_bytes() == updatable.v2.read_bytes()
    reexec.prepared.discard()


@pytest.mark.slow
async def test_a_running_task_finishes_before_the_upgrade_and_counts_once(updatable, store, tmp_path):
    gate = tmp_path / "gate"  # the task ends only once the test has seen the upgrade wait for it
    script = (f"import json, os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
              "print(json.dumps({'type': 'result', 'total_cost_usd': 0.5, "
              "'usage': {'input_tokens': 7, 'output_tokens': 3}}))")
    task = store.add_task("slow", (sys.executable, "-c", script))
    app = RecordingApp(updatable)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: store.task(task.id).status == "running")
        check_now(updatable)
        await pilot.pause()
        await pilot.press("u")
        await wait_until(pilot, lambda: any(step.startswith("waiting for 1 task") for step in app.steps), 120)
        assert app.return_value is None and updatable.daemon.draining
        gate.touch()
        await wait_until(pilot, lambda: app.return_value is not None, timeout=60)
    finished = store.task(task.id)
    assert finished.status == "done"
    assert finished.usage == Usage(input_tokens=7, output_tokens=3, cost_usd=0.5)
    assert [t.id for t in store.tasks()] == [task.id]
    app.return_value.prepared.discard()


@pytest.mark.slow
async def test_a_failure_before_the_swap_keeps_the_old_version_with_the_error_on_screen(updatable, release_site):
    check_now(updatable)
    artifact = release_site.artifact("2.0.0")
    data = bytearray(artifact.read_bytes())
    data[100] ^= 1
    artifact.write_bytes(bytes(data))
    app = PilotApp(updatable)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("u")
        banner = app.query_one(Banner)
        await wait_until(pilot, lambda: banner.display and "Upgrade failed" in str(banner.content))
        assert "still running v1.0.0" in str(banner.content)
        assert "sha256" in str(banner.content)
        assert not app.query_one(UpgradeProgress).display
        assert app.query_one(UpdateNotice).display  # the offer stands; the user may retry
        assert not updatable.daemon.draining
        assert app.return_value is None
        assert not [p for p in updatable.updater.paths.install.parent.iterdir() if p.name != "pilot"]


async def test_the_footer_offers_u_only_when_an_upgrade_is_possible(runtime):
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "q Quit" in footer_text(app)
        assert "Upgrade" not in footer_text(app)
        runtime.installed_other = "2.0.0"  # what a check finds after a hand update
        app.post_message(CheckFinished())
        await wait_until(pilot, lambda: "u Upgrade" in footer_text(app))


async def test_u_without_an_update_says_it_was_not_checked_yet(runtime):
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("u")
        await pilot.pause()
        notice = app.query_one(UpdateNotice)
        assert notice.display and notice.has_class("quiet")
        assert str(notice.content) == "no update available (not checked yet)"
        assert "no update available (not checked yet)" in screen_text(app)
        assert not app.upgrading
        assert not app.query_one(UpgradeProgress).display
        assert app.is_running


async def test_u_without_an_update_gives_the_last_check_time_for_a_while(runtime, monkeypatch):
    from pilot.daemon.checker import CheckOutcome

    monkeypatch.setattr(app_module, "NOTE_SECONDS", 1.0)
    at = time.time() - 125
    runtime.outcome = CheckOutcome(at)  # checked, nothing newer
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        notice = app.query_one(UpdateNotice)
        assert not notice.display
        await pilot.press("u")
        await pilot.pause()
        checked = time.strftime("%H:%M:%S", time.localtime(at))
        assert str(notice.content) == f"no update available (last checked {checked})"
        assert notice.display
        await wait_until(pilot, lambda: not notice.display, timeout=10)  # the note passes


async def test_u_after_a_failed_check_says_the_check_failed(runtime):
    from pilot.daemon.checker import CheckOutcome

    runtime.outcome = CheckOutcome(time.time(), error="could not connect to 127.0.0.1:9 (connection refused)")
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("u")
        await pilot.pause()
        assert str(app.query_one(UpdateNotice).content) == (
            "no update available: the last check failed (could not connect to 127.0.0.1:9 (connection refused))")


async def test_a_stale_daemon_is_shown_from_the_start(hand_updatable):
    hand_updatable.updater.installed = "2.0.0"  # replaced by hand before this daemon's dashboard came up
    app = PilotApp(hand_updatable)
    async with app.run_test(size=SIZE) as pilot:
        notice = app.query_one(UpdateNotice)
        await wait_until(pilot, lambda: notice.display)  # no check has run: the start itself reads the install path
        assert hand_updatable.outcome is None
        assert str(notice.content) == "⬆ v2.0.0 is installed but this daemon runs v1.0.0 (press 'u' to restart)"
        assert notice.has_class("available")
        assert "⬆ v2.0.0 is installed but this daemon runs v1.0.0 (press 'u' to restart)" in screen_text(app)
        await wait_until(pilot, lambda: "u Upgrade" in footer_text(app))


async def test_u_finds_a_hand_update_made_since_the_last_check(hand_updatable):
    app = PilotApp(hand_updatable)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        hand_updatable.updater.installed = "2.0.0"
        await pilot.press("u")  # nothing was offered: this only looks again, and offers what it finds
        await pilot.pause()
        assert str(app.query_one(UpdateNotice).content).startswith("⬆ v2.0.0 is installed")
        assert not app.upgrading
        await wait_until(pilot, lambda: "u Upgrade" in footer_text(app))


async def test_a_failed_check_is_a_quiet_status(runtime):
    from pilot.daemon.checker import CheckOutcome

    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        runtime.outcome = CheckOutcome(time.time(), error="could not connect to 127.0.0.1:9 (connection refused)")
        app.post_message(CheckFinished())
        notice = app.query_one(UpdateNotice)
        await wait_until(pilot, lambda: notice.display)
        assert str(notice.content).startswith("update check failed: could not connect")
        assert notice.has_class("quiet")


async def test_banner_after_an_upgrade_commits_the_trial_boot(runtime, monkeypatch, tmp_path):
    build = {"product": "pilot", "version": "1.0.0", "python_tag": python_tag(), "platform_tag": platform_tag(),
             "build_id": "b" * 64, "trusted_keys": [], "threshold": 1}
    monkeypatch.setattr(sys.modules["__main__"], "PILOT_BUILD", build, raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(tmp_path / "pilot" / "__main__.py"), raising=False)
    from pilot.launcher import trial_path

    write_json(trial_path(), {
        "from_version": "0.9.0", "to_version": "1.0.0", "from_build_id": "a" * 64, "to_build_id": "b" * 64,
        "install_path": str(tmp_path / "pilot"), "backup_path": str(tmp_path / "pilot.backup"),
        "pid": os.getpid(), "started_at": time.time(), "deadline": time.time() + 60, "resume_argv": [],
    })
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one(Banner)
        await wait_until(pilot, lambda: banner.display)
        assert str(banner.content) == "✅ Upgraded from v0.9.0"
    from pilot.update import state

    assert not Path(trial_path()).exists()
    assert state.load().last.state == "committed"


async def test_banner_after_a_rollback(runtime):
    from pilot.launcher import state_path

    write_json(state_path(), {"notice_pending": True, "last": {
        "state": "rolled_back", "from_version": "1.0.0", "to_version": "1.1.0", "at": "2026-11-27T10:00:00Z",
        "reason": "1.1.0 it failed to start: RuntimeError: boom", "install_path": "x", "backup_path": "y"}})
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one(Banner)
        await wait_until(pilot, lambda: banner.display)
        assert str(banner.content) == "⚠ Rolled back from v1.1.0: 1.1.0 it failed to start: RuntimeError: boom"
        assert banner.has_class("rolled_back")


@pytest.mark.parametrize("key", ["q", "ctrl+q", "ctrl+c"])
async def test_every_quit_key_asks_once_while_tasks_run(runtime, store, isolated_home, key):
    sleeper(store)
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: runtime.daemon.running_count() == 1)
        await pilot.press(key)
        await pilot.pause()
        assert app.is_running
        assert str(app.query_one(Banner).content) == "1 task(s) running: press 'q' again to quit and cancel them"
        assert "1 task(s) running: press 'q' again to quit and cancel them" in screen_text(app)
        await pilot.press(key)
        await wait_until(pilot, lambda: not app.is_running)
    assert app.return_value is None
    runtime.shutdown()  # what `pilot start` does next: the task is stopped and recorded before the store closes
    with open_store(isolated_home, app_version="1.0.0") as reopened:
        (stopped,) = reopened.tasks()
    assert stopped.status in ("failed", "cancelled")
    assert "cancelled" in stopped.log_tail


async def test_textuals_own_quit_actions_ask_the_same_way(runtime, store):
    sleeper(store)
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: runtime.daemon.running_count() == 1)
        await app.run_action("help_quit")  # what Textual binds ctrl+c to by default
        await pilot.pause()
        assert app.is_running and app.quit_armed
        await app.run_action("quit")  # what the command palette's Quit runs
        await wait_until(pilot, lambda: not app.is_running)
    runtime.shutdown()


async def test_a_quit_question_lapses_and_the_banner_comes_back(runtime, store, monkeypatch):
    monkeypatch.setattr(app_module, "QUIT_CONFIRM_SECONDS", 1.0)
    sleeper(store)
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: runtime.daemon.running_count() == 1)
        app.set_banner("upgraded", "✅ Upgraded from v0.9.0")
        await pilot.press("ctrl+q")
        banner = app.query_one(Banner)
        assert "press 'q' again" in str(banner.content)
        await wait_until(pilot, lambda: str(banner.content) == "✅ Upgraded from v0.9.0", timeout=10)
        await pilot.press("q")  # asks again: the earlier question has lapsed
        await pilot.pause()
        assert app.is_running
        assert "press 'q' again" in str(banner.content)
    runtime.shutdown()


@pytest.mark.parametrize("key", ["q", "ctrl+q", "ctrl+c"])
async def test_a_quit_key_quits_at_once_when_nothing_runs(runtime, key):
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press(key)
        await wait_until(pilot, lambda: not app.is_running, timeout=10)
    assert app.return_value is None


async def test_a_stop_signal_quits_at_once_while_tasks_run(runtime, store):
    sleeper(store)
    before = signal.getsignal(signal.SIGTERM)
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: runtime.daemon.running_count() == 1)
        assert signal.getsignal(signal.SIGTERM) is not before  # the dashboard took SIGTERM: it cannot end pytest
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(pilot, lambda: not app.is_running, timeout=10)
    assert not app.quit_armed  # nobody was asked
    assert app.return_value is None
    assert runtime.stopping.is_set() and runtime.stop_signal == signal.SIGTERM  # the exit status will say so
    runtime.shutdown()


async def test_a_stop_noted_while_the_dashboard_started_ends_it_once_its_start_is_confirmed(runtime, monkeypatch):
    """`pilot start --dashboard` stopped while it starts, or while it restarts into a new version: the
    signal was noted before the dashboard took SIGTERM; it leaves after committing the start, unasked."""
    committed = []
    monkeypatch.setattr(runtime, "main_loop_up", lambda: committed.append(True))
    runtime.signal_received(signal.SIGTERM)
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: not app.is_running, timeout=10)
    assert committed == [True]
    assert app.return_value is None and not app.quit_armed
    assert runtime.stopping.is_set() and runtime.stop_signal == signal.SIGTERM
    assert not runtime.cancel_now.is_set()  # one stop: a drain, not the cancel a second one asks for
    runtime.shutdown()


# -- TASKS and METRICS -----------------------------------------------------------------------


def make_task(task_id: int, status: str, *, log_tail: str = "", exit_code: int | None = None,
              failure_reason: str | None = None) -> Task:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return Task(id=task_id, title=f"task {task_id}", command=("true",), status=status, created_at=now,
                started_at=now, ended_at=None, exit_code=exit_code, log_tail=log_tail,
                failure_reason=failure_reason)


def test_a_failure_reason_is_the_tasks_own_else_the_last_line_of_its_output():
    assert failure_reason(make_task(1, "failed", log_tail="boom\n", failure_reason="exit status 2")) == "exit status 2"
    assert failure_reason(make_task(2, "failed", log_tail="step 1\nerror: 3 tests failed\n\n")) == (
        "error: 3 tests failed")
    assert failure_reason(make_task(3, "interrupted", log_tail="x\n[interrupted: the daemon stopped]\n")) == (
        "interrupted: the daemon stopped")
    assert failure_reason(make_task(4, "failed", log_tail='{"type": "result"}\n', exit_code=2)) == "exit status 2"
    assert failure_reason(make_task(5, "failed", exit_code=None)) == "failed"
    assert failure_reason(make_task(6, "cancelled", log_tail="cancelled\n")) == "cancelled"
    assert failure_reason(make_task(7, "done", log_tail="all good\n", exit_code=0)) is None
    assert failure_reason(make_task(8, "running", log_tail="working\n")) is None


def test_fit_cuts_at_a_space_with_an_ellipsis():
    assert fit("write the release notes", 30) == "write the release notes"
    assert fit("write the release notes for the next version", 20) == "write the release…"
    assert fit("supercalifragilistic", 10) == "supercali…"
    assert fit("two\nlines", 20) == "two lines"


def test_metrics_break_the_task_counts_between_items_to_fit():
    from types import SimpleNamespace

    usage = Usage(input_tokens=1_234_567, output_tokens=456_789, cache_read_tokens=345_678_901,
                  cache_write_tokens=12_345_678, cost_usd=1234.5678)
    totals = SimpleNamespace(usage=usage, done=1234, failed=12, queued=10, running=2, interrupted=1, cancelled=3)
    width = 72  # METRICS' content at 80 columns
    lines = Metrics.lines(totals, width)
    assert all(len(line) <= width for line in lines), lines
    assert len(lines) == 4  # the task counts took two lines
    counts = " ".join(" ".join(lines[2:]).split())
    assert counts == "Tasks 2 running 10 queued 1,234 done 12 failed 3 cancelled 1 interrupted"
    assert Metrics.lines(Totals(usage=Usage(), done=1, failed=0, queued=0, running=0, interrupted=0), width)[2] \
        .split() == ["Tasks", "0", "running", "0", "queued", "1", "done", "0", "failed"]


async def test_a_failed_task_shows_its_reason_in_tasks(runtime, store):
    fallback = store.add_task("fix the flaky test", ("true",))
    store.claim_next_task(runtime.session.id)
    store.append_log(fallback.id, "running tests\nerror: 3 tests failed\n")
    store.finish_task(fallback.id, exit_code=2, failed=True)
    own = store.add_task("summarise the logs", ("claude",))
    store.claim_next_task(runtime.session.id)
    store.append_log(own.id, "cannot run 'claude': not found; set daemon.executor in config.yaml\n")
    store.finish_task(own.id, exit_code=None, failed=True, failure_reason="cannot run 'claude': not found")
    done = store.add_task("write the release notes", ("true",))
    store.claim_next_task(runtime.session.id)
    store.append_log(done.id, "all good\n")
    store.finish_task(done.id, exit_code=0, failed=False)
    runtime.daemon.drain()
    store.request_cancel(store.add_task("never mind", ("true",)).id)
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        lines = [line.strip(" │") for line in screen_text(app).splitlines()]
    assert "↳ error: 3 tests failed" in lines
    assert "↳ cannot run 'claude': not found" in lines
    assert not any("all good" in line for line in lines)
    assert any("cancelled  never mind" in line for line in lines)
    assert "↳ cancelled" not in lines  # the status says it already
    below = lines.index(next(line for line in lines if "fix the flaky test" in line)) + 1
    assert lines[below] == "↳ error: 3 tests failed"


async def test_the_cursor_stays_on_its_task_when_the_table_changes(runtime, store):
    from pilot.dashboard.widgets import TaskTable

    runtime.daemon.drain()  # nothing starts: the test changes the table itself
    for title in ("one", "two", "three"):
        store.add_task(title, ("true",))
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        table = app.query_one(TaskTable)
        await pilot.press("down")
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == "2"
        store.add_task("four", ("true",))  # a new row on top
        await wait_until(pilot, lambda: table.row_count == 4)
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == "2"
        assert table.cursor_row == 2


# -- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_layout_snapshot(runtime, store, size):
    """A daily screen: a stale-daemon offer, a running task, two failures with their reasons, a cancelled
    task (its status says it all), history."""
    runtime.version = "1.0.0"
    runtime.installed_other = "1.1.0"
    done = store.add_task("write the release notes", ("true",))
    store.claim_next_task(runtime.session.id)
    store.add_task_usage(done.id, Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=9_000,
                                        cache_write_tokens=100, cost_usd=0.0421))
    store.finish_task(done.id, exit_code=0, failed=False)
    failed = store.add_task("fix the flaky test in the rollback path of the update engine", ("true",))
    store.claim_next_task(runtime.session.id)
    store.add_task_usage(failed.id, Usage(input_tokens=3_210, output_tokens=45, cost_usd=0.0093))
    store.finish_task(failed.id, exit_code=2, failed=True, failure_reason="exit status 2")
    missing = store.add_task("summarise yesterday's logs", None)
    store.claim_next_task(runtime.session.id)
    store.finish_task(missing.id, exit_code=None, failed=True,
                      failure_reason="cannot run 'claude': not found; set daemon.executor in config.yaml")
    running = store.add_task("refactor the store", ("true",))
    store.claim_next_task(runtime.session.id)  # running as far as the store knows; no process needed
    store.add_task_usage(running.id, Usage(input_tokens=800, output_tokens=66, cost_usd=0.0075))
    runtime.daemon.drain()  # keep the table still: nothing new starts while the snapshot is taken
    store.add_task("queued work", ("true",))
    store.request_cancel(store.add_task("try the other approach", ("true",)).id)  # cancelled before it started
    app = PilotApp(runtime)
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.3)
        text = re.sub(r"pid \d+", "pid <pid>", screen_text(app))
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    snapshot = SNAPSHOTS / f"layout-{size[0]}x{size[1]}.txt"
    if os.environ.get("PILOT_UPDATE_SNAPSHOTS"):
        snapshot.parent.mkdir(exist_ok=True)
        snapshot.write_text(text)
    assert text == snapshot.read_text(), "the layout changed: rerun with PILOT_UPDATE_SNAPSHOTS=1 if intended"
