"""Installs made before the universal archive: they read the new manifest and update to the new archive.

The manifest keeps the shape every installed client's schema reads (one entry per interpreter, here all
naming the one archive), and the archive keeps `python_tag` (its oldest interpreter) beside `python_tags`
for those clients' own checks. An archive built by the last commit that made one archive per interpreter
updates to the universal one, which then runs under every supported Python.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.archives import CACHE, REPO, build_metadata
from tests.support.pythons import interpreters, need

pytestmark = pytest.mark.slow
LAST_PER_INTERPRETER_COMMIT = "b38525f"  # its build.py made pilot-V-cp311-linux_x86_64.pyz


@pytest.fixture(scope="session")
def legacy_v1(release_key) -> Path:
    """Version 1.0.0 as the per-interpreter build made it, trusting the tests' release key; built once, cached."""
    commit = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{LAST_PER_INTERPRETER_COMMIT}^{{commit}}"],
                            cwd=REPO, capture_output=True, text=True)
    if commit.returncode != 0:
        pytest.skip(f"commit {LAST_PER_INTERPRETER_COMMIT} is not in this clone's history (a shallow clone?)")
    slot = CACHE / f"legacy-{commit.stdout.strip()[:16]}-{release_key.public.keyid[:16]}"
    done = slot / "archive.txt"
    if done.exists() and Path(done.read_text().strip()).exists():
        return Path(done.read_text().strip())
    shutil.rmtree(slot, ignore_errors=True)
    tree = slot / "tree"
    tree.mkdir(parents=True)
    snapshot = subprocess.run(["git", "archive", commit.stdout.strip()], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(snapshot.stdout)) as archive:
        archive.extractall(tree, filter="data")
    tools = REPO / "build" / f".venv-cp{sys.version_info[0]}{sys.version_info[1]}"  # the build tools this run uses
    env = {**os.environ, "PILOT_TOOLS_VENV": str(tools), "SOURCE_DATE_EPOCH": "1700000000"}
    result = subprocess.run([sys.executable, str(tree / "build" / "build.py"), "--version", "1.0.0", "--out",
                             str(slot / "dist"), "--trusted-key", str(release_key.public_path)], capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    done.write_text(str(path))
    return path


def test_an_install_from_before_the_universal_archive_updates_to_it_and_then_runs_under_every_python(
        legacy_v1, v2, release_site, install_factory):
    legacy = build_metadata(legacy_v1)
    if legacy["python_tag"] != f"cp{sys.version_info[0]}{sys.version_info[1]}":
        pytest.skip(f"the legacy archive is for {legacy['python_tag']}")
    assert "python_tags" not in legacy and legacy_v1.name.endswith(f"-{legacy['python_tag']}-"
                                                                  f"{legacy['platform_tag']}.pyz")
    release_site.publish(v2)
    pilot = install_factory(legacy_v1)
    assert pilot.version() == "pilot 1.0.0"
    check = pilot.run("self-update", "--check")
    assert check.returncode == 0, check.stderr  # the old client reads (and verifies) the new manifest
    result = pilot.run("self-update", "--yes")
    assert result.returncode == 0, result.stderr
    assert "pilot 2.0.0 (updated from 1.0.0)" in result.stdout
    assert pilot.status()["state"] == "committed"
    supported = ["cp311", "cp312", "cp313"]
    assert build_metadata(pilot.path)["python_tags"] == supported
    found = interpreters()
    # Every one of them, those this machine has first: a missing one then skips the test, saying which,
    # after the others ran.
    for tag in sorted(supported, key=lambda tag: tag not in found):
        pilot.python = str(need(found.get(tag), tag))
        assert pilot.run("status").returncode == 0, tag
        assert pilot.version() == "pilot 2.0.0", tag


def test_the_universal_archive_is_at_most_115_percent_of_a_single_interpreter_one(legacy_v1, v1):
    """Three interpreters' native code, in less than the room one interpreter's bytecode took: the dependencies
    travel as sources (smaller than their .pyc files), and only cffi's and PyYAML's extensions come thrice."""
    ratio = v1.stat().st_size / legacy_v1.stat().st_size
    assert ratio <= 1.15, f"{v1.stat().st_size} / {legacy_v1.stat().st_size} bytes = {ratio:.2f}"
