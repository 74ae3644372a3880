"""The dashboard driven with Textual's own test pilot: notice, `u`, progress, banners, layout.

The update side is real: a v2 archive published to a release tree on 127.0.0.1, checked
and prepared (download, signature, sha256, self-test) by the same Updater self-update uses.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from pilot.buildinfo import BuildInfo, TrustedKey, platform_tag, python_tag
from pilot.config import load_config
from pilot.daemon.runtime import Reexec, Runtime
from pilot.dashboard.app import CheckFinished, PilotApp, UpgradeStep
from pilot.dashboard.widgets import Banner, UpdateNotice, UpgradeProgress
from pilot.launcher import write_json
from pilot.state.models import Usage
from pilot.state.store import open_store

SNAPSHOT = Path(__file__).with_name("snapshots") / "layout.txt"
SIZE = (100, 30)


def screen_text(app: PilotApp) -> str:
    """The screen as plain text, rendered the way App.export_screenshot renders it."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


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


@pytest.mark.slow
async def test_notice_u_progress_and_reexec(updatable):
    app = RecordingApp(updatable)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        notice = app.query_one(UpdateNotice)
        assert not notice.display
        check_now(updatable)
        await wait_until(pilot, lambda: notice.display)
        assert str(notice.content) == "⬆ Update available: v2.0.0 (press 'u' to upgrade)"

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


async def test_u_without_an_update_does_nothing(runtime):
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("u")
        await pilot.pause()
        assert not app.upgrading
        assert not app.query_one(UpgradeProgress).display
        assert app.is_running


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


async def test_quit_asks_again_while_tasks_run(runtime, store, isolated_home):
    store.add_task("sleeper", (sys.executable, "-c", "import time; time.sleep(30)"))
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: runtime.daemon.running_count() == 1)
        await pilot.press("q")
        await pilot.pause()
        assert app.is_running
        assert "press 'q' again" in str(app.query_one(Banner).content)
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running)
    runtime.close()  # what `pilot start` does next: the task is stopped and recorded before the store closes
    with open_store(isolated_home, app_version="1.0.0") as reopened:
        (stopped,) = reopened.tasks()
    assert stopped.status == "failed"
    assert "cancelled" in stopped.log_tail


async def test_layout_snapshot(runtime, store):
    done = store.add_task("write the release notes", ("true",))
    claimed = store.claim_next_task(runtime.session.id)
    store.add_task_usage(claimed.id, Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=9_000,
                                           cache_write_tokens=100, cost_usd=0.0421))
    store.finish_task(done.id, exit_code=0, failed=False)
    runtime.daemon.drain()  # keep the table still: nothing new starts while the snapshot is taken
    store.add_task("queued work", ("true",))
    app = PilotApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        text = re.sub(r"pid \d+", "pid <pid>", screen_text(app))
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    if os.environ.get("PILOT_UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), "the layout changed: rerun with PILOT_UPDATE_SNAPSHOTS=1 if intended"
