"""The application side of the boot sentinel (pilot.update.sentinel): opening, committing and settling trials."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pilot.buildinfo import BuildInfo
from pilot.launcher import read_json, trial_path, write_json
from pilot.update import sentinel, state

REPO = Path(__file__).resolve().parents[2]
ARGV = ("self-update", "--after-restart")
pytestmark = pytest.mark.usefixtures("alarm_guard")  # commit_boot disarms SIGALRM and resets its handler


def build(build_id: str = "new-build", version: str = "2.0.0") -> BuildInfo:
    return BuildInfo(version=version, python_tag="cp311", platform_tag="linux_x86_64", build_id=build_id,
                     archive=Path("/opt/pilot/pilot"), trusted_keys=(), threshold=1, source_commit=None,
                     manifest_url=None)


TRIAL = sentinel.trial(
    from_version="1.0.0", to_version="2.0.0", from_build_id="old-build", to_build_id="new-build",
    install_path=Path("/opt/pilot/pilot"), backup_path=Path("/opt/pilot/pilot.backup"),
)


@pytest.fixture
def running_new(monkeypatch):
    """This test process plays the new version's boot (what current_build() would say inside the archive)."""
    monkeypatch.setattr(sentinel, "current_build_id", lambda: build().build_id)


def test_a_trial_for_an_exec_names_this_process_and_a_deadline(monkeypatch):
    monkeypatch.setenv("PILOT_BOOT_TIMEOUT", "42")
    before = time.time()
    record = sentinel.open_trial(TRIAL, exec_argv=ARGV)
    assert read_json(trial_path()) == record
    assert record["pid"] == record["opened_by"] == os.getpid()
    assert record["booted"] is False
    assert before <= record["started_at"] <= time.time()
    assert record["deadline"] == pytest.approx(record["started_at"] + 42, abs=1)
    assert record["resume_argv"] == list(ARGV)
    assert (record["from_version"], record["to_version"]) == ("1.0.0", "2.0.0")
    assert (record["from_build_id"], record["to_build_id"]) == ("old-build", "new-build")
    assert (record["install_path"], record["backup_path"]) == ("/opt/pilot/pilot", "/opt/pilot/pilot.backup")


@pytest.mark.parametrize("timeout, seconds", [("90s", 90), ("2m", 120), ("", 60), ("soon", 60)])
def test_the_deadline_takes_every_duration_form_and_never_fails(monkeypatch, timeout, seconds):
    """A bad PILOT_BOOT_TIMEOUT is refused by the updater before it downloads; here it may not fail."""
    monkeypatch.setenv("PILOT_BOOT_TIMEOUT", timeout)
    record = sentinel.open_trial(TRIAL, exec_argv=ARGV)
    assert record["deadline"] - record["started_at"] == pytest.approx(seconds, abs=1)


def test_a_pending_trial_names_no_process_for_the_next_start_to_claim():
    record = sentinel.open_trial(TRIAL, exec_argv=None)
    assert (record["pid"], record["deadline"], record["booted"], record["resume_argv"]) == (None, None, False, [])


def test_commit_boot_commits_the_owning_process_on_the_new_build():
    record = sentinel.open_trial(TRIAL, exec_argv=ARGV)
    signal.alarm(30)  # what self-update arms before its exec
    assert sentinel.commit_boot(build()) == record
    assert not os.path.exists(trial_path())
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    known = state.load()
    assert (known.last.state, known.last.from_version, known.last.to_version) == ("committed", "1.0.0", "2.0.0")
    assert known.notice_pending is True
    assert known.bad_versions == ()


@pytest.mark.parametrize("who", ["no build", "old build", "other pid"])
def test_commit_boot_leaves_a_trial_that_is_not_this_process_s(who):
    record = sentinel.open_trial(TRIAL, exec_argv=ARGV)
    if who == "other pid":
        record = dict(record, pid=os.getpid() + 1)
        write_json(trial_path(), record)
    running = {"no build": None, "old build": build("old-build", "1.0.0"), "other pid": build()}[who]
    assert sentinel.commit_boot(running) is None
    assert read_json(trial_path()) == record
    assert state.load().last is None


def test_commit_boot_without_a_trial_is_none():
    assert sentinel.commit_boot(build()) is None
    assert state.load().last is None


@pytest.mark.parametrize("command, commits", [("status", True), ("self-update", True), (None, True),
                                              ("start", False)])
def test_every_command_but_start_confirms_its_start_once_parsed(running_new, command, commits):
    sentinel.open_trial(TRIAL, exec_argv=ARGV)
    sentinel.confirm_start(command)
    assert os.path.exists(trial_path()) is not commits


def test_a_committed_version_is_neither_bad_nor_declined_any_more():
    state.record({**TRIAL}, "rolled_back", "it hung")
    state.record({**TRIAL, "from_version": "2.0.0", "to_version": "1.0.0"}, "rolled_back_by_user")
    assert state.load().skipped_versions == ("2.0.0",)
    sentinel.open_trial(TRIAL, exec_argv=ARGV)
    sentinel.commit_boot(build())
    assert state.load().skipped_versions == ()


# --------------------------------------------------------------------------- settle_boot


def claimed_trial() -> dict:
    """A trial that the user's own command claimed (after --no-restart): it was opened by another process."""
    record = dict(sentinel.open_trial(TRIAL, exec_argv=None), pid=os.getpid(), booted=True,
                  deadline=time.time() + 60, opened_by=os.getpid() + 1)
    write_json(trial_path(), record)
    return record


@pytest.mark.parametrize("ending", ["interrupted", "output"])
@pytest.mark.parametrize("how", ["exec", "claim"])
def test_an_interrupt_or_unwritable_output_hands_the_trial_back(running_new, ending, how):
    if how == "exec":
        sentinel.open_trial(TRIAL, exec_argv=ARGV)
    else:
        claimed_trial()
    sentinel.settle_boot(ending, "whatever happened")
    record = read_json(trial_path())
    assert (record["pid"], record["booted"], record["deadline"]) == (None, False, None)
    assert "failure" not in record
    assert state.load().bad_versions == ()


def test_a_refusal_in_the_user_s_own_first_command_hands_the_trial_back(running_new):
    claimed_trial()
    sentinel.settle_boot("refused", "a Pilot daemon is already running")
    assert read_json(trial_path())["pid"] is None


@pytest.mark.parametrize("ending", ["refused", "exited", "error"])
def test_the_exec_after_an_update_that_does_not_come_up_has_failed(running_new, ending):
    """The exec re-runs the very command the old version ran a moment ago: a refusal there is the new version's."""
    sentinel.open_trial(TRIAL, exec_argv=ARGV)
    sentinel.settle_boot(ending, "the database schema is too new")
    record = read_json(trial_path())
    assert record["pid"] == os.getpid()  # still ours: the boot guard rolls back with the reason below
    assert record["failure"] == "did not start: the database schema is too new"


def test_settle_boot_leaves_another_process_s_trial_alone(running_new):
    record = dict(sentinel.open_trial(TRIAL, exec_argv=ARGV), pid=os.getpid() + 1)
    write_json(trial_path(), record)
    sentinel.settle_boot("interrupted", "")
    assert read_json(trial_path()) == record


def test_void_trial_drops_only_the_record_it_opened():
    mine = sentinel.open_trial(TRIAL, exec_argv=ARGV)
    newer = dict(mine, started_at=mine["started_at"] + 1)
    write_json(trial_path(), newer)
    sentinel.void_trial(mine)
    assert read_json(trial_path()) == newer
    sentinel.void_trial(newer)
    assert not os.path.exists(trial_path())
