"""One archive, every supported CPython: it runs, updates itself and shows the dashboard under each, and an
install keeps working when the user's Python changes under it (3.12 today, 3.13 tomorrow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.archives import build_metadata
from tests.support.pythons import interpreters, need, supported_interpreters
from tests.support.tmux import Tmux

pytestmark = pytest.mark.slow


def unpacked(install, archive: Path) -> Path:
    return Path(install.env["SHIV_ROOT"]) / f"pilot_{build_metadata(archive)['build_id']}"


def native_files(directory: Path) -> dict[str, str | None]:
    """Each native library unpacked: its module name -> the interpreter it is for (None: every one)."""
    return {p.name.split(".")[0]: p.name.split(".")[1].removeprefix("cpython-").split("-")[0] if "cpython-" in p.name
            else None for p in (directory / "site-packages").rglob("*.so")}


@pytest.fixture
def fresh_shiv_root(tmp_path):
    """An unpacked-copies root of this test's own: what one interpreter unpacks is then visible alone."""
    return str(tmp_path / "shiv")


@pytest.mark.parametrize(("python", "tag"), supported_interpreters())
def test_the_archive_runs_and_updates_itself_under_each_supported_interpreter(python, tag, v1, v2, release_site,
                                                                              install_factory, fresh_shiv_root):
    python = need(python, tag)
    release_site.publish(v2)
    pilot = install_factory(v1)
    pilot.python, pilot.env["SHIV_ROOT"] = str(python), fresh_shiv_root
    assert pilot.version() == "pilot 1.0.0"
    info = json.loads(pilot.run("version", "--json").stdout)
    assert (info["python"], info["interpreter"]) == (tag, str(python))
    assert info["supported_pythons"] == ["cp311", "cp312", "cp313"]
    assert pilot.run("status").returncode == 0
    # It unpacked the shared files and this interpreter's native ones only, and compiled Pilot for it.
    copy = unpacked(pilot, v1)
    digits = tag[2:]
    assert native_files(copy) == {"_cffi_backend": digits, "_rust": None, "_yaml": digits}
    assert (copy / ".pilot-complete").read_text().split() == [build_metadata(v1)["build_id"], tag]
    assert list((copy / "site-packages" / "pilot" / "__pycache__").glob(f"cli.cpython-{digits}.pyc"))

    result = pilot.run("self-update", "--yes")
    assert result.returncode == 0, result.stderr
    assert "pilot 2.0.0 (updated from 1.0.0)" in result.stdout
    assert pilot.status()["state"] == "committed"
    assert pilot.version() == "pilot 2.0.0"
    # The pre-flight ran under this interpreter: the new version's copy is ready for it before the first start.
    assert (unpacked(pilot, v2) / ".pilot-complete").read_text().split() == [build_metadata(v2)["build_id"], tag]


@pytest.mark.parametrize(("python", "tag"), supported_interpreters())
@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")
def test_the_dashboard_runs_under_each_supported_interpreter(python, tag, v1, install_factory, fresh_shiv_root):
    python = need(python, tag)
    pilot = install_factory(v1)
    env = {**os.environ, **pilot.env, "SHIV_ROOT": fresh_shiv_root}
    terminal = Tmux()
    try:
        terminal.start([str(python), str(pilot.path), "start", "--dashboard"], env)
        terminal.wait_for("v1.0.0", "METRICS", "TASKS")
        terminal.send("q")
        deadline = time.monotonic() + 20
        while not terminal.pane_dead() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert terminal.pane_dead(), terminal.screen()
    finally:
        terminal.close()


def test_updated_under_one_python_it_runs_under_the_next(v1, v2, release_site, install_factory, fresh_shiv_root,
                                                          tmp_path):
    """The user's `python3` is 3.12 when Pilot updates, and 3.13 the day after: the same install keeps working,
    through `python3 pilot` and through `pilot` alone (the sh preamble's fast path), and the unpacked copy
    gains 3.13's files beside 3.12's."""
    found = interpreters()
    py312, py313 = need(found.get("cp312"), "cp312"), need(found.get("cp313"), "cp313")
    release_site.publish(v2)
    pilot = install_factory(v1)
    shim = tmp_path / "shims" / "python3"  # what the user's PATH calls python3: a link a version manager moves
    shim.parent.mkdir()
    shim.symlink_to(py312)
    pilot.python, pilot.env["SHIV_ROOT"] = str(shim), fresh_shiv_root
    pilot.env["PATH"] = f"{shim.parent}{os.pathsep}{os.environ['PATH']}"
    result = pilot.run("self-update", "--yes")
    assert result.returncode == 0, result.stderr
    assert pilot.version() == "pilot 2.0.0"

    shim.unlink()
    shim.symlink_to(py313)  # the upgrade
    info = json.loads(pilot.run("version", "--json").stdout)
    assert (info["version"], info["python"]) == ("2.0.0", "cp313")
    assert pilot.run("status").returncode == 0
    test = pilot.run("debug", "self-test")
    assert test.returncode == 0, test.stderr
    assert json.loads(test.stdout.splitlines()[-1])["native"] == ["_cffi_backend", "cryptography.hazmat.bindings._rust",
                                                                  "yaml._yaml"]
    copy = unpacked(pilot, v2)
    assert (copy / ".pilot-complete").read_text().split() == [build_metadata(v2)["build_id"], "cp312", "cp313"]
    # Run as `pilot` (PATH has the shim): the preamble starts the recorded interpreter, or python3.
    env = {**os.environ, **pilot.env}
    env.pop("PILOT_PYTHON", None)
    direct = subprocess.run([str(pilot.path), "version", "--json"], capture_output=True, text=True, env=env,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout)["python"] == "cp313"  # the recorded interpreter is the user's python3
    # And an update under 3.13 works too: back to the backup and forward again, verified as ever.
    assert pilot.run("self-update", "--rollback").returncode == 0
    forward = pilot.run("self-update", "--yes", "--to", "2.0.0")
    assert forward.returncode == 0, forward.stderr
    assert pilot.version() == "pilot 2.0.0"
