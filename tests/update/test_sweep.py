"""Temp files a killed update left beside the install are swept by the next one; live owners' never are."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pilot.update.install import LEGACY_TEMP_AGE, TEMP_PREFIX, Paths, new_temp, sweep_stale_temps


@pytest.fixture
def paths(tmp_path) -> Paths:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pilot").write_bytes(b"v1")
    return Paths.for_archive(bin_dir / "pilot")


@pytest.fixture(scope="module")
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_new_temp_names_carry_the_owner_pid(paths):
    temp = new_temp(paths.install.parent)
    assert temp.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-") and temp.name.endswith(".partial")


def test_files_of_dead_updates_are_removed_and_nothing_else(paths, dead_pid):
    directory = paths.install.parent
    dead = [f"{TEMP_PREFIX}{dead_pid}-abc.partial", f".pilot.backup.{dead_pid}.partial", f".pilot.{dead_pid}.current"]
    alive = [f"{TEMP_PREFIX}{os.getppid()}-abc.partial", f"{TEMP_PREFIX}{os.getpid()}-abc.partial",
             f".pilot.backup.{os.getppid()}.partial"]
    unrelated = ["pilot.backup", "notes.partial", ".other.123.partial", f"{TEMP_PREFIX}x"]
    for name in dead + alive + unrelated:
        (directory / name).write_bytes(b"x")

    removed = sweep_stale_temps(paths)

    assert sorted(p.name for p in removed) == sorted(dead)
    assert sorted(p.name for p in directory.iterdir()) == sorted(["pilot", *alive, *unrelated])


def test_a_temp_without_a_pid_is_removed_only_once_it_is_old(paths):
    legacy = paths.install.parent / f"{TEMP_PREFIX}k2j4h.partial"
    legacy.write_bytes(b"x")
    assert sweep_stale_temps(paths) == []
    assert sweep_stale_temps(paths, now=time.time() + LEGACY_TEMP_AGE + 1) == [legacy]


def test_a_missing_directory_is_nothing_to_sweep(tmp_path):
    assert sweep_stale_temps(Paths.for_archive(tmp_path / "gone" / "pilot")) == []


def test_keeping_a_backup_that_is_already_a_link_to_the_install_leaves_no_staging_file(paths):
    from pilot.update.install import keep_as

    os.link(paths.install, paths.backup)  # what a swap killed between keep_as and os.replace leaves
    keep_as(paths.install, paths.backup)
    assert sorted(p.name for p in paths.install.parent.iterdir()) == ["pilot", "pilot.backup"]
