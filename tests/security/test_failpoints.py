"""Failpoints: each named once in the code, inert unset, SIGKILL when set; and the end state after each.

SIGKILL at every named step of an update and a boot, then the next plain start: what is left must work.
For each failpoint (pilot.launcher.FAILPOINTS) a real v1 install with a task in its SQLite
state runs `PILOT_FAILPOINT=<name> pilot self-update --yes` against a real loopback server
and dies at that step. Then, with plain starts only: the install path holds a complete
archive, byte-identical to v1 or v2, that runs and says so; the update state agrees with it
(committed <-> new; none, failed or rolled back <-> old); the task is still listed. Finally
the next update sweeps whatever temp files the killed one left and ends cleanly.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import zipfile

import pytest

from pilot import cli
from pilot.launcher import FAILPOINT_ENV, FAILPOINTS, boot_decision, failpoint
from tests.e2e.conftest import BROKEN, sha256
from tests.support.archives import REPO

slow = pytest.mark.slow

OLD, NEW = "pilot 1.0.0", "pilot 2.0.0"

# failpoint -> (version after the next start, state it records, what a retried update ends with)
UPDATE_POINTS = {
    "after-download": (OLD, "none", NEW),
    "after-preflight": (OLD, "none", NEW),
    "after-trial-open": (OLD, "failed", NEW),          # the guard voids the trial: nothing was swapped
    "after-backup": (OLD, "failed", NEW),
    "after-rename": (NEW, "committed", NEW),           # the updater died, not the new version: its first
    "before-exec": (NEW, "committed", NEW),            # start claims the trial and proves it starts
    "boot-trial-start": (OLD, "rolled_back", OLD),     # the new version's own start died: back to v1,
    "boot-before-commit": (OLD, "rolled_back", OLD),   # and 2.0.0 is skipped from then on
    "boot-after-commit": (NEW, "committed", NEW),
}


def recovered(name: str):
    return pytest.mark.threat("failpoint", name, defence=FAILPOINT_DEFENCES[name])


FAILPOINT_DEFENCES = {
    "after-download": "the download is a private temp file; the install is untouched",
    "after-preflight": "the self-tested archive is still only a temp file",
    "after-trial-open": "the next start finds a trial for a build that is not installed and voids it",
    "after-backup": "the install still holds v1 (the backup is a hard link); the trial is voided",
    "after-rename": "the new version never started: its first start claims the trial and runs under the guard",
    "before-exec": "as after-rename: only the new version's own start decides its trial",
    "boot-trial-start": "the new version's start died before confirming: the next start restores the backup",
    "boot-before-commit": "as boot-trial-start: only a committed boot counts",
    "boot-after-commit": "the commit is one atomic rename of state.json, then the trial record goes",
    "rollback-after-restore": "the backup is back in place; the next start records the rollback it finishes",
    "during-migration": "each migration is one SQLite transaction; a killed one leaves the schema as it was",
}


def test_every_failpoint_has_an_end_to_end_test():
    assert set(FAILPOINT_DEFENCES) == set(FAILPOINTS)
    assert set(UPDATE_POINTS) | {"rollback-after-restore", "during-migration"} == set(FAILPOINTS)


def killed(result, point: str) -> None:
    assert result.returncode == -signal.SIGKILL, f"{point} did not fire: {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr


def check_install(pilot, expected_version: str, archives: dict[str, str]) -> dict:
    """The next plain start: a complete archive that runs, state agreeing with it, the task still listed."""
    tasks = pilot.run("task", "list", "--json")  # the next plain start: it settles whatever trial is open
    assert tasks.returncode == 0, tasks.stderr
    assert [t["title"] for t in json.loads(tasks.stdout)] == ["made before the update"]
    assert pilot.version() == expected_version
    with zipfile.ZipFile(pilot.path) as zf:
        assert zf.testzip() is None
    assert sha256(pilot.path) == archives[expected_version]
    status = pilot.status()
    assert status["running_version"] == expected_version.split()[1]
    assert status["state"] != "trial"
    if expected_version == NEW:
        assert status["state"] == "committed"
    else:
        assert status["state"] in ("none", "failed", "rolled_back"), status
    return status


@slow
@pytest.mark.parametrize("point", [pytest.param(p, marks=recovered(p)) for p in UPDATE_POINTS])
def test_a_kill_at_each_update_step_leaves_a_working_pilot(point, pilot, repo, v1, v2):
    expected, state, after_retry = UPDATE_POINTS[point]
    repo.publish_releases(v2)
    assert pilot.run("task", "add", "made before the update", "--", "true").returncode == 0
    archives = {OLD: sha256(v1), NEW: sha256(v2)}

    process = pilot.popen("self-update", "--yes", extra_env={"PILOT_FAILPOINT": point})
    process.communicate(timeout=180)
    assert process.returncode == -signal.SIGKILL, f"{point} did not fire"

    status = check_install(pilot, expected, archives)
    # A plain start does not scan the bin dir (it costs one stat): before the swap the killed update's
    # download is still there, named with its dead pid, until the next update sweeps it.
    leftovers = pilot.stray_files()
    if point in ("after-download", "after-preflight", "after-trial-open", "after-backup"):
        assert len(leftovers) == 1 and re.fullmatch(rf"\.pilot-download-{process.pid}-\w+\.partial", leftovers[0])
    else:
        assert leftovers == []
    assert status["state"] == state, status
    if state == "rolled_back":
        assert status["bad_versions"] == ["2.0.0"]
        assert "did not finish starting" in status["reason"]
    else:
        assert status["bad_versions"] == []  # a kill of the updater condemns no version

    retry = pilot.run("self-update", "--yes")  # sweeps what the killed update left beside the install
    assert retry.returncode == 0, retry.stderr
    assert pilot.stray_files() == []
    assert pilot.version() == after_retry
    if after_retry == OLD:
        assert "2.0.0 failed to start here before" in retry.stderr
    else:
        assert pilot.status()["state"] == "committed"


@slow
@recovered("rollback-after-restore")
def test_a_kill_in_the_middle_of_a_rollback(pilot, repo, v1, archives):
    """v3 fails to start; the boot guard restores v1 and is killed before it records the rollback."""
    v3 = archives.build("3.0.0", overlay=BROKEN["raises"])
    repo.publish_releases(v3)
    assert pilot.run("task", "add", "made before the update", "--", "true").returncode == 0

    killed(pilot.run("self-update", "--yes", extra_env={"PILOT_FAILPOINT": "rollback-after-restore"}),
           "rollback-after-restore")

    status = check_install(pilot, OLD, {OLD: sha256(v1)})
    assert status["state"] == "rolled_back" and status["bad_versions"] == ["3.0.0"]
    assert not pilot.backup.exists()  # it was moved back into place
    assert pilot.stray_files() == []


@slow
@recovered("during-migration")
def test_a_kill_during_a_schema_migration(pilot, repo, v2):
    """State written by an older Pilot (schema v2); the updated Pilot's first start migrates it and is killed."""
    from pilot.state.db import MIGRATIONS, SCHEMA_VERSION

    pilot.home.mkdir(parents=True, exist_ok=True)
    database = pilot.home / "pilot.db"
    conn = sqlite3.connect(database, isolation_level=None)
    for migration in MIGRATIONS[:2]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("INSERT INTO meta (key, value) VALUES ('min_reader_version', '0')")
    conn.execute("INSERT INTO tasks (title, created_at) VALUES ('made before the update', '2026-01-01T00:00:00Z')")
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    repo.publish_releases(v2)
    assert pilot.run("self-update", "--yes").returncode == 0
    assert pilot.version() == NEW

    killed(pilot.run("task", "list", "--json", extra_env={"PILOT_FAILPOINT": "during-migration"}),
           "during-migration")
    with sqlite3.connect(database) as reader:
        assert reader.execute("PRAGMA user_version").fetchone()[0] == 2  # the killed migration left nothing

    tasks = pilot.run("task", "list", "--json")
    assert tasks.returncode == 0, tasks.stderr
    assert [t["title"] for t in json.loads(tasks.stdout)] == ["made before the update"]
    with sqlite3.connect(database) as reader:
        assert reader.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (pilot.home / "snapshots" / "pilot.db.before-v3").exists()


# --- the failpoints themselves ------------------------------------------------------------------

CALL = re.compile(r"""\bfailpoint\(\s*["']([^"']+)["']\s*\)""")


def call_sites() -> list[tuple[str, str]]:
    sites = []
    for path in sorted((REPO / "pilot").rglob("*.py")):
        for name in CALL.findall(path.read_text()):
            sites.append((name, path.relative_to(REPO).as_posix()))
    return sites


def test_every_failpoint_is_placed_exactly_once_and_every_placement_is_listed():
    names = [name for name, _ in call_sites()]
    assert len(FAILPOINTS) == len(set(FAILPOINTS))
    assert sorted(names) == sorted(FAILPOINTS), call_sites()


def test_failpoints_are_placed_in_the_steps_they_name():
    where = dict(call_sites())
    assert where["after-backup"] == where["after-rename"] == "pilot/update/install.py"
    assert where["after-download"] == where["after-trial-open"] == where["before-exec"] == "pilot/update/updater.py"
    assert where["boot-trial-start"] == where["rollback-after-restore"] == "pilot/launcher.py"
    assert where["boot-before-commit"] == where["boot-after-commit"] == "pilot/update/sentinel.py"
    assert where["during-migration"] == "pilot/state/db.py"


def test_an_unset_or_other_failpoint_does_nothing(monkeypatch):
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)
    failpoint("after-rename")
    monkeypatch.setenv(FAILPOINT_ENV, "after-backup")
    failpoint("after-rename")


def test_a_set_failpoint_kills_the_process_with_sigkill():
    code = ("from pilot.launcher import failpoint\n"
            "print('before', flush=True)\nfailpoint('after-rename')\nprint('after')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={"PATH": "/usr/bin:/bin", FAILPOINT_ENV: "after-rename", "PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == "before\n"


def test_debug_failpoints_prints_one_name_per_line(capsys):
    assert cli.main(["debug", "failpoints"]) == 0
    assert capsys.readouterr().out.splitlines() == list(FAILPOINTS)


SELF_TEST_STANDIN = """import json, os, sys
if os.environ.get("PILOT_FAILPOINT"):
    sys.exit("the self-test inherited PILOT_FAILPOINT=" + os.environ["PILOT_FAILPOINT"])
print(json.dumps({"version": "2.0.0", "build_id": "b"}))
"""


@pytest.mark.parametrize("name", ["after-rename", "during-migration"])
def test_the_self_test_child_never_inherits_a_failpoint(name, monkeypatch, tmp_path):
    from pilot.update import install

    candidate = tmp_path / "candidate"
    candidate.write_text(SELF_TEST_STANDIN)  # a real child, run as the pre-flight runs an archive
    monkeypatch.setenv(FAILPOINT_ENV, name)
    install.preflight(candidate, version="2.0.0", build_id="b")


def test_a_trial_is_told_apart_by_version_when_both_releases_share_a_build_id():
    """Same code, new version: one build id. A kill before the swap must void the trial, not roll back."""
    trial = {"pid": 1000, "deadline": 5030.0, "from_build_id": "same", "to_build_id": "same",
             "from_version": "1.0.0", "to_version": "2.0.0", "booted": True}
    dead = lambda pid: False  # noqa: E731
    assert boot_decision(trial, "same", 2000, 5000.0, is_alive=dead, version="1.0.0") == "void"
    assert boot_decision(trial, "same", 2000, 5000.0, is_alive=dead, version="2.0.0") == "rollback"
    assert boot_decision(trial, "same", 1000, 5000.0, is_alive=lambda pid: True, version="2.0.0") == "trial"
