"""`pilot self-update` end to end: real archives, a real HTTP server on 127.0.0.1, real exec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e.conftest import BROKEN, sha256

pytestmark = pytest.mark.slow


def test_update_installs_new_version_keeps_backup_and_commits(v1, v2, release_site, install_factory):
    release_site.publish(v2)
    pilot = install_factory(v1)
    v1_hash = sha256(pilot.path)

    check = pilot.run("self-update", "--check", "--json")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout).items() >= {"current": "1.0.0", "latest": "2.0.0", "update_available": True}.items()

    result = pilot.run("self-update", "--yes")
    assert result.returncode == 0, result.stderr
    assert "pilot 2.0.0 (updated from 1.0.0)" in result.stdout
    assert sha256(pilot.path) == sha256(v2)
    assert sha256(pilot.backup) == v1_hash
    status = pilot.status()
    assert status["state"] == "committed"
    assert (status["from_version"], status["to_version"]) == ("1.0.0", "2.0.0")
    assert pilot.version() == "pilot 2.0.0"
    assert pilot.stray_files() == []

    again = pilot.run("self-update", "--yes")  # no loop: the new version finds nothing newer
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout


def test_check_when_up_to_date(v2, release_site, install_factory):
    release_site.publish(v2)
    pilot = install_factory(v2)
    result = pilot.run("self-update", "--check", "--json")
    assert json.loads(result.stdout)["update_available"] is False


def test_no_restart_installs_and_next_command_runs_new_version(v1, v2, release_site, install_factory):
    release_site.publish(v2)
    pilot = install_factory(v1)
    result = pilot.run("self-update", "--yes", "--no-restart")
    assert result.returncode == 0, result.stderr
    assert "installed pilot 2.0.0" in result.stdout
    assert pilot.version() == "pilot 2.0.0"
    assert pilot.status()["state"] == "pending"  # its first real start is its trial boot
    assert pilot.run("status").returncode == 0
    assert pilot.status()["state"] == "committed"


def test_rollback_then_update_again(v1, v2, release_site, install_factory):
    release_site.publish(v2)
    pilot = install_factory(v1)
    assert pilot.run("self-update", "--yes").returncode == 0

    back = pilot.run("self-update", "--rollback")
    assert back.returncode == 0, back.stderr
    assert pilot.version() == "pilot 1.0.0"
    assert sha256(pilot.backup) == sha256(v2)
    assert pilot.status()["state"] == "rolled_back_by_user"

    again = pilot.run("self-update", "--yes")  # the version rolled back from is not chosen by itself again
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stdout and "2.0.0 was rolled back on request" in again.stderr
    assert pilot.version() == "pilot 1.0.0"

    forward = pilot.run("self-update", "--yes", "--to", "2.0.0")  # but it may be asked for
    assert forward.returncode == 0, forward.stderr
    assert pilot.version() == "pilot 2.0.0"
    assert pilot.status()["user_rollbacks"] == []  # it started: forgiven


def test_rollback_without_backup_says_so(v1, install_factory):
    pilot = install_factory(v1)
    result = pilot.run("self-update", "--rollback")
    assert result.returncode == 3
    assert "no backup" in result.stderr
    assert "Traceback" not in result.stderr


def test_from_file_installs_with_the_same_verification(v1, v2, release_site, install_factory):
    release_site.publish(v2)
    pilot = install_factory(v1)
    result = pilot.run("self-update", "--yes", "--no-restart", "--from-file", str(v2),
                       "--manifest", str(release_site.root))
    assert result.returncode == 0, result.stderr
    assert pilot.version() == "pilot 2.0.0"


def test_from_file_refuses_an_archive_the_manifest_does_not_sign(v1, v2, archives, release_site, install_factory,
                                                                  tmp_path):
    release_site.publish(v2)
    pilot = install_factory(v1)
    forged = tmp_path / "forged.pyz"
    shutil.copyfile(v2, forged)
    with forged.open("ab") as stream:
        stream.write(b"\0")
    before = sha256(pilot.path)
    result = pilot.run("self-update", "--yes", "--from-file", str(forged), "--manifest", str(release_site.root))
    assert result.returncode == 3
    assert "signs" in result.stderr or "sha256" in result.stderr
    assert sha256(pilot.path) == before


# --- refusals: each with its own message, the install byte-identical --------------------------


def tamper_artifact(site, version):
    artifact = site.artifact(version)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))


def sign_with_intruder(site, other_key):
    from pilot.update.signing import encode_signatures, sign

    data = site.manifest.read_bytes()
    signature = encode_signatures([sign(other_key.private, data)])
    for path in signature_files(site.manifest):  # every file that signs these bytes: the intruder controls the site
        path.write_bytes(signature)


def signature_files(manifest) -> list:
    """manifest.json.sig and the immutable copy a client verifies manifest.json with (manifests/<serial>.json.sig)."""
    serial = json.loads(manifest.read_bytes())["serial"]
    return [manifest.parent / "manifest.json.sig", manifest.parent / "manifests" / f"{serial}.json.sig"]


def truncate_downloads(site):
    def half_body(handler):
        if not handler.path.endswith(".pyz"):
            return False
        data = (site.root / handler.path.lstrip("/")).read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.close_connection = True
        return True

    site.server.override = half_body


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("tampered artifact", "sha256"),
        ("unknown key", "signature"),
        ("expired manifest", "expired"),
        ("truncated download", "ended after"),
    ],
)
def test_refusals_leave_the_install_untouched(attack, message, v1, v2, release_site, install_factory, other_key):
    if attack == "expired manifest":  # issued in 2020, valid for a day
        release_site.publish(v2, "--expires-in", "1d", env={**os.environ, "PILOT_RELEASE_NOW": "1600000000"})
    else:
        release_site.publish(v2)
    if attack == "tampered artifact":
        tamper_artifact(release_site, "2.0.0")
    elif attack == "unknown key":
        sign_with_intruder(release_site, other_key)
    elif attack == "truncated download":
        truncate_downloads(release_site)
    pilot = install_factory(v1)
    before = sha256(pilot.path)

    result = pilot.run("self-update", "--yes")

    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pilot:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sha256(pilot.path) == before
    assert not pilot.backup.exists()
    assert pilot.stray_files() == []
    assert pilot.version() == "pilot 1.0.0"


def test_unreachable_server_is_one_line_and_changes_nothing(v1, install_factory):
    import socket

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    pilot = install_factory(v1)
    before = sha256(pilot.path)
    result = pilot.run("self-update", "--yes", extra_env={
        "PILOT_MANIFEST_URL": f"http://127.0.0.1:{closed}/stable/manifest.json"})
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "could not connect" in result.stderr
    assert sha256(pilot.path) == before


def test_no_artifact_for_this_platform(v1, v2, release_site, install_factory, release_key):
    from pilot.update.signing import encode_signatures, sign

    release_site.publish(v2)
    document = json.loads(release_site.manifest.read_bytes())
    for artifact in document["releases"][0]["artifacts"]:  # the one archive, under each interpreter
        artifact["platform_tag"] = "linux_riscv64"
    data = (json.dumps(document, indent=2) + "\n").encode()
    release_site.manifest.write_bytes(data)
    for path in signature_files(release_site.manifest):
        path.write_bytes(encode_signatures([sign(release_key.private, data)]))
    pilot = install_factory(v1)
    result = pilot.run("self-update", "--yes")
    assert result.returncode == 3
    assert "has no build for cp311-linux_x86_64 (it has cp311-linux_riscv64, cp312-linux_riscv64, " \
           "cp313-linux_riscv64)" in result.stderr
    assert pilot.version() == "pilot 1.0.0"


def test_replayed_older_manifest_is_refused(v1, v2, archives, release_site, install_factory):
    release_site.publish(v2)
    old_manifest = release_site.manifest.read_bytes()
    old_signatures = (release_site.manifest.parent / "manifest.json.sig").read_bytes()
    release_site.publish(archives.build("2.1.0"))
    pilot = install_factory(v1)
    assert pilot.run("self-update", "--check").returncode == 0  # accepts serial 2

    release_site.manifest.write_bytes(old_manifest)
    (release_site.manifest.parent / "manifest.json.sig").write_bytes(old_signatures)
    before = sha256(pilot.path)
    result = pilot.run("self-update", "--yes")
    assert result.returncode == 3
    assert "replayed" in result.stderr
    assert sha256(pilot.path) == before


# --- a new version that fails to boot is rolled back by itself --------------------------------


@pytest.mark.parametrize("failure", ["raises", "hangs"])
def test_failing_boot_rolls_back_in_the_same_process(failure, v2, archives, release_site, install_factory):
    v3 = archives.build("3.0.0", overlay=BROKEN[failure])
    release_site.publish(v2)
    release_site.publish(v3)
    pilot = install_factory(v2)
    v2_hash = sha256(pilot.path)

    process = pilot.popen("self-update", "--yes", extra_env={"PILOT_BOOT_TIMEOUT": "8"})
    stdout, stderr = process.communicate(timeout=180)

    assert process.returncode == 3, stdout + stderr
    assert "rolled back to 2.0.0" in stderr
    assert sha256(pilot.path) == v2_hash
    status = pilot.status()
    assert status["state"] == "rolled_back"
    assert status["to_version"] == "3.0.0"
    assert status["rollback_pid"] == process.pid  # the old version took over in the very same process
    assert ("RuntimeError" in status["reason"]) if failure == "raises" else ("hang" in status["reason"])
    assert status["bad_versions"] == ["3.0.0"]

    again = pilot.run("self-update", "--yes")  # the bad version is never installed again automatically
    assert again.returncode == 0
    assert "up to date" in again.stdout
    assert "3.0.0 failed to start here before" in again.stderr
    assert sha256(pilot.path) == v2_hash


def test_hard_crash_during_boot_is_rolled_back_at_next_start(v2, archives, release_site, install_factory):
    v3 = archives.build("3.0.0", overlay=BROKEN["exits"])
    release_site.publish(v2)
    release_site.publish(v3)
    pilot = install_factory(v2)
    v2_hash = sha256(pilot.path)

    crashed = pilot.run("self-update", "--yes")
    assert crashed.returncode == 7  # os._exit in the new version: nothing of Pilot ran after it
    assert sha256(pilot.path) == sha256(v3)

    next_start = pilot.run("version")  # the guard restores v2, which says so once and runs the command
    assert next_start.returncode == 0
    assert "rolled back from 3.0.0 to 2.0.0" in next_start.stderr
    assert "2.0.0" in next_start.stdout
    assert sha256(pilot.path) == v2_hash
    assert "rolled back" not in pilot.run("version").stderr  # told once
    status = pilot.status()
    assert status["state"] == "rolled_back"
    assert status["to_version"] == "3.0.0"
    assert "did not finish starting" in status["reason"]
    assert status["running_version"] == "2.0.0"
    assert pilot.version() == "pilot 2.0.0"


def test_second_update_is_refused_while_one_holds_the_lock(v1, v2, release_site, install_factory):
    from pilot.launcher import UpdateInProgress

    release_site.publish(v2)
    pilot = install_factory(v1)
    held = UpdateInProgress()
    assert held.acquire()
    try:
        result = pilot.run("self-update", "--yes", timeout=60)
    finally:
        held.release()
    assert result.returncode == 3
    assert "another update is running" in result.stderr
    assert pilot.version() == "pilot 1.0.0"


def test_package_manager_installs_are_refused():
    result = subprocess.run([sys.executable, "-m", "pilot", "self-update", "--yes"], capture_output=True, text=True)
    assert result.returncode == 3
    assert "git pull" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
