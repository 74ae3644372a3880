"""`pilot install` and `pilot uninstall` on a real archive, as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pilot import launcher
from pilot.daemon.lock import running_daemon
from tests.support.archives import build_metadata
from tests.support.mounts import mounted

pytestmark = pytest.mark.slow


def pilot(archive: Path, *args: str) -> subprocess.CompletedProcess:
    # The user's shell decides which profile the PATH hint names; CI may have no SHELL at all.
    return subprocess.run([sys.executable, str(archive), *args], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL, env={**os.environ, "SHELL": "/bin/bash"})


def unpacked(archive: Path) -> Path:
    return Path(launcher.extraction_dir(build_metadata(archive)["build_id"]))


@pytest.fixture
def shiv_root(tmp_path, monkeypatch) -> Path:
    """Unpacked copies of this test's own, so that uninstall's removals can be seen."""
    root = tmp_path / "shiv"
    monkeypatch.setenv("SHIV_ROOT", str(root))
    return root


def test_install_copies_the_archive_and_a_second_install_replaces_it_keeping_a_backup(v1, v2, tmp_path, shiv_root):
    target = tmp_path / "bin"
    first = pilot(v1, "install", "--dir", str(target), "--json")
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["installed"] == str(target / "pilot") and answer["replaced"] is None and answer["changed"]
    assert answer["on_path"] is False and answer["path_hint"].endswith(f"{target}:$PATH\"' >> ~/.bashrc")
    assert (target / "pilot").read_bytes() == v1.read_bytes()

    again = pilot(target / "pilot", "install", "--dir", str(target))  # the installed copy, installing itself
    assert (again.returncode, again.stdout.splitlines()[0]) == (0, f"pilot 1.0.0 is installed at {target}/pilot "
                                                                   "already")
    newer = pilot(v2, "install", "--dir", str(target))
    assert newer.returncode == 0, newer.stderr
    assert newer.stdout.startswith(f"installed pilot 2.0.0 at {target}/pilot (it replaced 1.0.0, kept as "
                                   "pilot.backup)")
    assert (target / "pilot").read_bytes() == v2.read_bytes()
    assert (target / "pilot.backup").read_bytes() == v1.read_bytes()
    assert sorted(p.name for p in target.iterdir()) == ["pilot", "pilot.backup"]  # no temp file left


def test_install_refuses_to_replace_a_file_that_is_not_pilot(v1, tmp_path):
    target = tmp_path / "bin"
    target.mkdir()
    (target / "pilot").write_text("#!/bin/sh\necho another tool\n")
    result = pilot(v1, "install", "--dir", str(target))
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr == f"pilot: {target}/pilot exists and is not a Pilot archive (move it away, or choose " \
                            "another --dir)\n"
    assert (target / "pilot").read_text().endswith("another tool\n")


def test_install_into_a_directory_it_cannot_write_is_one_line(v1, tmp_path):
    target = tmp_path / "locked"
    if os.geteuid() != 0:
        target.mkdir(mode=0o555)
        result = pilot(v1, "install", "--dir", str(target))
    else:  # root writes into a mode-555 directory anyway, not into a read-only file system (as CI runs)
        with mounted("-t", "tmpfs", "-o", "ro", "tmpfs", target=target):
            result = pilot(v1, "install", "--dir", str(target))
    assert result.returncode == 3 and result.stderr.count("\n") == 1 and "cannot write to" in result.stderr


def test_install_waits_for_no_update_it_is_refused_while_one_runs(v1, tmp_path):
    lock = launcher.UpdateInProgress()
    assert lock.acquire()
    try:
        result = pilot(v1, "install", "--dir", str(tmp_path / "bin"))
    finally:
        lock.release()
    assert result.returncode == 3
    assert result.stderr == "pilot: an update of this Pilot is in progress (run this again when it has ended)\n"
    assert not (tmp_path / "bin" / "pilot").exists()


def test_uninstall_asks_and_without_an_answer_removes_nothing(v1, tmp_path, shiv_root):
    target = tmp_path / "bin"
    assert pilot(v1, "install", "--dir", str(target)).returncode == 0
    result = pilot(target / "pilot", "uninstall")
    assert result.returncode == 2
    assert result.stderr == "pilot: not removing Pilot without confirmation (add --yes to go ahead without asking)\n"
    assert (target / "pilot").exists() and unpacked(v1).exists()


def test_uninstall_removes_the_archive_its_backup_and_both_unpacked_copies_and_keeps_the_data(v1, v2, tmp_path,
                                                                                               shiv_root,
                                                                                               isolated_home):
    target = tmp_path / "bin"
    assert pilot(v1, "install", "--dir", str(target)).returncode == 0
    assert pilot(v2, "install", "--dir", str(target)).returncode == 0
    for archive in (target / "pilot", target / "pilot.backup"):  # each unpacks its copy
        assert pilot(archive, "status").returncode == 0
    assert unpacked(v1).exists() and unpacked(v2).exists()
    link = tmp_path / "elsewhere" / "pilot"  # run through a link, as some put it on PATH
    link.parent.mkdir()
    link.symlink_to(target / "pilot")
    result = pilot(link, "uninstall", "--yes")
    assert result.returncode == 0, result.stderr
    assert not link.exists() and not link.is_symlink() and list(target.iterdir()) == []
    assert not shiv_root.exists()  # both copies, their locks, and the then empty root
    assert isolated_home.exists() and f"kept {isolated_home} (tasks and history)" in result.stdout


def test_uninstall_purge_removes_pilot_home_too(v1, tmp_path, shiv_root, isolated_home):
    target = tmp_path / "bin"
    assert pilot(v1, "install", "--dir", str(target)).returncode == 0
    assert pilot(target / "pilot", "task", "add", "x", "--", "true").returncode == 0
    result = pilot(target / "pilot", "uninstall", "--purge", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert str(isolated_home) in answer["removed"] and answer["kept"] is None
    assert not isolated_home.exists() and list(target.iterdir()) == []


def test_uninstall_is_refused_while_the_daemon_runs(v1, tmp_path, isolated_home):
    target = tmp_path / "bin"
    assert pilot(v1, "install", "--dir", str(target)).returncode == 0
    daemon = subprocess.Popen([sys.executable, str(target / "pilot"), "start"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while running_daemon(isolated_home) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        result = pilot(target / "pilot", "uninstall", "--purge", "--yes")
        assert result.returncode == 2
        assert result.stderr == f"pilot: the Pilot daemon runs (pid {daemon.pid}) (stop it first: pilot stop --wait)\n"
        assert (target / "pilot").exists() and isolated_home.exists()
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)


def test_install_and_uninstall_outside_an_archive_say_what_to_use(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    for command in (["install"], ["uninstall", "--yes"]):
        result = subprocess.run([sys.executable, "-m", "pilot", *command], capture_output=True, text=True, cwd=repo,
                                timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(f"pilot: pilot {command[0]} works on the downloaded archive"), result.stderr
        assert result.stderr.count("\n") == 1
