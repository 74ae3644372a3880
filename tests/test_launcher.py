"""The archive's boot guard (pilot.launcher), without building archives.

The paths that exec (run_trial / roll_back) run in a child interpreter, so execv replaces
that child and not pytest. Plain .py files stand in for the archives: roll_back execs
`sys.executable INSTALL_PATH ARGV...`, which runs a script as happily as a .pyz.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pilot import launcher
from pilot.buildinfo import BuildInfo
from pilot.launcher import (
    BootTimeout,
    UpdateLock,
    boot_decision,
    describe_failure,
    guard_boot,
    read_json,
    record_outcome,
    run_trial,
    state_path,
    trial_path,
    write_json,
)
from pilot.update import sentinel
from pilot.update.install import prune_extractions

REPO = Path(__file__).resolve().parents[1]
NEW, OLD = "new-build", "old-build"


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment (PILOT_HOME, SHIV_ROOT... from isolated_home) with the repo importable."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def run_python(code: str, *args: str, timeout: float = 20, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=child_env(**env), cwd=REPO)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


def make_trial(tmp_path: Path, *, pid: int, deadline_in: float = 60.0, **overrides) -> dict:
    now = time.time()
    record = {
        "from_version": "1.0.0", "to_version": "2.0.0", "from_build_id": OLD, "to_build_id": NEW,
        "install_path": str(tmp_path / "bin" / "pilot"), "backup_path": str(tmp_path / "bin" / "pilot.backup"),
        "resume_argv": ["self-update", "--after-restart"], "pid": pid, "booted": False,
        "started_at": now, "deadline": now + deadline_in,
    }
    record.update(overrides)
    return record


# ------------------------------------------------------------------------- boot_decision


ME, OTHER = 1000, 2000
NOW = 5_000.0
TRIAL = {"pid": ME, "deadline": NOW + 30, "from_build_id": OLD, "to_build_id": NEW, "booted": False}
BOOTED = dict(TRIAL, booted=True)  # the new version's start claimed it
PENDING = dict(TRIAL, pid=None, deadline=None)  # --no-restart: for the next start to claim


def alive(*pids: int):
    return lambda pid: pid in pids


def test_no_trial_runs():
    assert boot_decision(None, NEW, ME, NOW) == "run"


def test_the_trial_pid_on_the_new_build_is_the_trial_boot():
    assert boot_decision(TRIAL, NEW, ME, NOW, is_alive=alive(ME)) == "trial"
    # even past the deadline: the alarm is what ends a hung trial boot, not a second look at the clock
    assert boot_decision(BOOTED, NEW, ME, NOW + 60, is_alive=alive(ME)) == "trial"


def test_another_new_build_process_runs_while_the_trial_is_in_progress():
    assert boot_decision(TRIAL, NEW, OTHER, NOW, is_alive=alive(ME, OTHER)) == "run"
    assert boot_decision(BOOTED, NEW, OTHER, NOW, is_alive=alive(ME, OTHER)) == "run"


@pytest.mark.parametrize("now, living", [(NOW + 31, (ME, OTHER)), (NOW, (OTHER,))])
def test_a_boot_that_died_or_hung_after_it_started_is_rolled_back_by_the_next_start(now, living):
    assert boot_decision(BOOTED, NEW, OTHER, now, is_alive=alive(*living)) == "rollback"


@pytest.mark.parametrize("trial, now, living", [
    (PENDING, NOW, (OTHER,)),        # --no-restart: nobody has started the new version yet
    (TRIAL, NOW, (OTHER,)),          # the updater died (SIGKILL, power cut) between the swap and its exec
    (TRIAL, NOW + 31, (ME, OTHER)),  # the updater never exec'd and its deadline passed
    ({"to_build_id": NEW}, NOW, (OTHER,)),  # a record with no pid, deadline or booted flag
])
def test_the_first_start_of_a_new_version_that_never_ran_claims_its_trial(trial, now, living):
    """Only the new version's own start decides: an updater that died before its exec condemns nothing."""
    assert boot_decision(trial, NEW, OTHER, now, is_alive=alive(*living)) == "claim"


def test_an_old_build_process_runs_while_the_updater_has_not_exec_d_yet():
    assert boot_decision(TRIAL, OLD, OTHER, NOW, is_alive=alive(ME, OTHER)) == "run"


@pytest.mark.parametrize("pid, now, living", [
    (OTHER, NOW + 31, (ME, OTHER)),  # the deadline passed and the new build never started
    (OTHER, NOW, (OTHER,)),          # the updater died before the exec
    (ME, NOW, (ME,)),                # the trial pid itself runs the old build: the swap never happened
])
def test_an_old_build_at_the_install_path_voids_a_trial_that_never_got_installed(pid, now, living):
    assert boot_decision(TRIAL, OLD, pid, now, is_alive=alive(*living)) == "void"
    assert boot_decision(PENDING, OLD, pid, now, is_alive=alive(*living)) == "void"


def test_an_old_build_run_from_elsewhere_leaves_the_new_version_s_trial_alone():
    """`pilot.backup status`, or another copy: the install path may hold the new version all the same."""
    assert boot_decision(PENDING, OLD, OTHER, NOW, is_alive=alive(OTHER), at_install=False) == "run"
    assert boot_decision(BOOTED, OLD, OTHER, NOW + 31, is_alive=alive(OTHER), at_install=False) == "run"


# ------------------------------------------------------------------------ record_outcome


def test_a_rollback_marks_the_version_bad_once_and_leaves_a_notice(tmp_path):
    trial = make_trial(tmp_path, pid=ME)
    before = {"highest_serial": 7, "bad_versions": ["0.9.0"], "notice_pending": False}
    once = record_outcome(before, trial, "rolled_back", "it broke")
    twice = record_outcome(once, trial, "rolled_back", "it broke again")
    assert twice["bad_versions"] == ["0.9.0", "2.0.0"]
    assert twice["notice_pending"] is True
    assert twice["highest_serial"] == 7
    assert twice["last"]["state"] == "rolled_back"
    assert twice["last"]["reason"] == "it broke again"
    assert (twice["last"]["from_version"], twice["last"]["to_version"]) == ("1.0.0", "2.0.0")
    assert twice["last"]["install_path"] == trial["install_path"]
    assert twice["last"]["backup_path"] == trial["backup_path"]
    assert before == {"highest_serial": 7, "bad_versions": ["0.9.0"], "notice_pending": False}  # pure


@pytest.mark.parametrize("outcome", ["committed", "failed", "installed"])
def test_other_outcomes_mark_nothing_bad(tmp_path, outcome):
    state = record_outcome(None, make_trial(tmp_path, pid=ME), outcome)
    assert "bad_versions" not in state
    assert state["notice_pending"] is True
    assert state["last"]["state"] == outcome


# ---------------------------------------------------------------------- describe_failure


def test_describe_failure_names_the_exception_and_its_first_line():
    text = describe_failure(RuntimeError("cannot read config\nTraceback noise"))
    assert text == "it failed to start: RuntimeError: cannot read config"


def test_describe_failure_of_an_exception_without_message():
    assert describe_failure(KeyError()) == "it failed to start: KeyError"


def test_describe_failure_truncates_a_huge_message():
    assert len(describe_failure(ValueError("x" * 10_000))) < 250


def test_describe_failure_of_a_timeout_says_hang():
    assert "hang" in describe_failure(BootTimeout())


def test_describe_failure_of_an_exit_gives_the_status():
    assert describe_failure(SystemExit(7)) == "it exited with status 7 before confirming its start"


# ---------------------------------------------------------------------- read/write_json


def test_write_json_leaves_only_the_target_and_valid_json(tmp_path):
    path = tmp_path / "update" / "state.json"  # the directory is created
    write_json(str(path), {"a": 1})
    write_json(str(path), {"b": [1, 2]})
    assert os.listdir(path.parent) == ["state.json"]
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert read_json(str(path)) == {"b": [1, 2]}


def test_write_json_interrupted_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_json(str(path), {"old": True})

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(launcher.os, "replace", crash)
    with pytest.raises(OSError):
        write_json(str(path), {"new": True, "pad": "x" * 100_000})
    assert read_json(str(path)) == {"old": True}


@pytest.mark.parametrize("content", [
    b'{"last": {"state": "comm',  # torn write
    b"\xff\xfe garbage \x00",      # not UTF-8
    b"",                          # empty
    b"[1, 2, 3]",                 # JSON but not an object
    b"null",
])
def test_a_torn_or_foreign_file_reads_as_no_record(tmp_path, content):
    path = tmp_path / "trial.json"
    path.write_bytes(content)
    assert read_json(str(path)) is None


def test_a_missing_file_reads_as_no_record(tmp_path):
    assert read_json(str(tmp_path / "nothing.json")) is None


# ---------------------------------------------------------------------------- UpdateLock


PROBE_LOCK = """
from pilot.launcher import UpdateLock
try:
    with UpdateLock(blocking=False):
        print("acquired")
except BlockingIOError:
    print("blocked")
"""


def probe_lock() -> str:
    return run_python(PROBE_LOCK).stdout.strip()


def probe_from_a_thread() -> str:
    answer = []

    def probe():
        try:
            with UpdateLock(blocking=False):
                answer.append("acquired")
        except BlockingIOError:
            answer.append("blocked")

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return answer[0]


def test_update_lock_is_reentrant_in_one_thread_and_exclusive_to_other_threads_and_processes():
    assert probe_lock() == probe_from_a_thread() == "acquired"
    with UpdateLock():
        with UpdateLock(blocking=False):  # a second flock on a new descriptor would block on the first
            assert probe_lock() == probe_from_a_thread() == "blocked"
        assert probe_lock() == probe_from_a_thread() == "blocked"  # the inner exit must not release the outer hold
    assert probe_lock() == probe_from_a_thread() == "acquired"
    assert launcher._UPDATE_LOCK_HOLDERS == {}


def test_a_thread_waits_for_the_lock_another_thread_holds():
    order = []

    def wait_for_it():
        with UpdateLock():
            order.append("waiter")

    with UpdateLock():
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and order == []  # blocked, not let in by a per-process count
        order.append("holder")
    waiter.join(5)
    assert order == ["holder", "waiter"]


def test_update_lock_without_blocking_raises_when_another_process_holds_it():
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pilot.launcher import UpdateLock\n"
                               "with UpdateLock():\n    print('held', flush=True)\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BlockingIOError), UpdateLock(blocking=False):
            pass
        assert launcher._UPDATE_LOCK_HOLDERS == {}  # a failed attempt leaves no half-held lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with UpdateLock(blocking=False):
        pass


def test_the_whole_update_lock_excludes_a_second_holder_in_the_same_process():
    first, second = launcher.UpdateInProgress(), launcher.UpdateInProgress()
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


# ---------------------------------------------------------------------- guard_boot, in process


def test_guard_boot_without_a_trial_just_runs_the_app():
    calls = []
    assert guard_boot({"build_id": NEW}, lambda: calls.append(1) or 17) == 17
    assert calls == [1]
    assert not os.path.exists(state_path())


def test_guard_boot_treats_an_unreadable_trial_record_as_none():
    os.makedirs(os.path.dirname(trial_path()))
    Path(trial_path()).write_bytes(b'{"pid": 12')
    assert guard_boot({"build_id": NEW}, lambda: 0) == 0


def test_guard_boot_runs_beside_a_trial_in_progress_and_leaves_it(tmp_path, live_pid):
    trial = make_trial(tmp_path, pid=live_pid)
    write_json(trial_path(), trial)
    for build_id in (NEW, OLD):
        calls = []
        assert guard_boot({"build_id": build_id}, lambda: calls.append(1) or 0) == 0  # noqa: B023
        assert calls == [1]
    assert read_json(trial_path()) == trial


def test_guard_boot_voids_a_trial_whose_new_version_never_got_installed(tmp_path, dead_pid):
    trial = make_trial(tmp_path, pid=dead_pid)
    write_json(trial_path(), trial)
    calls = []
    assert guard_boot({"build_id": OLD}, lambda: calls.append(1) or 3, trial["install_path"]) == 3
    assert calls == [1]
    assert not os.path.exists(trial_path())
    state = read_json(state_path())
    assert state["last"]["state"] == "failed"
    assert "interrupted before the new version was installed" in state["last"]["reason"]
    assert state["notice_pending"] is True
    assert "bad_versions" not in state  # 2.0.0 never ran: it is not known to be bad


def test_void_leaves_a_newer_trial_alone(tmp_path, dead_pid):
    """Between reading the record and taking the lock, another update may have opened its own trial."""
    stale = make_trial(tmp_path, pid=dead_pid)
    fresh = dict(stale, started_at=stale["started_at"] + 1)
    write_json(trial_path(), fresh)
    launcher.void_trial(stale)
    assert read_json(trial_path()) == fresh
    assert read_json(state_path()) is None


def trial_build() -> BuildInfo:
    return BuildInfo(version="2.0.0", python_tag="cp311", platform_tag="linux_x86_64", build_id=NEW,
                     archive=Path("/nonexistent/pilot"), trusted_keys=(), threshold=1, source_commit=None,
                     manifest_url=None)


def test_a_trial_boot_that_commits_returns_the_app_code_and_keeps_its_errors(tmp_path, alarm_guard):
    trial = make_trial(tmp_path, pid=os.getpid())
    write_json(trial_path(), trial)
    assert run_trial(trial, lambda: sentinel.commit_boot(trial_build()) and 4) == 4
    assert read_json(state_path())["last"]["state"] == "committed"
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # the commit disarmed the boot alarm

    write_json(trial_path(), trial := make_trial(tmp_path, pid=os.getpid()))

    def commit_then_fail():
        sentinel.commit_boot(trial_build())
        raise LookupError("after the commit: an ordinary error of the new version")

    with pytest.raises(LookupError):
        run_trial(trial, commit_then_fail)
    assert read_json(state_path())["last"]["state"] == "committed"


def test_a_failed_trial_boot_with_no_backup_records_it_and_reraises(tmp_path, alarm_guard):
    trial = make_trial(tmp_path, pid=os.getpid())  # backup_path does not exist
    write_json(trial_path(), trial)

    def broken():
        raise RuntimeError("new version is broken")

    with pytest.raises(RuntimeError, match="new version is broken"):
        run_trial(trial, broken)
    state = read_json(state_path())
    assert state["last"]["state"] == "failed"
    assert "RuntimeError: new version is broken; no backup was left to restore" in state["last"]["reason"]
    assert not os.path.exists(trial_path())
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # no BootTimeout left to go off later


# ------------------------------------------------------------- exec paths, in a child process


DRIVER = """
import json, os, signal, sys, time
from pilot import launcher

cfg = json.loads(os.environ["DRIVER_CONFIG"])
print("DRIVER", os.getpid(), flush=True)
now = time.time()
launcher.write_json(launcher.trial_path(), {
    "from_version": "1.0.0", "to_version": "2.0.0", "from_build_id": "old-build", "to_build_id": "new-build",
    "install_path": cfg["install"], "backup_path": cfg["backup"], "resume_argv": ["self-update", "--after-restart"],
    "pid": cfg.get("trial_pid") or os.getpid(), "booted": cfg.get("booted", False), "started_at": now,
    "deadline": now + cfg["deadline_in"],
})

def start_app():
    print("APP started", flush=True)
    how = cfg["failure"]
    if how == "raises":
        raise RuntimeError("database schema is too new\\nsecond line")
    if how == "exits":
        sys.exit(7)
    if how == "returns":
        return 0
    if how == "hangs":
        time.sleep(30)
    if how == "commits":
        launcher.remove_file(launcher.trial_path())
        return 0
    if how == "ctrl-c":
        raise KeyboardInterrupt()
    if how in ("sigterm", "sighup"):
        os.kill(os.getpid(), getattr(signal, how.upper()))
        time.sleep(5)
    if how == "closed pipe":
        raise BrokenPipeError(32, "Broken pipe")
    if how == "refuses":  # what the CLI's settle_boot does for an interrupt or output error
        launcher.release_trial(launcher.read_json(launcher.trial_path()))
        return 4
    if how == "notes a failure":
        record = launcher.read_json(launcher.trial_path())
        record["failure"] = "did not start: the database schema is too new"
        launcher.write_json(launcher.trial_path(), record)
        return 4

sys.exit(launcher.guard_boot({"build_id": "new-build"}, start_app))
"""

NEW_STANDIN = "print('NEW')\nraise SystemExit('the new version must not be started again')\n"
OLD_STANDIN = textwrap.dedent("""\
    import json, os, sys
    print("OLD ok", json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "file": __file__}), flush=True)
    """)


@pytest.fixture
def installed(tmp_path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    install, backup = bin_dir / "pilot", bin_dir / "pilot.backup"
    install.write_text(NEW_STANDIN)
    backup.write_text(OLD_STANDIN)
    return install, backup


def drive(installed, failure: str, *args: str, deadline_in: float = 30, trial_pid: int | None = None,
          booted: bool = False):
    install, backup = installed
    config = {"install": str(install), "backup": str(backup), "failure": failure, "deadline_in": deadline_in,
              "trial_pid": trial_pid, "booted": booted}
    return run_python(DRIVER, *args, DRIVER_CONFIG=json.dumps(config))


def parse_run(result: subprocess.CompletedProcess) -> tuple[int, dict | None, list[str]]:
    lines = result.stdout.splitlines()
    driver_pid = int(lines[0].split()[1])
    old = [json.loads(line.removeprefix("OLD ok ")) for line in lines if line.startswith("OLD ok ")]
    assert len(old) <= 1, result.stdout
    return driver_pid, (old[0] if old else None), lines


def assert_rolled_back(installed, result, reason: str, argv: list[str]) -> None:
    install, backup = installed
    assert result.returncode == 0, result.stderr
    driver_pid, old, lines = parse_run(result)
    assert old is not None, f"the backup did not run:\n{result.stdout}\n{result.stderr}"
    assert old["pid"] == driver_pid  # exec'd in the same process
    assert old["argv"] == argv
    assert old["file"] == str(install)  # run from the install path, where the backup now is
    assert "NEW" not in lines
    assert install.read_text() == OLD_STANDIN
    assert not backup.exists()
    assert not os.path.exists(trial_path())
    state = read_json(state_path())
    assert state["last"]["state"] == "rolled_back"
    assert reason in state["last"]["reason"]
    assert state["last"]["rollback_pid"] == driver_pid
    assert state["bad_versions"] == ["2.0.0"]
    assert state["notice_pending"] is True


@pytest.mark.parametrize("failure, reason", [
    ("raises", "2.0.0 it failed to start: RuntimeError: database schema is too new"),
    ("exits", "2.0.0 it exited with status 7 before confirming its start"),
    ("returns", "2.0.0 exited with status 0 before confirming its start"),
])
def test_a_failing_trial_boot_rolls_back_and_execs_the_backup_in_the_same_process(installed, failure, reason):
    result = drive(installed, failure)
    assert_rolled_back(installed, result, reason, ["self-update", "--after-restart"])
    assert "APP started" in result.stdout


def test_a_hanging_trial_boot_is_rolled_back_at_the_deadline(installed):
    started = time.monotonic()
    result = drive(installed, "hangs", deadline_in=2)
    assert time.monotonic() - started < 5
    assert_rolled_back(installed, result, "did not finish starting within the boot deadline (hang)",
                       ["self-update", "--after-restart"])


def test_a_trial_boot_that_commits_is_not_rolled_back(installed):
    install, backup = installed
    result = drive(installed, "commits")
    assert result.returncode == 0, result.stderr
    assert "OLD ok" not in result.stdout
    assert install.read_text() == NEW_STANDIN
    assert backup.read_text() == OLD_STANDIN


def test_the_next_start_after_a_dead_trial_boot_rolls_back_with_its_own_arguments(installed, dead_pid):
    result = drive(installed, "raises", "status", "--json", trial_pid=dead_pid, booted=True)
    assert_rolled_back(installed, result, "2.0.0 did not finish starting (its process ended or hung",
                       ["status", "--json"])
    assert "APP started" not in result.stdout  # the broken version is not given another go


# ------------------------------------------------------------------- extraction pruning


HOLDER = """
import sys
from pilot.launcher import hold_extraction
print(hold_extraction(sys.argv[1]), flush=True)
sys.stdin.read()
"""


def make_extraction(root: Path, build_id: str) -> Path:
    directory = root / f"pilot_{build_id}"
    (directory / "site-packages").mkdir(parents=True)
    (directory / "site-packages" / "module.py").write_text("")
    return directory


def test_pruning_skips_extractions_held_by_a_live_process_and_kept_builds(tmp_path, monkeypatch):
    root = tmp_path / "shiv"  # not the session-wide SHIV_ROOT: pruning there would hit other tests' builds
    monkeypatch.setenv("SHIV_ROOT", str(root))
    held, free, kept = (make_extraction(root, name) for name in ("held", "free", "kept"))
    (root / "pilot_not-a-dir").write_text("")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(held)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert prune_extractions({"kept"}) == [free]
        assert held.is_dir() and kept.is_dir() and not free.exists()
        assert (held / "site-packages" / "module.py").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert prune_extractions({"kept"}) == [held]  # nobody holds it any more
    assert kept.is_dir()
    assert (root / "pilot_not-a-dir").is_file()


def test_hold_extraction_of_a_vanished_directory_is_false(tmp_path):
    assert launcher.hold_extraction(str(tmp_path / "pilot_gone")) is False


@pytest.mark.parametrize("how, status", [("ctrl-c", 130), ("sigterm", 143), ("sighup", 129), ("closed pipe", 1),
                                         ("refuses", 4)])
def test_a_start_that_is_interrupted_or_cannot_write_is_no_failed_start(installed, how, status):
    """The trial stays open for the next start: nothing rolled back, no version condemned, one line."""
    install, backup = installed
    result = drive(installed, how)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert "OLD ok" not in result.stdout
    assert install.read_text() == NEW_STANDIN and backup.read_text() == OLD_STANDIN
    trial = read_json(trial_path())
    assert (trial["pid"], trial["booted"], trial["deadline"]) == (None, False, None)
    assert read_json(state_path()) is None  # no outcome: no bad version
    if how != "refuses":
        assert "2.0.0 was interrupted while it started; it starts again with your next command" in result.stderr


def test_a_failure_the_app_noted_is_the_reason_of_the_rollback(installed):
    result = drive(installed, "notes a failure")
    assert_rolled_back(installed, result, "2.0.0 did not start: the database schema is too new",
                       ["self-update", "--after-restart"])


PENDING_DRIVER = """
import json, os, sys, time
from pilot import launcher

cfg = json.loads(os.environ["DRIVER_CONFIG"])
launcher.write_json(launcher.trial_path(), {
    "from_version": "1.0.0", "to_version": "2.0.0", "from_build_id": "old-build", "to_build_id": "new-build",
    "install_path": cfg["install"], "backup_path": cfg["backup"], "resume_argv": [], "pid": None, "booted": False,
    "deadline": None, "started_at": time.time(), "opened_by": 1,
})

def start_app():
    print("APP", json.dumps(launcher.read_json(launcher.trial_path())), flush=True)
    if cfg["failure"] == "raises":
        raise RuntimeError("cannot import its config module")
    if cfg["failure"] == "commits":
        launcher.remove_file(launcher.trial_path())
    return 0

sys.argv[1:] = cfg["argv"]
sys.exit(launcher.guard_boot({"build_id": "new-build", "version": "2.0.0"}, start_app, cfg["install"],
                             may_claim=cfg["argv"] != ["--version"]))
"""


def drive_pending(installed, failure: str, argv: list[str]) -> subprocess.CompletedProcess:
    install, backup = installed
    config = {"install": str(install), "backup": str(backup), "failure": failure, "argv": argv}
    return run_python(PENDING_DRIVER, DRIVER_CONFIG=json.dumps(config), PILOT_BOOT_TIMEOUT="7")


def test_the_first_real_start_after_no_restart_claims_the_trial_with_its_own_arguments(installed):
    result = drive_pending(installed, "commits", ["status", "--json"])
    assert result.returncode == 0, result.stderr
    claimed = json.loads(result.stdout.split("APP ", 1)[1])
    assert claimed["pid"] != 1 and claimed["booted"] is True and claimed["resume_argv"] == ["status", "--json"]
    assert claimed["deadline"] - time.time() < 8  # PILOT_BOOT_TIMEOUT


def test_a_pending_new_version_that_fails_its_first_start_is_rolled_back_with_the_user_s_command(installed):
    result = drive_pending(installed, "raises", ["status", "--json"])
    install, _ = installed
    old = [json.loads(line.removeprefix("OLD ok ")) for line in result.stdout.splitlines() if line.startswith("OLD")]
    assert old and old[0]["argv"] == ["status", "--json"]
    assert install.read_text() == OLD_STANDIN
    assert read_json(state_path())["bad_versions"] == ["2.0.0"]


def test_version_does_not_claim_a_pending_trial(installed):
    result = drive_pending(installed, "answers", ["--version"])
    assert result.returncode == 0 and "APP" in result.stdout
    assert read_json(trial_path())["pid"] is None  # still pending for a start that runs the application


# ------------------------------------------------------------------- recovery and durations


@pytest.mark.parametrize("argv, command", [
    (["self-update", "--status"], "status"), (["self-update", "--status", "--json"], "status"),
    (["self-update", "--rollback"], "rollback"), (["self-update", "--rollback", "--yes"], "rollback"),
    (["self-update", "--rollback", "--to", "1.0"], None), (["self-update"], None), (["status"], None), ([], None),
])
def test_the_recovery_commands_are_recognised_exactly(argv, command):
    assert launcher.recovery_command(argv) == command


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("2m", 120), ("1.5h", 5400), ("30d", 2592000),
                                           (" 5 m ", 300), (".5s", 0.5)])
def test_durations(text, seconds):
    assert launcher.parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5", "0", "1e3", "nan", "inf", "5mm", "5 5", "1.2.3", "²"])
def test_what_is_not_a_duration(text):
    assert launcher.parse_seconds(text) is None


def test_interrupts_wait_until_the_deferred_step_is_done():
    done = []
    with pytest.raises(launcher.Interrupted) as raised, launcher.interrupts_deferred():
        launcher.raise_interrupted(signal.SIGTERM, None)
        launcher.raise_interrupted(signal.SIGHUP, None)
        done.append("the whole step")
    assert done == ["the whole step"] and raised.value.signum == signal.SIGTERM
    assert not launcher.interrupt_pending()
    with pytest.raises(launcher.Interrupted):
        launcher.raise_interrupted(signal.SIGINT, None)  # not deferred: at once


def test_status_report_names_a_pending_trial(tmp_path):
    write_json(trial_path(), dict(make_trial(tmp_path, pid=None), deadline=None))
    info = launcher.status_report("1.0.0")
    assert (info["state"], info["to_version"], info["running_version"]) == ("pending", "2.0.0", "1.0.0")
    assert any("starts, under the boot guard, with your next command" in line for line in launcher.status_lines(info))


BLOCKED_DRIVER = """
import json, os, signal, sys
from pilot import launcher

signal.pthread_sigmask(signal.SIG_BLOCK, launcher.stop_signals())  # as an updater's exec leaves them
os.environ[launcher.SIGNALS_BLOCKED_ENV] = "1"
if "pending" in sys.argv[2:]:
    os.kill(os.getpid(), signal.SIGTERM)  # a stop that came during the exec
if sys.argv[1] == "trial":
    launcher.write_json(launcher.trial_path(), {"to_build_id": "new-build", "to_version": "2.0.0", "pid": os.getpid(),
                        "started_at": 1.0, "deadline": 9e9, "booted": False, "from_version": "1.0.0",
                        "install_path": "/nonexistent/pilot", "backup_path": "/nonexistent/pilot.backup"})

def start_app():
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    print(json.dumps(sorted(int(s) for s in blocked & set(launcher.stop_signals()))), flush=True)
    launcher.remove_file(launcher.trial_path())
    return 0

sys.exit(launcher.guard_boot({"build_id": "new-build", "version": "2.0.0"}, start_app))
"""


@pytest.mark.parametrize("start", ["plain", "trial"])
def test_signals_an_updater_kept_blocked_across_its_exec_are_unblocked_whatever_the_start(start):
    """A start that is no trial (a daemon exec'ing an archive installed by hand) must not stay deaf to SIGTERM."""
    result = run_python(BLOCKED_DRIVER, start)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_a_stop_that_waited_across_the_exec_ends_a_plain_start_in_one_line_not_by_the_signal():
    result = run_python(BLOCKED_DRIVER, "plain", "pending")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr == "pilot: interrupted (SIGTERM)\n"  # as pilot.cli says it
    assert result.stdout == ""  # the application never ran


def test_a_stop_that_waited_across_the_exec_hands_a_trial_back():
    result = run_python(BLOCKED_DRIVER, "trial", "pending")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr == "pilot: 2.0.0 was interrupted while it started; it starts again with your next command\n"
    trial = read_json(trial_path())
    assert (trial["pid"], trial["booted"]) == (None, False)


# --- one archive, several interpreters --------------------------------------------------------


@pytest.mark.parametrize(("name", "tag"), [
    ("site-packages/yaml/_yaml.cpython-312-x86_64-linux-gnu.so", "cp312"),
    ("site-packages/_cffi_backend.cpython-313-darwin.so", "cp313"),
    ("site-packages/cryptography/hazmat/bindings/_rust.abi3.so", None),
    ("site-packages/yaml/__init__.py", None),
    ("site-packages/pkg/data.cpython-notes.txt", None),
])
def test_a_member_belongs_to_the_interpreter_its_extension_suffix_names(name, tag, monkeypatch):
    assert launcher.interpreter_of(name) == tag
    monkeypatch.setattr(launcher, "python_tag", lambda: "cp312")
    assert launcher.unpacked_here(name) is (tag in (None, "cp312"))


def test_a_copy_is_complete_for_the_interpreters_its_marker_lists(tmp_path, monkeypatch):
    marker = tmp_path / launcher.COMPLETE_FILE
    assert not launcher.extraction_complete(str(tmp_path), "b" * 64)
    marker.write_text("b" * 64 + "\ncp311\n")
    assert launcher.extraction_complete(str(tmp_path), "b" * 64)  # what the sh preamble checks: the build
    assert launcher.extraction_complete(str(tmp_path), "b" * 64, "cp311")
    assert not launcher.extraction_complete(str(tmp_path), "b" * 64, "cp313")  # 3.13 adds its own files first
    assert not launcher.extraction_complete(str(tmp_path), "c" * 64, "cp311")


@pytest.mark.parametrize(("running", "platform", "line"), [
    ("cp310", "linux_x86_64", "pilot: this archive is for CPython 3.11 to 3.13 on linux_x86_64 but this is "
                              "cp310-linux_x86_64: run it with python3.13"),
    ("cp312", "macos_arm64", "pilot: this archive is for CPython 3.11 to 3.13 on linux_x86_64 but this is "
                             "cp312-macos_arm64: download pilot-1.4.0-macos_arm64.pyz"),
    ("cp312", "linux_riscv64", "pilot: this archive is for CPython 3.11 to 3.13 on linux_x86_64 but this is "
                               "cp312-linux_riscv64: Pilot is published for CPython 3.11 to 3.13 on linux_x86_64, "
                               "linux_aarch64, macos_arm64, macos_x86_64"),
    ("cp312", "linux_x86_64", None),
])
def test_the_wrong_interpreter_line_names_the_range_and_what_to_run(running, platform, line, monkeypatch):
    monkeypatch.setattr(launcher, "python_tag", lambda: running)
    monkeypatch.setattr(launcher, "platform_tag", lambda: platform)
    build = {"version": "1.4.0", "python_tags": ["cp311", "cp312", "cp313"], "python_tag": "cp311",
             "platform_tag": "linux_x86_64"}
    assert launcher.incompatibility(build) == line


def test_an_archive_built_for_one_interpreter_still_says_which(monkeypatch):
    monkeypatch.setattr(launcher, "python_tag", lambda: "cp312")
    here = launcher.platform_tag()
    line = launcher.incompatibility({"version": "1.0.0", "python_tag": "cp311", "platform_tag": here})
    assert line == f"pilot: this archive is for CPython 3.11 on {here} but this is cp312-{here}: run it with python3.11"


def test_unpacking_compiles_only_what_the_archive_brought_no_bytecode_for(tmp_path, monkeypatch):
    import importlib.util

    package = tmp_path / "site-packages" / "pilot"
    package.mkdir(parents=True)
    (package / "shipped.py").write_text("X = 1\n")
    (package / "missing.py").write_text("Y = 2\n")
    shipped = Path(importlib.util.cache_from_source(str(package / "shipped.py")))
    shipped.parent.mkdir()
    shipped.write_bytes(b"the build's own bytecode")
    launcher.compile_for_interpreter(str(tmp_path))
    assert shipped.read_bytes() == b"the build's own bytecode"  # not compiled again
    compiled = Path(importlib.util.cache_from_source(str(package / "missing.py"))).read_bytes()
    assert compiled[:4] == importlib.util.MAGIC_NUMBER and compiled[4:8] == (1).to_bytes(4, "little")  # unchecked
