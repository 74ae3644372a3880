"""pilot.update.early: unpacking a new archive while it downloads, and leaving nothing when it must not."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pilot import launcher
from pilot.update import early
from pilot.update.early import EarlyUnpack
from tests.support.archives import build_metadata


def tree(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file under directory: its mode and content hash (the marker and the in-use lock aside)."""
    found = {}
    for path in directory.rglob("*"):
        if path.is_file() and path.name != launcher.IN_USE_FILE:
            found[path.relative_to(directory).as_posix()] = (path.stat().st_mode, hashlib.sha256(
                path.read_bytes()).hexdigest())
    return found


def feed(unpack: EarlyUnpack, data: bytes, target: Path, chunk: int = 64 * 1024, stop_at: int | None = None) -> None:
    """Write data to target the way install.receive does, telling the unpacker after each chunk."""
    with target.open("wb") as out:
        for start in range(0, len(data) if stop_at is None else stop_at, chunk):
            out.write(data[start:start + chunk])
            out.flush()
            unpack.written(min(start + chunk, len(data)))


def build_id_of(archive: Path) -> str:
    return build_metadata(archive)["build_id"]


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")) \
        if root.exists() else []


@pytest.fixture
def shiv_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "shiv"
    monkeypatch.setenv("SHIV_ROOT", str(root))
    return root


def test_it_unpacks_exactly_what_the_launcher_unpacks(v1, tmp_path, shiv_root):
    target = tmp_path / "candidate"
    unpack = EarlyUnpack(target, v1.stat().st_size, "always")
    feed(unpack, v1.read_bytes(), target)
    build_id = build_id_of(v1)
    assert unpack.finish(build_id) is True
    directory = Path(launcher.extraction_dir(build_id))
    assert launcher.extraction_complete(str(directory), build_id)
    assert leftovers(shiv_root) == []  # the staging copy became the extraction
    reference = tmp_path / "reference"
    launcher.extract(str(v1), build_id, str(reference / f"pilot_{build_id}"))
    assert tree(directory) == tree(reference / f"pilot_{build_id}")
    assert launcher.extract(str(v1), build_id, str(directory)) is False  # the launcher finds it complete


def test_a_copy_another_process_finished_first_is_kept(v1, tmp_path, shiv_root):
    build_id = build_id_of(v1)
    directory = Path(launcher.extraction_dir(build_id))
    launcher.extract(str(v1), build_id, str(directory))
    before = (directory / launcher.COMPLETE_FILE).stat().st_ino
    target = tmp_path / "candidate"
    unpack = EarlyUnpack(target, v1.stat().st_size, "always")
    feed(unpack, v1.read_bytes(), target)
    assert unpack.finish(build_id) is True
    assert (directory / launcher.COMPLETE_FILE).stat().st_ino == before and leftovers(shiv_root) == []


def test_a_download_that_fails_midway_leaves_nothing(v1, tmp_path, shiv_root):
    target = tmp_path / "candidate"
    unpack = EarlyUnpack(target, v1.stat().st_size, "always")
    feed(unpack, v1.read_bytes(), target, stop_at=v1.stat().st_size // 2)
    unpack.abandon()
    assert leftovers(shiv_root) == [] and not Path(launcher.extraction_dir(build_id_of(v1))).exists()


def test_a_copy_of_another_build_than_the_verified_one_is_never_put_in_place(v1, tmp_path, shiv_root):
    target = tmp_path / "candidate"
    unpack = EarlyUnpack(target, v1.stat().st_size, "always")
    feed(unpack, v1.read_bytes(), target)
    assert unpack.finish("0" * 64) is False
    assert leftovers(shiv_root) == [] and not list(shiv_root.glob("pilot_*"))


@pytest.mark.parametrize(("received_in", "mode", "runs"), [
    (0.01, "auto", False),  # 1 MiB in 10 ms: loopback, a LAN: the cores are busy with the download
    (1.0, "auto", True),  # 1 MiB in a second: a real network, the cores are idle
    (1.0, "never", False),
    (0.01, "always", True),
])
def test_auto_unpacks_early_only_when_the_network_is_the_bottleneck(tmp_path, received_in, mode, runs):
    now = [5.0]  # the connection took its time: it does not count
    unpack = EarlyUnpack(tmp_path / "candidate", 10 * 1024 * 1024, mode, clock=lambda: now[0])
    now[0] = 6.0
    unpack.written(64 * 1024)  # the first chunk: from here the rate counts
    now[0] += received_in
    unpack.written(64 * 1024 + early.AUTO_SAMPLE_BYTES)
    assert unpack.running is runs
    unpack.abandon()


# --- archives it must not unpack ---------------------------------------------------------------


def hostile_archive(members: dict[str, bytes], *, metadata: dict | None = None, inflated: int | None = None) -> bytes:
    """A preamble, the metadata, then a stored payload holding members, as the build lays them out."""
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)  # not zf.writestr(name): that would normalise the name
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    inner = payload.getvalue()
    if inflated is not None:  # lie about the first member's size in its local header
        inner = inner[:22] + inflated.to_bytes(4, "little") + inner[26:]
    out = io.BytesIO()
    out.write(b"#!/bin/sh\nexit 5\n")
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(launcher.METADATA_MEMBER, json.dumps(metadata or {"build_id": "a" * 64}))
        zf.writestr(zipfile.ZipInfo(launcher.PAYLOAD_MEMBER), inner)
    return out.getvalue()


@pytest.mark.parametrize(("members", "options"), [
    ({"../escaped.py": b"x"}, {}),
    ({"site-packages/../../escaped.py": b"x"}, {}),
    ({"/etc/escaped": b"x"}, {}),
    ({"site-packages/zeros.bin": b"\0" * 20_000_000}, {}),  # 20 MB from 20 KB: past 16x the download
    ({"site-packages/big.bin": b"\0" * 1000}, {"inflated": 1001}),  # inflates to less than it says
    ({"site-packages/x.py": b"x"}, {"metadata": {"build_id": "../../x"}}),
], ids=["climbs out", "climbs out deeper", "absolute", "inflates past the cap", "a size that lies",
        "odd build id"])
def test_a_hostile_payload_is_abandoned_and_nothing_lands_outside_the_staging_copy(tmp_path, shiv_root, members,
                                                                                     options):
    data = hostile_archive(members, **options)
    target = tmp_path / "candidate"
    unpack = EarlyUnpack(target, len(data), "always")
    feed(unpack, data, target)
    assert unpack.finish("a" * 64) is False
    assert isinstance(unpack.error, early.Abandoned)
    assert leftovers(shiv_root) == [] and not list(shiv_root.glob("pilot_*"))
    assert not list(tmp_path.rglob("escaped*")) and not Path("/etc/escaped").exists()


def test_staging_copies_of_dead_updaters_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for pid in (dead, str(os.getpid()), str(os.getppid())):
        (tmp_path / f".pilot_{'b' * 64}.early-{pid}" / "site-packages").mkdir(parents=True)
    removed = early.sweep_staging(tmp_path)
    assert [p.name.rpartition("-")[2] for p in removed] == [dead]
    assert len(list(tmp_path.iterdir())) == 2


# --- after a delta: the installed build's files, linked ------------------------------------------


def same_members(old: Path, new: Path) -> frozenset[str]:
    from tests.support.archives import payload

    with payload(old) as a, payload(new) as b:
        theirs = {(i.filename, i.CRC, i.file_size) for i in a.infolist()}
        return frozenset(i.filename for i in b.infolist() if (i.filename, i.CRC, i.file_size) in theirs)


def test_after_a_delta_the_new_copy_links_the_installed_builds_files(v1, v2, tmp_path, shiv_root):
    old_id, new_id = build_id_of(v1), build_id_of(v2)
    launcher.extract(str(v1), old_id, launcher.extraction_dir(old_id))
    same = same_members(v1, v2)
    assert len(same) > 1000
    assert early.reuse_extraction(v2, new_id, old_id, same) is True
    directory = Path(launcher.extraction_dir(new_id))
    assert launcher.extraction_complete(str(directory), new_id) and leftovers(shiv_root) == []
    reference = tmp_path / "reference" / f"pilot_{new_id}"
    launcher.extract(str(v2), new_id, str(reference))
    assert tree(directory) == tree(reference)  # what the launcher would have unpacked, byte for byte
    linked = [p for p in directory.rglob("*") if p.is_file() and p.stat().st_nlink > 1]
    # The same members this interpreter unpacks are links to the installed build's files.
    assert len(linked) >= len([name for name in same if launcher.unpacked_here(name)]) - 10
    assert not (directory / "pilot_build.py").stat().st_nlink > 1  # what differs was unpacked


def test_without_a_complete_installed_copy_nothing_is_reused(v1, v2, shiv_root):
    assert early.reuse_extraction(v2, build_id_of(v2), build_id_of(v1), same_members(v1, v2)) is False
    assert not Path(launcher.extraction_dir(build_id_of(v2))).exists() and leftovers(shiv_root) == []
