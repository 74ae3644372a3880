"""Putting an archive in place (pilot.update.install) with small files instead of real archives."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest

from pilot.errors import InstallError, VerificationError
from pilot.launcher import METADATA_CAP, swap_back
from pilot.update import install
from pilot.update.install import (
    Paths,
    check_metadata,
    ensure_writable,
    keep_as,
    preflight,
    read_metadata,
    receive,
    swap_in,
    temp_file,
)
from pilot.update.manifest import Artifact


@pytest.fixture
def bin_dir(tmp_path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    return directory


@pytest.fixture
def paths(bin_dir) -> Paths:
    return Paths.for_archive(bin_dir / "pilot")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------ Paths


def test_paths_follow_a_symlinked_install_to_where_it_lives(bin_dir, tmp_path):
    real = bin_dir / "pilot-1.0.pyz"
    real.write_bytes(b"v1")
    link = tmp_path / "pilot"
    link.symlink_to(real)
    paths = Paths.for_archive(link)
    assert paths.install == real
    assert paths.backup == bin_dir / "pilot-1.0.pyz.backup"


# ---------------------------------------------------------------------- swap_in, keep_as, swap_back


def test_swap_in_keeps_the_old_archive_as_backup_and_installs_the_new_with_the_install_mode(paths, bin_dir):
    paths.install.write_bytes(b"old archive")
    paths.install.chmod(0o750)
    with temp_file(bin_dir) as candidate:
        candidate.write_bytes(b"new archive")
        assert mode(candidate) == 0o600  # mkstemp's private mode, until the swap
        swap_in(candidate, paths)
    assert paths.install.read_bytes() == b"new archive"
    assert paths.backup.read_bytes() == b"old archive"
    assert mode(paths.install) == 0o750
    assert sorted(os.listdir(bin_dir)) == ["pilot", "pilot.backup"]  # no temp or staging file left


@pytest.mark.parametrize("install_mode", [0o644, 0o755, 0o700, 0o4755])
def test_swap_in_gives_the_new_archive_the_installed_ones_exact_mode(paths, bin_dir, install_mode):
    paths.install.write_bytes(b"old")
    paths.install.chmod(install_mode)
    with temp_file(bin_dir) as candidate:
        candidate.write_bytes(b"new")
        swap_in(candidate, paths)
    assert mode(paths.install) == install_mode == mode(paths.backup)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_an_update_run_as_root_leaves_the_install_to_its_owner(paths, bin_dir):
    paths.install.write_bytes(b"old")
    os.chown(paths.install, 1234, 5678)
    paths.install.chmod(0o750)
    with temp_file(bin_dir) as candidate:  # made by root, as under sudo
        candidate.write_bytes(b"new")
        swap_in(candidate, paths)
    for path in (paths.install, paths.backup):
        info = path.stat()
        assert (info.st_uid, info.st_gid, mode(path)) == (1234, 5678, 0o750), path


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_copied_backup_keeps_the_owner_too(paths, bin_dir, monkeypatch):
    paths.install.write_bytes(b"old")
    os.chown(paths.install, 1234, 5678)

    def no_links(*args):
        raise OSError(18, "Invalid cross-device link")  # a filesystem without hard links

    monkeypatch.setattr(install.os, "link", no_links)
    keep_as(paths.install, paths.backup)
    assert (paths.backup.stat().st_uid, paths.backup.stat().st_gid) == (1234, 5678)


def test_swap_in_without_a_current_install_makes_no_backup(paths, bin_dir):
    with temp_file(bin_dir) as candidate:
        candidate.write_bytes(b"first")
        swap_in(candidate, paths)
    assert paths.install.read_bytes() == b"first"
    assert mode(paths.install) == 0o755
    assert not paths.backup.exists()


def test_keep_as_replaces_an_existing_backup_without_ever_removing_it(paths, bin_dir, monkeypatch):
    paths.install.write_bytes(b"current")
    paths.backup.write_bytes(b"older")
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        seen.append(paths.backup.read_bytes())  # the old backup is whole right up to the rename
        real_replace(src, dst)

    monkeypatch.setattr(install.os, "replace", watching_replace)
    keep_as(paths.install, paths.backup)
    assert seen == [b"older"]
    assert paths.backup.read_bytes() == b"current"
    assert paths.install.read_bytes() == b"current"
    assert sorted(os.listdir(bin_dir)) == ["pilot", "pilot.backup"]


def test_keep_as_hard_links_and_falls_back_to_a_copy(paths, bin_dir, monkeypatch):
    paths.install.write_bytes(b"current")
    keep_as(paths.install, paths.backup)
    assert paths.backup.stat().st_ino == paths.install.stat().st_ino

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(install.os, "link", no_links)
    paths.install.write_bytes(b"changed")
    paths.backup.unlink()
    keep_as(paths.install, paths.backup)
    assert paths.backup.read_bytes() == b"changed"
    assert paths.backup.stat().st_ino != paths.install.stat().st_ino
    assert sorted(os.listdir(bin_dir)) == ["pilot", "pilot.backup"]


def test_swap_back_exchanges_install_and_backup(paths, bin_dir):
    paths.install.write_bytes(b"new")
    paths.backup.write_bytes(b"old")
    swap_back(str(paths.install), str(paths.backup))
    assert paths.install.read_bytes() == b"old"
    assert paths.backup.read_bytes() == b"new"
    swap_back(str(paths.install), str(paths.backup))
    assert paths.install.read_bytes() == b"new"
    assert paths.backup.read_bytes() == b"old"
    assert sorted(os.listdir(bin_dir)) == ["pilot", "pilot.backup"]


# ---------------------------------------------------------------------------- temp_file


def test_temp_file_is_private_beside_the_install_and_removed_on_error(bin_dir):
    with pytest.raises(RuntimeError), temp_file(bin_dir) as path:
        path.write_bytes(b"partial download")
        assert path.parent == bin_dir and path.name.startswith(install.TEMP_PREFIX)
        raise RuntimeError("download failed")
    assert os.listdir(bin_dir) == []


def test_temp_file_is_removed_when_unused_and_tolerates_being_moved(bin_dir, tmp_path):
    with temp_file(bin_dir) as path:
        pass
    assert os.listdir(bin_dir) == []
    with temp_file(bin_dir) as path:
        os.replace(path, bin_dir / "pilot")
    assert os.listdir(bin_dir) == ["pilot"]


# ------------------------------------------------------------------------------ receive


PAYLOAD = bytes(range(256)) * 1000


def artifact_for(data: bytes, *, size: int | None = None, sha256: str | None = None, **extra) -> Artifact:
    return Artifact(python_tag="cp311", platform_tag="linux_x86_64", url="https://example.invalid/pilot.pyz",
                    size=len(data) if size is None else size,
                    sha256=sha256 or hashlib.sha256(data).hexdigest(), **extra)


def chunks(data: bytes, size: int = 4096):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_receive_writes_exactly_the_streamed_bytes_and_reports_progress(tmp_path):
    target = tmp_path / "download"
    seen = []
    receive(chunks(PAYLOAD), target, artifact_for(PAYLOAD), lambda done, total: seen.append((done, total)))
    assert target.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_receive_refuses_more_bytes_than_signed_without_writing_them(tmp_path):
    target = tmp_path / "download"
    consumed = []

    def too_long():  # finite, so a receive that ignores the cap fails instead of hanging
        for _ in range(100):
            consumed.append(1)
            yield b"x" * 4096

    with pytest.raises(VerificationError, match="larger than the 10000 bytes"):
        receive(too_long(), target, artifact_for(b"", size=10_000, sha256="0" * 64))
    assert target.stat().st_size <= 10_000
    assert len(consumed) == 3  # stopped at the first chunk over the cap


def test_receive_refuses_a_short_stream(tmp_path):
    with pytest.raises(VerificationError, match="bytes where the manifest signs"):
        receive(chunks(PAYLOAD[:-1]), tmp_path / "download", artifact_for(PAYLOAD))


def test_receive_refuses_a_wrong_sha256(tmp_path):
    tampered = PAYLOAD[:-1] + b"!"
    with pytest.raises(VerificationError, match="sha256"):
        receive(chunks(tampered), tmp_path / "download", artifact_for(PAYLOAD))


# ----------------------------------------------------------------------- build metadata


BUILD = {"version": "2.0.0", "python_tag": "cp311", "platform_tag": "linux_x86_64", "build_id": "abc123"}


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__main__.py", "print('hi')\n")
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def archive_with(tmp_path: Path, metadata) -> Path:
    return make_zip(tmp_path / "pilot.pyz", {"pilot-build.json": json.dumps(metadata).encode()})


def test_read_metadata_reads_pilot_build_json(tmp_path):
    assert read_metadata(archive_with(tmp_path, BUILD)) == BUILD


def test_check_metadata_accepts_the_signed_version_and_tags(tmp_path):
    archive = archive_with(tmp_path, BUILD)
    assert check_metadata(archive, version="2.0.0", artifact=artifact_for(b"", build_id="abc123")) == BUILD
    assert check_metadata(archive, version="2.0.0", artifact=artifact_for(b"")) == BUILD  # no signed build id


def one_line_refusal(call) -> str:
    with pytest.raises(VerificationError) as raised:
        call()
    message = raised.value.one_line()
    assert "\n" not in message and len(message) < 200
    return message


@pytest.mark.parametrize("metadata, artifact, expected", [
    (dict(BUILD, version="1.9.0"), {}, "says it is version '1.9.0', not 2.0.0"),
    (dict(BUILD, platform_tag="macos_arm64"), {}, "another interpreter or platform"),
    (dict(BUILD, python_tag="cp312"), {}, "another interpreter or platform"),
    (BUILD, {"build_id": "other"}, "build id differs"),
    ([1, 2], {}, "not an object"),
])
def test_check_metadata_refuses_an_archive_that_is_not_the_signed_one(tmp_path, metadata, artifact, expected):
    archive = archive_with(tmp_path, metadata)
    message = one_line_refusal(lambda: check_metadata(archive, version="2.0.0", artifact=artifact_for(b"", **artifact)))
    assert expected in message


@pytest.mark.parametrize("make, expected", [
    (lambda p: make_zip(p, {}), "not a Pilot archive (no readable pilot-build.json)"),
    (lambda p: make_zip(p, {"pilot-build.json": b"{not json"}), "not a Pilot archive"),
    (lambda p: make_zip(p, {"pilot-build.json": b"\xff\xfe"}), "not a Pilot archive"),
    (lambda p: make_zip(p, {"pilot-build.json": b" " * (METADATA_CAP + 1) + b"{}"}), "implausibly large"),
    (lambda p: p.write_bytes(b"#!/usr/bin/env python3\nprint('not a zip')\n"), "not a Pilot archive"),
    (lambda p: p.write_bytes(b""), "not a Pilot archive"),
])
def test_read_metadata_refuses_what_is_not_a_pilot_archive_in_one_line(tmp_path, make, expected):
    archive = tmp_path / "pilot.pyz"
    make(archive)
    assert expected in one_line_refusal(lambda: read_metadata(archive))


def test_read_metadata_of_a_missing_file_is_a_verification_error(tmp_path):
    assert "not a Pilot archive" in one_line_refusal(lambda: read_metadata(tmp_path / "absent.pyz"))


# ----------------------------------------------------------------------- ensure_writable


def test_ensure_writable_refuses_a_directory_the_user_cannot_write(bin_dir, monkeypatch):
    # The suite runs as root, for whom os.access always answers yes and chmod 0o555 changes
    # nothing; so os.access is replaced to play an ordinary user without write permission.
    asked = []

    def access(path, how):
        asked.append((Path(path), how))
        return False

    monkeypatch.setattr(install.os, "access", access)
    with pytest.raises(InstallError) as raised:
        ensure_writable(bin_dir)
    assert asked == [(bin_dir, os.W_OK | os.X_OK)]
    message = raised.value.one_line()
    assert f"cannot write to {bin_dir}" in message and "\n" not in message
    assert raised.value.exit_code == 3


def test_ensure_writable_accepts_a_writable_directory(bin_dir):
    ensure_writable(bin_dir)


# ------------------------------------------------------------------------------ preflight


SELF_TEST = """
import json, os, sys
assert sys.argv[1:] == ["debug", "self-test"], sys.argv
assert "PILOT_FAILPOINT" not in os.environ and "SHIV_FORCE_EXTRACT" not in os.environ
{body}
"""


def stand_in(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "candidate.pyz"
    path.write_text(SELF_TEST.format(body=body))
    return path


@pytest.fixture(autouse=True)
def failpoint_set(monkeypatch):
    """The pre-flight must not pass a failure injection meant for this process on to the candidate."""
    monkeypatch.setenv("PILOT_FAILPOINT", "anything")
    monkeypatch.setenv("SHIV_FORCE_EXTRACT", "1")


def test_preflight_accepts_a_candidate_that_answers_its_version_and_build(tmp_path):
    candidate = stand_in(tmp_path, 'print("extracting...")\n'
                                   'print(json.dumps({"version": "2.0.0", "build_id": "abc", "modules": 9}))')
    preflight(candidate, version="2.0.0", build_id="abc")


@pytest.mark.parametrize("answer, expected", [
    ({"version": "1.0.0", "build_id": "abc"}, "answered '1.0.0', expected 2.0.0"),
    ({"version": "2.0.0", "build_id": "other"}, "self-test answered"),
])
def test_preflight_refuses_a_candidate_that_is_something_else(tmp_path, answer, expected):
    candidate = stand_in(tmp_path, f"print(json.dumps({answer!r}))")
    with pytest.raises(InstallError, match=expected):
        preflight(candidate, version="2.0.0", build_id="abc")


@pytest.mark.parametrize("body, expected", [
    ('sys.stderr.write("Traceback...\\nImportError: libfoo.so missing\\n"); sys.exit(1)',
     "failed its self-test: ImportError: libfoo.so missing"),
    ("sys.exit(3)", "failed its self-test: exit status 3"),
    ('print("no json here")', "failed its self-test"),
    ('print(json.dumps({"version": "2.0.0", "build_id": "abc"})); sys.exit(1)', "failed its self-test"),
])
def test_preflight_refuses_a_candidate_whose_self_test_fails(tmp_path, body, expected):
    with pytest.raises(InstallError) as raised:
        preflight(stand_in(tmp_path, body), version="2.0.0", build_id="abc")
    assert expected in raised.value.one_line()
    assert "\n" not in raised.value.one_line()


def test_preflight_gives_up_on_a_hung_candidate(tmp_path, monkeypatch):
    monkeypatch.setattr(install, "PREFLIGHT_TIMEOUT", 1)
    with pytest.raises(InstallError, match="hung in its self-test"):
        preflight(stand_in(tmp_path, "import time; time.sleep(30)"), version="2.0.0", build_id="abc")


@pytest.mark.parametrize("dashboard", [False, True])
def test_preflight_asks_for_the_dashboard_only_when_told_and_never_passes_on_its_own_setting(
        tmp_path, monkeypatch, dashboard):
    monkeypatch.setenv("PILOT_SELF_TEST_DASHBOARD", "inherited")
    body = ('assert os.environ.get("PILOT_SELF_TEST_DASHBOARD") == ' + repr("1" if dashboard else None) +
            '\nprint(json.dumps({"version": "2.0.0", "build_id": "x"}))')
    preflight(stand_in(tmp_path, body), version="2.0.0", build_id="x", dashboard=dashboard)


def test_preflight_runs_the_candidate_with_this_interpreter(tmp_path):
    body = f'assert sys.executable == {sys.executable!r}\nprint(json.dumps({{"version": "2.0.0", "build_id": "x"}}))'
    preflight(stand_in(tmp_path, body), version="2.0.0", build_id="x")
