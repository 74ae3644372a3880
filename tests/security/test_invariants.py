"""The update's invariants, end to end on real archives: each one as an unlucky user would meet it.

  backup     the backup holds the last version that committed a boot and differs from the install
  trial      only the new version's own start decides its trial: interrupts and unwritable output do not
  recovery   --status and --rollback need no application code; --no-restart still boots under the guard
  rollback   a user's rollback is remembered: that version is not chosen by itself again
  signals    SIGINT, SIGTERM and SIGHUP at each step: one line, 128+N, nothing beside the install
  owner      the installed file keeps its owner, group and mode
  settings   every setting the update reads is refused before any download
  daemon     a daemon older than the install says so and execs it instead of downloading it again
  checker    the background check honours Retry-After
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pilot.launcher import archive_version
from tests.e2e.conftest import BROKEN, slow_cli
from tests.security.test_faults import stop_daemon, wait_for
from tests.support.mounts import mounted
from tests.support.repo_sim import failing, trickle

pytestmark = pytest.mark.slow
SIGNALS = [pytest.param(s, id=s.name) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]


def holds(name: str, defence: str):
    return pytest.mark.threat("invariant", name, defence=defence)


def versions(pilot) -> tuple[str | None, str | None]:
    """(installed, backup) as their archives' metadata says, never by running them."""
    return archive_version(str(pilot.path)), archive_version(str(pilot.backup)) if pilot.backup.exists() else None


def one_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pilot:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def artifact_requests(repo, version: str) -> int:
    return sum(f"/releases/{version}/" in path for path in repo.server.requests)


@pytest.fixture(scope="session")
def slow_v2(archives) -> Path:
    """2.0.0 that can be told to take its time starting or self-testing (tests.e2e.conftest.slow_cli)."""
    return archives.build("2.0.0", overlay=slow_cli())


@pytest.fixture(scope="session")
def v3(archives) -> Path:
    return archives.build("3.0.0")


def configure(pilot, text: str) -> None:
    pilot.home.mkdir(parents=True, exist_ok=True)
    (pilot.home / "config.yaml").write_text(text)


DAEMON_CONFIG = """upgrade:
  check_interval: 1s
  auto_upgrade_on_idle: true
daemon:
  idle_upgrade_after: 1s
"""


def start_daemon(pilot) -> subprocess.Popen:
    return pilot.popen("start", extra_env={"PILOT_FIRST_CHECK_DELAY": "0.2"})


def daemon_status(pilot) -> dict:
    result = pilot.run("status", "--json")
    if "bad local file header" in result.stderr:
        # CPython's zipimport read the archive's directory, then the daemon's swap renamed a new archive
        # over the path before it read __main__.py: a start at the very instant of a swap. Ask again.
        result = pilot.run("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- the backup -----------------------------------------------------------------------------------


@holds("Reinstalling the installed version (--to, --from-file)", "the same-version rule: a no-op that says so")
@pytest.mark.parametrize("how", ["--to", "--from-file"])
def test_installing_the_installed_version_changes_nothing(how, pilot, repo, v1, v2):
    repo.publish_releases(v1, v2)
    args = ["--to", "1.0.0"] if how == "--to" else ["--from-file", str(v1), "--manifest", str(repo.root)]
    result = pilot.run("self-update", "--yes", *args)
    assert result.returncode == 0, result.stderr
    assert "pilot 1.0.0 is already installed" in result.stdout
    assert versions(pilot) == ("1.0.0", None) and pilot.stray_files() == []


@holds("Update, roll back, update again", "the backup is always the last good version other than the install")
def test_the_backup_never_holds_the_installed_version(pilot, repo, v1, v2, v3):
    repo.publish_releases(v2)
    assert pilot.run("self-update", "--yes").returncode == 0
    assert versions(pilot) == ("2.0.0", "1.0.0")
    rolled = pilot.run("self-update", "--rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert versions(pilot) == ("1.0.0", "2.0.0")
    repo.publish_releases(v2, v3)
    assert pilot.run("self-update", "--yes").returncode == 0
    assert versions(pilot) == ("3.0.0", "1.0.0")
    assert pilot.run("self-update", "--rollback").returncode == 0
    assert versions(pilot) == ("1.0.0", "3.0.0")
    again = pilot.run("self-update", "--rollback")  # and back: the two swap, they never become equal
    assert again.returncode == 0 and versions(pilot) == ("3.0.0", "1.0.0")


# --- the trial ------------------------------------------------------------------------------------


@holds("The new version's output goes to a full disk (/dev/full)", "its start is committed before it writes a byte")
def test_unwritable_output_does_not_condemn_the_new_version(pilot, repo, v2):
    repo.publish_releases(v2)
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(pilot.path), "self-update", "--yes"], stdout=full,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **pilot.env}, timeout=180,
                                stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr
    status = pilot.status()
    assert (status["state"], status["bad_versions"], versions(pilot)[0]) == ("committed", [], "2.0.0")


@holds("Ctrl-C, kill or a closed terminal while the new version starts",
       "an interrupted start hands the trial back: no rollback, no bad version; the next start tries again")
@pytest.mark.parametrize("signum", SIGNALS)
def test_an_interrupted_start_is_no_failed_start(signum, pilot, repo, slow_v2, tmp_path):
    repo.publish_releases(slow_v2)
    marker = tmp_path / "marker"
    process = pilot.popen("self-update", "--yes", extra_env={"PILOT_TEST_SLOW_START": "30",
                                                             "PILOT_TEST_MARKER": str(marker)})
    wait_for(lambda: Path(f"{marker}.start").exists() or process.poll() is not None, what="the new version")
    process.send_signal(signum)  # same pid: the process is the new version now
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert "2.0.0 was interrupted while it started; it starts again with your next command" in err
    status = pilot.status()
    assert (status["state"], status["bad_versions"]) == ("pending", [])
    assert versions(pilot) == ("2.0.0", "1.0.0")

    nxt = pilot.run("status")  # the next start is the trial, and it comes up
    assert nxt.returncode == 0, nxt.stderr
    assert pilot.status()["state"] == "committed"


# --- recovery -------------------------------------------------------------------------------------


@holds("The installed version cannot import its application", "--status and --rollback are the entry module's own")
def test_recovery_works_when_the_installed_version_cannot_start(pilot, archives, v1):
    broken = archives.build("3.0.0", overlay=BROKEN["raises"])
    pilot.backup.write_bytes(v1.read_bytes())
    pilot.path.write_bytes(broken.read_bytes())  # put there by hand: no trial, no guard to catch it
    assert "Traceback" in pilot.run("status").stderr  # the application really is broken

    status = pilot.run("self-update", "--status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["running_version"] == "3.0.0"
    rolled = pilot.run("self-update", "--rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back: pilot 1.0.0 is installed" in rolled.stdout
    assert versions(pilot) == ("1.0.0", "3.0.0")
    assert pilot.run("status").returncode == 0


@holds("--no-restart installs a version that cannot start", "its first start is a trial boot under the guard")
def test_no_restart_still_starts_the_new_version_under_the_boot_guard(pilot, repo, archives):
    repo.publish_releases(archives.build("3.0.0", overlay=BROKEN["raises"]))
    installed = pilot.run("self-update", "--yes", "--no-restart")
    assert installed.returncode == 0, installed.stderr
    assert pilot.status()["state"] == "pending"

    listed = pilot.run("task", "list", "--json")  # 3.0.0's first start fails: 1.0.0 answers in the same process
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    status = pilot.status()
    assert (status["state"], status["bad_versions"], versions(pilot)[0]) == ("rolled_back", ["3.0.0"], "1.0.0")


# --- a user's rollback ------------------------------------------------------------------------------


@holds("The version a user rolled back from", "remembered: not offered again, not installed by an idle daemon")
def test_a_rollback_is_remembered_by_the_check_and_the_daemon(pilot, repo, v2, v3):
    repo.publish_releases(v2)
    assert pilot.run("self-update", "--yes").returncode == 0
    assert pilot.run("self-update", "--rollback").returncode == 0
    check = json.loads(pilot.run("self-update", "--check", "--json").stdout)
    assert check["update_available"] is False
    assert check["skipped_versions"] == [{"version": "2.0.0", "reason": "was rolled back on request"}]

    configure(pilot, DAEMON_CONFIG)
    downloads = artifact_requests(repo, "2.0.0")
    daemon = start_daemon(pilot)
    try:
        wait_for(lambda: daemon_status(pilot)["daemon_pid"] == daemon.pid, what="the daemon")
        time.sleep(4)  # several checks and idle periods
        assert daemon_status(pilot)["daemon_version"] == "1.0.0"
        assert artifact_requests(repo, "2.0.0") == downloads
        repo.publish_releases(v2, v3)  # a newer release still can
        wait_for(lambda: daemon_status(pilot)["daemon_version"] == "3.0.0", timeout=90, what="the upgrade to 3.0.0")
        assert daemon_status(pilot)["daemon_pid"] == daemon.pid
        # Stopped once its loop is up (its trial committed): a stop during the new version's boot is an
        # interruption (exit 143), which is another invariant's business.
        wait_for(lambda: pilot.status()["state"] == "committed", timeout=60, what="3.0.0's boot to commit")
    finally:
        code, err = stop_daemon(daemon)
    assert code == 0 and "Traceback" not in err, err


# --- signals ---------------------------------------------------------------------------------------


@holds("Ctrl-C, kill or a closed terminal during the download", "one line, 128+N, the download removed")
@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_the_download(signum, pilot, repo, v1, v2):
    repo.publish_releases(v2)
    path = f"/releases/2.0.0/{v2.name}"
    repo.route(path, trickle(v2.read_bytes(), every=0.05, step=64 * 1024))
    process = pilot.popen("self-update", "--yes")
    wait_for(lambda: artifact_requests(repo, "2.0.0") or any(p.name.startswith(".pilot-download-")
                                                              for p in pilot.bin_dir.iterdir()), what="the download")
    time.sleep(0.3)
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and f"pilot: interrupted ({signal.Signals(signum).name})" in err
    assert versions(pilot) == ("1.0.0", None) and pilot.stray_files() == []
    assert pilot.version() == "pilot 1.0.0"


@holds("SIGTERM during the new version's self-test", "the self-test is killed with the update; nothing is left")
def test_a_signal_during_the_self_test(pilot, repo, slow_v2, tmp_path):
    repo.publish_releases(slow_v2)
    marker = tmp_path / "marker"
    process = pilot.popen("self-update", "--yes", extra_env={"PILOT_TEST_SLOW_SELF_TEST": "30",
                                                             "PILOT_TEST_MARKER": str(marker)})
    wait_for(lambda: Path(f"{marker}.self_test").exists(), what="the self-test")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert "pilot: interrupted (SIGTERM)" in err and "Traceback" not in err
    assert versions(pilot) == ("1.0.0", None) and pilot.stray_files() == []
    survivors = subprocess.run(["pgrep", "-f", "debug self-test"], capture_output=True, text=True).stdout.split()
    assert [pid for pid in survivors if Path(f"/proc/{pid}/cmdline").exists() and
            str(pilot.bin_dir) in Path(f"/proc/{pid}/cmdline").read_text()] == []


@holds("A daemon told to stop during its upgrade", "it abandons the download and stops within seconds")
def test_a_daemon_stops_during_its_upgrade(pilot, repo, v2):
    repo.publish_releases(v2)
    repo.route(f"/releases/2.0.0/{v2.name}", trickle(v2.read_bytes(), every=0.1, step=32 * 1024))
    configure(pilot, DAEMON_CONFIG)
    daemon = start_daemon(pilot)
    try:
        wait_for(lambda: artifact_requests(repo, "2.0.0"), what="the daemon's download")
        time.sleep(0.5)
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code, err = stop_daemon(daemon)
        assert time.monotonic() - started < 5
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert code == 0 and "Traceback" not in err, err
    assert versions(pilot) == ("1.0.0", None) and pilot.stray_files() == []
    assert daemon_status(pilot)["daemon_pid"] is None


# --- the file's owner -------------------------------------------------------------------------------


@holds("`sudo pilot self-update` over a user's install", "the new file takes the old one's owner, group and mode")
@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand a file to another user")
def test_the_install_keeps_its_owner_group_and_mode(pilot, repo, v2):
    repo.publish_releases(v2)
    os.chown(pilot.path, 1234, 5678)
    pilot.path.chmod(0o750)

    def owner(path: Path) -> tuple[int, int, int]:
        info = path.stat()
        return info.st_uid, info.st_gid, info.st_mode & 0o7777

    assert pilot.run("self-update", "--yes").returncode == 0
    assert owner(pilot.path) == owner(pilot.backup) == (1234, 5678, 0o750)
    assert pilot.run("self-update", "--rollback").returncode == 0
    assert owner(pilot.path) == owner(pilot.backup) == (1234, 5678, 0o750)


# --- settings ----------------------------------------------------------------------------------------


@holds("A bad setting (PILOT_BOOT_TIMEOUT, PILOT_UPDATE_DEADLINE, the manifest URL)",
       "parsed before any request: one line naming it, exit 4")
@pytest.mark.parametrize("env, named", [
    ({"PILOT_BOOT_TIMEOUT": "soon"}, "PILOT_BOOT_TIMEOUT"),
    ({"PILOT_UPDATE_DEADLINE": "-1"}, "PILOT_UPDATE_DEADLINE"),
    ({"PILOT_MANIFEST_URL": "http://releases.example.org/stable/manifest.json"}, "the manifest URL"),
])
def test_a_bad_setting_is_refused_before_any_request(env, named, pilot, repo, v2):
    repo.publish_releases(v2)
    result = pilot.run("self-update", "--yes", extra_env=env)
    assert result.returncode == 4, result.stderr
    assert named in one_line(result)
    assert repo.server.requests == [] and versions(pilot) == ("1.0.0", None)


@holds("PILOT_HOME that is a file, or an install directory that is read-only",
       "found before the download: exit 4 for the home, 3 for the install directory")
@pytest.mark.parametrize("where", ["home", "install directory"])
def test_an_unusable_place_is_found_before_the_download(where, pilot, repo, v2, tmp_path):
    repo.publish_releases(v2)
    if where == "home":
        home = tmp_path / "home-file"
        home.write_text("")
        result = pilot.run("self-update", "--yes", extra_env={"PILOT_HOME": str(home)})
        assert result.returncode == 4, result.stderr
    else:
        with mounted("--bind", str(pilot.bin_dir), target=pilot.bin_dir):
            if subprocess.run(["mount", "-o", "remount,bind,ro", str(pilot.bin_dir)]).returncode != 0:
                pytest.skip("cannot remount read-only here")
            result = pilot.run("self-update", "--yes")
        assert result.returncode == 3, result.stderr
    one_line(result)
    assert repo.server.requests == []


# --- the daemon ------------------------------------------------------------------------------------------


@holds("A daemon running while the user updates by hand",
       "it says it is older than the install, and its upgrade execs the installed archive")
def test_a_daemon_older_than_the_install(pilot, repo, v2):
    repo.publish_releases(v2)
    configure(pilot, "upgrade:\n  auto_check: false\n")
    daemon = start_daemon(pilot)
    try:
        wait_for(lambda: daemon_status(pilot)["daemon_pid"] == daemon.pid, what="the daemon")
        assert pilot.run("self-update", "--yes").returncode == 0
        status = pilot.run("status")
        assert "still on 1.0.0: pilot 2.0.0 is installed" in status.stdout
        assert daemon_status(pilot)["daemon_version"] == "1.0.0"
    finally:
        code, err = stop_daemon(daemon)
    assert code == 0 and "Traceback" not in err, err


@holds("A daemon older than the install upgrades", "by exec'ing the installed archive: nothing downloaded again")
def test_an_older_daemon_upgrades_into_the_installed_archive(pilot, repo, v2):
    repo.publish_releases(v2)
    configure(pilot, DAEMON_CONFIG)
    daemon = start_daemon(pilot)
    try:
        wait_for(lambda: daemon_status(pilot)["daemon_pid"] == daemon.pid, what="the daemon")
        copy = pilot.bin_dir / ".copy"
        copy.write_bytes(v2.read_bytes())
        os.replace(copy, pilot.path)  # a hand update (cp + mv) while the daemon runs and idles
        wait_for(lambda: daemon_status(pilot)["daemon_version"] == "2.0.0", timeout=90, what="the exec")
        assert daemon_status(pilot)["daemon_pid"] == daemon.pid
        assert artifact_requests(repo, "2.0.0") == 0
    finally:
        code, err = stop_daemon(daemon)
    assert code == 0 and "Traceback" not in err, err


# --- the checker ---------------------------------------------------------------------------------------------


@holds("A release server that answers 503 with Retry-After", "the daemon's next check waits that long")
def test_the_checker_honours_retry_after(pilot, repo, v2):
    repo.publish_releases(v2)
    repo.route("/stable/manifest.json", failing([503] * 50, headers={"Retry-After": "3600"}))
    configure(pilot, DAEMON_CONFIG)
    daemon = start_daemon(pilot)
    try:
        wait_for(lambda: "/stable/manifest.json" in repo.server.requests, what="the first check")
        time.sleep(5)  # five check intervals
        assert repo.server.requests.count("/stable/manifest.json") == 1
    finally:
        code, err = stop_daemon(daemon)
    assert code == 0 and "Traceback" not in err, err
