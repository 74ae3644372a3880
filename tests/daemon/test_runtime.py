"""The runtime's stop and its log lines, in process: drain, cancel, the dashboard's quit, checks and upgrades."""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from pilot.config import load_config
from pilot.daemon import lifecycle, logs
from pilot.daemon.checker import CheckOutcome
from pilot.daemon.runtime import Runtime, check_line
from pilot.errors import UpdateError
from pilot.state import open_store

SLEEP = (sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)")
QUICK = (sys.executable, "-c", "import time; print('up', flush=True); time.sleep(2)")


@pytest.fixture
def runtime(isolated_home):
    store = open_store(isolated_home, app_version="1.0.0")
    config = load_config()
    made = Runtime(replace(config, daemon=replace(config.daemon, drain_timeout=30.0)), store)
    yield made
    if not made.store._closed:
        made.store.close()


def run_until_up(runtime: Runtime, command: tuple[str, ...]) -> int:
    task_id = runtime.store.add_task("job", command).id
    runtime.daemon.poll()
    deadline = time.monotonic() + 10
    while "up" not in runtime.store.task(task_id).log_tail:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return task_id


def status_of(runtime: Runtime, task_id: int):
    with open_store(runtime.config.home, app_version="1.0.0") as store:
        return store.task(task_id)


def test_a_stop_signal_drains_a_task_that_ends_in_time_and_exits_zero(runtime):
    task_id = run_until_up(runtime, QUICK)
    runtime.request_stop(signal.SIGTERM)
    assert runtime.shutdown() == 0
    assert status_of(runtime, task_id).status == "done"
    assert runtime.last_stop == lifecycle.StopSummary("SIGTERM", 1, 0, 0, 0)
    assert runtime.store._closed


def test_past_the_drain_timeout_tasks_are_cancelled_and_the_exit_status_is_128_plus_the_signal(runtime):
    runtime.config = replace(runtime.config, daemon=replace(runtime.config.daemon, drain_timeout=0.5))
    task_id = run_until_up(runtime, SLEEP)
    runtime.request_stop(signal.SIGHUP)
    assert runtime.shutdown() == 128 + signal.SIGHUP
    ended = status_of(runtime, task_id)
    assert (ended.status, ended.failure_reason) == ("cancelled", lifecycle.drain_timeout_reason(0.5))


def test_a_second_request_cancels_at_once(runtime):
    task_id = run_until_up(runtime, SLEEP)
    runtime.request_stop(signal.SIGINT)
    runtime.request_stop(signal.SIGTERM)  # the first signal is the one the exit status names
    began = time.monotonic()
    assert runtime.shutdown() == 128 + signal.SIGINT
    assert time.monotonic() - began < 5
    assert status_of(runtime, task_id).failure_reason == lifecycle.STOPPED_AGAIN


def test_a_signal_handler_only_notes_the_signal_and_the_loop_turns_it_into_a_request(runtime):
    runtime.signal_received(signal.SIGINT)
    assert not runtime.stopping.is_set()  # no Event is touched in the handler: it could hold that Event's lock
    assert runtime.cancelled()  # an upgrade under way already sees it
    runtime.take_signals()
    assert runtime.stopping.is_set() and not runtime.cancel_now.is_set()
    runtime.signal_received(signal.SIGTERM)
    runtime.take_signals()
    assert runtime.cancel_now.is_set() and runtime.stop_signal == signal.SIGINT
    assert runtime.cancel_reason == lifecycle.STOPPED_AGAIN


def test_the_dashboards_quit_without_a_signal_cancels_at_once_and_exits_zero(runtime):
    task_id = run_until_up(runtime, SLEEP)
    assert runtime.shutdown() == 0
    assert status_of(runtime, task_id).failure_reason == lifecycle.DASHBOARD_QUIT
    assert runtime.last_stop.cause == "quit"


def test_a_dashboard_can_ask_to_drain_or_to_cancel_with_its_own_reason(runtime):
    task_id = run_until_up(runtime, SLEEP)
    runtime.request_stop(cancel=True, reason="cancelled: quit from the dashboard")
    assert runtime.shutdown() == 0
    assert status_of(runtime, task_id).failure_reason == "cancelled: quit from the dashboard"


def test_pilot_stop_cancel_running_is_read_from_the_session(runtime):
    task_id = run_until_up(runtime, SLEEP)
    with open_store(runtime.config.home, app_version="1.0.0") as other:
        assert other.request_session_cancel(runtime.session.pid) == 1
    runtime.request_stop(signal.SIGTERM)
    assert runtime.shutdown() == 128 + signal.SIGTERM
    assert status_of(runtime, task_id).failure_reason == lifecycle.CANCEL_RUNNING


def outcome(result=None, error=None, retry_after=None) -> CheckOutcome:
    return CheckOutcome(at=0.0, result=result, error=error, retry_after=retry_after)


def choice(version: str):
    return SimpleNamespace(release=SimpleNamespace(version=version))


def checked(choice=None, *, standing: str | None = None, required: bool = False) -> SimpleNamespace:
    """A CheckResult's face: what the runtime reads of one."""
    return SimpleNamespace(choice=choice, required=required,
                           standing_line=lambda how="with `pilot self-update`": standing and f"{standing} {how}")


def test_every_update_check_outcome_is_one_log_line():
    assert check_line(outcome(result=SimpleNamespace(choice=None)), "1.0.0", None, None) == (
        "update check: up to date (1.0.0)")
    assert check_line(outcome(), "1.0.0", choice("1.5.0"), None) == "update check: 1.5.0 is available (running 1.0.0)"
    assert check_line(outcome(error="cannot reach releases.example.org: timed out"), "1.0.0", None, None) == (
        "update check failed: cannot reach releases.example.org: timed out")
    assert check_line(outcome(error="HTTP 429", retry_after=120.0), "1.0.0", None, None) == (
        "update check failed: HTTP 429; the server asked to wait 120 s (Retry-After)")
    assert check_line(outcome(), "1.0.0", None, "1.2.0") == (
        "update check: pilot 1.2.0 is installed; this daemon (1.0.0) restarts into it")


def test_the_runtime_logs_each_check_and_why_a_notification_was_not_sent(runtime, caplog):
    caplog.set_level(logging.INFO)
    runtime._on_check(outcome(result=checked(choice("1.5.0"))))
    runtime._on_check(outcome(error="HTTP 503", retry_after=30.0))
    assert [r.getMessage() for r in caplog.records] == [
        f"update check: 1.5.0 is available (running {runtime.version})",
        "update_available notification not sent: notifications are off (upgrade.notify_channel: none)",
        "update check failed: HTTP 503; the server asked to wait 30 s (Retry-After)",
    ]


def test_an_upgrade_logs_each_new_step_once_and_how_it_failed(runtime, caplog):
    caplog.set_level(logging.INFO)
    seen = []
    runtime.outcome = outcome(result=checked(choice("2.0.0")))

    class Engine:
        def begin(self):
            return SimpleNamespace(prepare=prepare, close=lambda: None)

        def installed_version(self):
            return runtime.version

    def prepare(choice, progress, on_step, cancelled, on_note):
        for step in ("downloading", "downloading"):
            on_step(step)
        on_note("downloaded 21 KB of 14.6 MB (delta)")
        for step in ("verifying", "self-test"):
            on_step(step)
        raise UpdateError("the new archive failed its self-test")

    runtime.updater = Engine()
    with pytest.raises(UpdateError):
        runtime.prepare_upgrade(on_step=seen.append, on_progress=lambda *_: None, ask_to_keep_waiting=lambda n: True,
                                cancelled=lambda: False)
    # the caller (the dashboard) sees every one, and how the download went
    assert seen == ["downloading", "downloading", "downloaded 21 KB of 14.6 MB (delta)", "verifying", "self-test"]
    assert [r.getMessage() for r in caplog.records] == [
        "upgrade to 2.0.0: downloading", "upgrade to 2.0.0: downloaded 21 KB of 14.6 MB (delta)",
        "upgrade to 2.0.0: verifying", "upgrade to 2.0.0: self-test",
        f"upgrade to 2.0.0 failed, still running {runtime.version}: the new archive failed its self-test"]


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_the_dashboards_log_goes_to_the_file_only_and_headless_to_stderr_too(tmp_path, capsys, root_logging):
    logs.configure_logging(tmp_path / "a", to_stderr=False)
    logging.getLogger("pilot").info("only in the file")
    assert capsys.readouterr().err == ""
    assert "INFO only in the file" in logs.log_path(tmp_path / "a").read_text()
    logs.configure_logging(tmp_path / "b", to_stderr=True)
    logging.getLogger("pilot").warning("on both")
    assert "WARNING on both" in capsys.readouterr().err
    assert "WARNING on both" in logs.log_path(tmp_path / "b").read_text()


def test_pilot_log_is_rotated_by_size_keeping_three_old_files(tmp_path, monkeypatch, root_logging):
    assert (logs.MAX_BYTES, logs.BACKUPS) == (5 * 1024 * 1024, 3)
    monkeypatch.setattr(logs, "MAX_BYTES", 2000)
    logs.configure_logging(tmp_path, to_stderr=False)
    for index in range(200):
        logging.getLogger("pilot").info("line %03d %s", index, "x" * 50)
    names = sorted(path.name for path in logs.log_path(tmp_path).parent.iterdir())
    assert names == ["pilot.log", "pilot.log.1", "pilot.log.2", "pilot.log.3"]
    assert "line 199" in logs.log_path(tmp_path).read_text()
    assert all(path.stat().st_size <= 2000 for path in logs.log_path(tmp_path).parent.iterdir())
