"""The application side of the boot sentinel (pilot.update.sentinel): trial records, commit, notices, the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pilot.buildinfo import BuildInfo
from pilot.errors import UpdateError
from pilot.launcher import UpdateLock, read_json, state_path, trial_path, write_json
from pilot.update import sentinel

REPO = Path(__file__).resolve().parents[2]


def build(build_id: str = "new-build", version: str = "2.0.0") -> BuildInfo:
    return BuildInfo(version=version, python_tag="cp311", platform_tag="linux_x86_64", build_id=build_id,
                     archive=Path("/opt/pilot/pilot"), trusted_keys=(), threshold=1, source_commit=None,
                     manifest_url=None)


TRIAL = sentinel.Trial(
    from_version="1.0.0", to_version="2.0.0", from_build_id="old-build", to_build_id="new-build",
    install_path=Path("/opt/pilot/pilot"), backup_path=Path("/opt/pilot/pilot.backup"),
    resume_argv=("self-update", "--after-restart"),
)


@pytest.fixture(autouse=True)
def alarm_guard():
    """commit_boot disarms SIGALRM and resets its handler; pytest-timeout uses both."""
    handler = signal.getsignal(signal.SIGALRM)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, handler)


def test_open_trial_records_this_process_with_its_one_attempt_spent(monkeypatch):
    monkeypatch.setenv("PILOT_BOOT_TIMEOUT", "42")
    before = time.time()
    record = sentinel.open_trial(TRIAL)
    assert read_json(trial_path()) == record
    assert record["pid"] == os.getpid()
    assert record["attempts_left"] == 0
    assert before <= record["started_at"] <= time.time()
    assert record["deadline"] == pytest.approx(record["started_at"] + 42, abs=1)
    assert record["from_version"] == "1.0.0" and record["to_version"] == "2.0.0"
    assert record["from_build_id"] == "old-build" and record["to_build_id"] == "new-build"
    assert record["install_path"] == "/opt/pilot/pilot" and record["backup_path"] == "/opt/pilot/pilot.backup"
    assert record["resume_argv"] == ["self-update", "--after-restart"]


def test_boot_timeout_defaults_to_the_launcher_constant(monkeypatch):
    monkeypatch.delenv("PILOT_BOOT_TIMEOUT", raising=False)
    record = sentinel.open_trial(TRIAL)
    assert record["deadline"] - record["started_at"] == pytest.approx(60, abs=1)


def test_commit_boot_commits_the_owning_process_on_the_new_build():
    record = sentinel.open_trial(TRIAL)
    signal.alarm(30)  # what self-update arms before its exec
    assert sentinel.commit_boot(build()) == record
    assert not os.path.exists(trial_path())
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    state = sentinel.load_state()
    assert state["last"]["state"] == "committed"
    assert (state["last"]["from_version"], state["last"]["to_version"]) == ("1.0.0", "2.0.0")
    assert state["notice_pending"] is True
    assert "bad_versions" not in state


@pytest.mark.parametrize("who", ["no build", "old build", "other pid"])
def test_commit_boot_leaves_a_trial_that_is_not_this_process_s(who):
    record = sentinel.open_trial(TRIAL)
    if who == "other pid":
        record = dict(record, pid=os.getpid() + 1)
        write_json(trial_path(), record)
    running = {"no build": None, "old build": build("old-build", "1.0.0"), "other pid": build()}[who]
    assert sentinel.commit_boot(running) is None
    assert read_json(trial_path()) == record
    assert sentinel.load_state() == {}


def test_commit_boot_without_a_trial_is_none():
    assert sentinel.commit_boot(build()) is None
    assert not os.path.exists(state_path())


def test_take_notice_returns_the_last_outcome_once():
    sentinel.open_trial(TRIAL)
    sentinel.commit_boot(build())
    last = sentinel.load_state()["last"]
    assert sentinel.take_notice() == last
    assert sentinel.take_notice() is None
    assert sentinel.load_state()["notice_pending"] is False
    assert sentinel.load_state()["last"] == last  # told, not forgotten


def test_take_notice_with_no_state_or_no_outcome_is_none():
    assert sentinel.take_notice() is None
    sentinel.save_state({"notice_pending": True})
    assert sentinel.take_notice() is None


def test_record_installed_needs_no_notice():
    sentinel.record_installed(TRIAL)
    state = sentinel.load_state()
    assert state["last"]["state"] == "installed" and state["notice_pending"] is False
    assert sentinel.take_notice() is None


def test_a_torn_state_file_loads_as_empty():
    os.makedirs(os.path.dirname(state_path()))
    Path(state_path()).write_text('{"last": ')
    assert sentinel.load_state() == {}


def test_exclusive_update_refuses_while_another_process_holds_the_lock():
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pilot.launcher import UpdateLock\n"
                               "with UpdateLock():\n    print('held', flush=True)\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        entered = []
        with pytest.raises(UpdateError) as raised, sentinel.exclusive_update():
            entered.append(1)
        assert entered == []
        assert raised.value.message == "another update is running"
        assert raised.value.exit_code == 3
        assert UpdateLock._depth == 0
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with sentinel.exclusive_update():
        assert UpdateLock._depth == 1
    assert UpdateLock._depth == 0


def test_exclusive_update_releases_the_lock_when_the_update_fails():
    with pytest.raises(RuntimeError), sentinel.exclusive_update():
        raise RuntimeError("download failed")
    assert UpdateLock._depth == 0 and UpdateLock._fd is None


def rolled_back_state() -> dict:
    record = {"from_version": "1.0.0", "to_version": "2.0.0", "install_path": "/opt/pilot/pilot",
              "backup_path": "/opt/pilot/pilot.backup"}
    return sentinel.record_outcome({}, record, "rolled_back", "2.0.0 it failed to start: RuntimeError: boom")


def test_rollback_notice_is_one_line_given_once():
    assert sentinel.rollback_notice() is None  # no state file: one stat, nothing to say
    sentinel.save_state(rolled_back_state())
    notice = sentinel.rollback_notice()
    assert notice.startswith("pilot: rolled back from 2.0.0 to 1.0.0: 2.0.0 it failed to start")
    assert "\n" not in notice
    assert sentinel.rollback_notice() is None
    assert sentinel.load_state()["bad_versions"] == ["2.0.0"]


def test_rollback_notice_says_nothing_about_other_outcomes():
    sentinel.open_trial(TRIAL)
    sentinel.commit_boot(build())
    assert sentinel.rollback_notice() is None
    assert sentinel.load_state()["notice_pending"] is True  # left for whoever reports commits
