"""The launcher's paths with real archives: warm, cold, damaged, concurrent, and warm after an update.

Each test gets its own SHIV_ROOT, so "cold" means cold. What a start imported is read from
`python -X importtime`, which names every module a process imports (the warm path must not
reach zipfile, shiv's _bootstrap or any heavy library).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pilot import launcher
from tests.conftest import run_release_tool

pytestmark = pytest.mark.slow

HEAVY = {"textual", "rich", "cryptography", "urllib3"}
EXTRACTOR = {"zipfile", "_bootstrap"}  # _bootstrap: shiv's bootstrap package inside the archive
PROBE = {"pilot/_launcher_paths_probe.py": "# a different site-packages, so a different build id\n"}


@pytest.fixture
def shiv_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "shiv"
    monkeypatch.setenv("SHIV_ROOT", str(root))
    return root


def run(archive: Path, *args: str, flags: tuple[str, ...] = (), env: dict | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, str(archive), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def imported(archive: Path, *args: str) -> set[str]:
    """Top-level names of every module a start of `archive args` imported."""
    result = run(archive, *args, flags=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name.split(".")[0])
    return names


def build_id(archive: Path) -> str:
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read("pilot-build.json"))["build_id"]


def assert_one_clean_extraction(root: Path, archive: Path) -> Path:
    """root holds the archive's extraction, complete, and no staging or half-swapped copies."""
    directory = root / f"pilot_{build_id(archive)}"
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [directory.name]
    assert (directory / ".pilot-complete").read_text().split() == [build_id(archive), launcher.python_tag()]
    assert (directory / "site-packages" / "pilot" / "cli.py").is_file()
    return directory


def test_a_warm_start_imports_neither_the_extractor_nor_heavy_libraries(v1, shiv_root):
    assert run(v1, "status").returncode == 0  # cold: unpacks
    for command in (["--version"], ["version"], ["status"], ["task", "add", "t", "--", "true"]):
        names = imported(v1, *command)
        assert not names & (EXTRACTOR | HEAVY), (command, sorted(names & (EXTRACTOR | HEAVY)))
        assert ("pilot" in names) == (command != ["--version"])  # --version is answered by the entry module
    assert_one_clean_extraction(shiv_root, v1)


def test_a_cold_start_unpacks_then_runs(v1, shiv_root):
    assert not shiv_root.exists()
    names = imported(v1, "version", "--json")
    assert "zipfile" in names  # the fallback ran
    assert "_bootstrap" not in names  # shiv's bootstrap is not needed to unpack
    assert_one_clean_extraction(shiv_root, v1)
    result = run(v1, "version", "--json")
    assert json.loads(result.stdout)["build_id"] == build_id(v1)


DAMAGE = {
    # what a user or a cleaner did to the unpacked copy, and a command that notices
    "deleted module": ("site-packages/pilot/cli.py", "status"),
    "deleted native library": ("site-packages/cryptography/hazmat/bindings/_rust.abi3.so", "debug self-test"),
    "truncated native library": ("site-packages/cryptography/hazmat/bindings/_rust.abi3.so", "debug self-test"),
    "no marker": (".pilot-complete", "status"),
    "no site-packages": ("site-packages", "status"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_extraction_is_unpacked_again_and_the_command_runs(v1, shiv_root, damage):
    assert run(v1, "status").returncode == 0
    directory = assert_one_clean_extraction(shiv_root, v1)
    relative, command = DAMAGE[damage]
    target = directory / relative
    assert target.exists()
    if damage.startswith("truncated"):
        target.write_bytes(b"")
    elif target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()

    result = run(v1, *command.split())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # Damage found by an ImportError is said in one line; a missing marker or directory is fixed quietly
    # (a killed extraction or a prune racing this start leave the same traces).
    noted = "was damaged" in result.stderr and "unpacked it again" in result.stderr
    assert noted == (damage not in ("no marker", "no site-packages")), result.stderr
    assert target.exists() and (target.is_dir() or target.stat().st_size > 0)
    assert_one_clean_extraction(shiv_root, v1)
    assert run(v1, "status").stderr == ""  # and the next start is a plain warm start again


def test_a_real_import_error_is_not_mistaken_for_damage(archives, shiv_root):
    broken = archives.build("1.0.0", overlay={"pilot/commands/version.py": "import pilot_no_such_module\n"})
    result = run(broken, "version")
    assert result.returncode == 1
    assert "No module named 'pilot_no_such_module'" in result.stderr
    assert "was damaged" not in result.stderr
    assert_one_clean_extraction(shiv_root, broken)


def test_two_starts_at_once_on_a_cold_cache_share_one_extraction(v1, shiv_root):
    env = {**os.environ}
    starts = [subprocess.Popen([sys.executable, str(v1), "version", "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
              for _ in range(2)]
    outputs = [start.communicate(timeout=180) for start in starts]
    for start, (stdout, stderr) in zip(starts, outputs, strict=True):
        assert start.returncode == 0, stderr
        assert json.loads(stdout)["build_id"] == build_id(v1)
    assert_one_clean_extraction(shiv_root, v1)


def test_self_update_leaves_the_new_build_unpacked_for_its_first_start(
        v1, archives, shiv_root, site, server, release_key, tmp_path):
    v2 = archives.build("2.0.0", overlay=PROBE)
    assert build_id(v2) != build_id(v1)
    published = run_release_tool("publish", "--root", str(site), "--channel", "stable", "--base-url", server.url,
                                 "--key", str(release_key.private_path), str(v2))
    assert published.returncode == 0, published.stderr
    install = tmp_path / "bin" / "pilot"
    install.parent.mkdir()
    shutil.copyfile(v1, install)
    env = {"PILOT_MANIFEST_URL": f"{server.url}/stable/manifest.json"}
    assert run(install, "status", env=env).returncode == 0
    new_dir = shiv_root / f"pilot_{build_id(v2)}"
    assert not new_dir.exists()

    result = run(install, "self-update", "--no-restart", "--yes", env=env)
    assert result.returncode == 0, result.stderr

    assert (new_dir / ".pilot-complete").read_text().split() == [build_id(v2), launcher.python_tag()]  # the
    # pre-flight unpacked it, for this interpreter
    names = imported(install, "status")  # the first real start after the swap
    assert "zipfile" not in names
    assert run(install, "version", "--json", env=env).stdout.count(build_id(v2)) == 1


def test_an_archive_of_another_build_is_never_unpacked_under_this_build_id(v1, shiv_root):
    """A daemon's archive path may hold a newer build by the time it repairs its copy: that is no source."""
    from pilot import launcher

    directory = shiv_root / "pilot_an-older-build"
    with pytest.raises(launcher.ArchiveReplaced):
        launcher.extract(str(v1), "an-older-build", str(directory), verify=True)
    assert not directory.exists()
    assert not any(p.name.endswith((".partial", ".old")) for p in shiv_root.iterdir())


def test_the_application_shares_the_entry_module_instead_of_loading_a_second_copy(v1, shiv_root):
    """pilot.launcher is the archive's __main__ (the same source): one copy, one set of boot state."""
    assert run(v1, "status").returncode == 0
    result = run(v1, "status", flags=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    loaded = [line for line in result.stderr.splitlines() if line.rstrip().endswith("| pilot.launcher")
              or line.rstrip().endswith(" pilot.launcher")]
    assert loaded == [], loaded
