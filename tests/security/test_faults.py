"""Faults of the machine and the network, end to end: each must leave a working Pilot and say why in one line."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import sha256
from tests.security.conftest import refused
from tests.support.mounts import mounted
from tests.support.repo_sim import RepoSim, TLSServer, failing

pytestmark = pytest.mark.slow


def survived(name: str, defence: str):
    return pytest.mark.threat("fault", name, defence=defence)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


def updated(pilot, result) -> None:
    assert result.returncode == 0, result.stderr
    assert pilot.version() == "pilot 2.0.0"
    assert pilot.status()["state"] == "committed"
    assert pilot.stray_files() == []


# --- the install directory --------------------------------------------------------------------


@survived("Read-only install directory", "checked before downloading: one line naming the directory, exit 3")
def test_read_only_install_dir(pilot, repo, v2):
    repo.publish_releases(v2)
    before = sha256(pilot.path)
    bin_dir = str(pilot.bin_dir)
    with mounted("--bind", bin_dir, target=pilot.bin_dir):  # root ignores permissions, not a read-only mount
        remount = run(["mount", "-o", "remount,bind,ro", bin_dir])
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
        refused(pilot, pilot.run("self-update", "--yes"), before, "cannot write to", bin_dir)


@survived("Disk full while downloading (a small tmpfs)", "the partial download is removed; InstallError, exit 3")
def test_disk_full(install_factory, v1, repo, v2, tmp_path):
    repo.publish_releases(v2)
    room = v1.stat().st_size + 2 * 1024 * 1024  # the install fits, the download does not
    with mounted("-t", "tmpfs", "-o", f"size={room}", "tmpfs", target=tmp_path / "bin"):
        pilot = install_factory(v1)
        refused(pilot, pilot.run("self-update", "--yes"), sha256(v1),
                "cannot write the new version beside the install: No space left on device")


@survived("File size limit while downloading (RLIMIT_FSIZE)", "as a full disk: EFBIG is an InstallError, exit 3")
def test_file_size_limit(pilot, repo, v2):
    repo.publish_releases(v2)
    before = sha256(pilot.path)
    assert pilot.run("version").returncode == 0  # unpacked before the limit applies

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 1024 * 1024, 4 * 1024 * 1024))

    result = subprocess.run([sys.executable, str(pilot.path), "self-update", "--yes"], capture_output=True,
                            text=True, env={**os.environ, **pilot.env}, timeout=120, preexec_fn=limit)
    refused(pilot, result, before, "cannot write the new version beside the install: File too large")


# --- the server -------------------------------------------------------------------------------


@survived("HTTP 500 then 503 on the manifest", "bounded retries with backoff inside the deadline")
def test_server_errors_are_retried(pilot, repo, v2):
    repo.publish_releases(v2)
    repo.route("/stable/manifest.json", failing([500, 503]))
    updated(pilot, pilot.run("self-update", "--yes"))


@survived("HTTP 429 with Retry-After: 1 on the artifact", "the server's delay is honoured (capped), then retried")
def test_rate_limit_with_retry_after(pilot, repo, v2):
    document = repo.publish_releases(v2)
    path = document["releases"][0]["artifacts"][0]["url"].removeprefix(repo.url)
    repo.route(path, failing([429], headers={"Retry-After": "1"}))
    started = time.monotonic()
    updated(pilot, pilot.run("self-update", "--yes"))
    assert time.monotonic() - started >= 1
    assert repo.server.requests.count(path) == 2


@survived("HTTP 500 for ever", "gives up after the retries: one line, exit 3")
def test_server_errors_for_ever(pilot, repo, v2):
    repo.publish_releases(v2)
    repo.route("/stable/manifest.json", failing([500] * 10))
    refused(pilot, pilot.run("self-update", "--yes"), sha256(pilot.path), "HTTP 500", "gave up after 4 attempts")


@survived("HTTP 404 for the artifact", "not retried; one line, exit 3")
def test_missing_artifact(pilot, repo, v2):
    document = repo.publish_releases(v2)
    (repo.root / document["releases"][0]["artifacts"][0]["url"].removeprefix(repo.url).lstrip("/")).unlink()
    refused(pilot, pilot.run("self-update", "--yes"), sha256(pilot.path), "HTTP 404")


@survived("TLS certificate that does not verify", "TLS is always verified; no fallback, no retry")
def test_tls_that_does_not_verify(pilot, repo, release_key, v2):
    trustme = pytest.importorskip("trustme")
    with TLSServer(repo.root, trustme.CA()) as tls:  # a CA this machine does not trust
        secure = RepoSim(repo.root, tls, release_key)
        secure.publish_releases(v2)
        result = pilot.run("self-update", "--yes", extra_env={"PILOT_MANIFEST_URL": secure.manifest_url})
        refused(pilot, result, sha256(pilot.path), "TLS certificate of 127.0.0.1 did not verify")


# --- other processes --------------------------------------------------------------------------


@survived("Two `pilot self-update` at once", "one update lock; the loser says so in one line or finds nothing to do")
def test_two_updates_at_once(pilot, repo, v2):
    repo.publish_releases(v2)
    first, second = pilot.popen("self-update", "--yes"), pilot.popen("self-update", "--yes")
    outcomes = [(p.returncode, out, err) for p in (first, second) for out, err in [p.communicate(timeout=120)]]
    for code, _, err in outcomes:
        assert "Traceback" not in err
        assert code in (0, 3), err
        assert code == 0 or len([line for line in err.splitlines() if line.startswith("pilot:")]) == 1
    assert sum("(updated from 1.0.0)" in out for _, out, _ in outcomes) >= 1
    assert pilot.version() == "pilot 2.0.0"
    assert pilot.status()["state"] == "committed"
    assert pilot.stray_files() == []


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout} s")


def stop_daemon(daemon: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM, as a service manager stops it; (exit status, stderr). Killed if it takes more than 30 s."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        _, err = daemon.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        raise
    return daemon.returncode, err


def task_done(pilot, title: str) -> dict | None:
    tasks = json.loads(pilot.run("task", "list", "--json").stdout)
    return next((t for t in tasks if t["title"] == title and t["status"] == "done"), None)


@survived("Self-update while a daemon runs from the same archive",
          "the daemon runs from its unpacked copy and never reads the replaced zip")
def test_update_under_a_running_daemon(pilot, repo, v2):
    repo.publish_releases(v2)
    (pilot.home).mkdir(parents=True, exist_ok=True)
    (pilot.home / "config.yaml").write_text("upgrade:\n  auto_check: false\n")
    daemon = pilot.popen("start")
    try:
        wait_for(lambda: json.loads(pilot.run("status", "--json").stdout)["daemon_pid"] == daemon.pid,
                 what="the daemon")
        assert pilot.run("task", "add", "before", "--", "true").returncode == 0
        wait_for(lambda: task_done(pilot, "before"), what="the first task")

        updated(pilot, pilot.run("self-update", "--yes"))

        assert pilot.run("task", "add", "after", "--", sys.executable, "-c", "print('ran')").returncode == 0
        after = wait_for(lambda: task_done(pilot, "after"), what="the task added after the swap")
        assert daemon.poll() is None
        with sqlite3.connect(pilot.home / "pilot.db") as db:
            version, pid = db.execute("SELECT version, pid FROM sessions WHERE id = ?",
                                      (after["session_id"],)).fetchone()
        assert (version, pid) == ("1.0.0", daemon.pid)  # the old daemon ran it
        assert "ran" in after["log_tail"]
    finally:
        code, err = stop_daemon(daemon)
    assert code == 0, err
    assert "Traceback" not in err
