"""build/build.py: one reproducible archive that runs anywhere its interpreter does and says so where not."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from pilot.launcher import interpreter_of, platform_tag
from tests.support.archives import BUILD_SCRIPT, REPO, payload, run_build
from tests.support.pythons import interpreters, need, unsupported_interpreters

PYTHON_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
SHEBANG = b"#!/bin/sh\n"  # the preamble: not the path of the interpreter that built it
OUTER_MEMBERS = ["__main__.py", "__main__.pyc", "pilot_build.py", "pilot_build.pyc", "pilot-build.json",
                 "environment.json", "site-packages.zip"]
VERSION = "1.0.0"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*command: str | Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def metadata_of(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read("pilot-build.json"))


@pytest.fixture(scope="module")
def archive(archives) -> Path:
    return archives.build(VERSION)


# --- reproducibility --------------------------------------------------------------------------


def inputs_of(archive: Path) -> tuple:
    """What went into a build from the checkout: the commit and Pilot's own sources (not the compiled output)."""
    with payload(archive) as zf:
        sources = {n: zf.read(n) for n in zf.namelist() if n.startswith("site-packages/pilot/") and n.endswith(".py")}
    with zipfile.ZipFile(archive) as zf:
        launcher = zf.read("__main__.py")
    return metadata_of(archive)["source_commit"], sources, launcher


@pytest.mark.slow
def test_two_builds_of_the_same_commit_are_byte_identical(tmp_path, release_key):
    for attempt in range(3):
        first = run_build(VERSION, tmp_path / f"one-{attempt}", trusted_keys=[release_key.public_path])
        second = run_build(VERSION, tmp_path / f"two-{attempt}", trusted_keys=[release_key.public_path])
        if inputs_of(first) == inputs_of(second):
            break  # in a shared checkout someone may commit or edit between the two builds: then try again
    else:
        pytest.skip("the checkout kept changing between builds")
    assert first.parent != second.parent and first.name == second.name
    assert first.stat().st_size == second.stat().st_size
    assert sha256(first) == sha256(second)


# --- what the archive carries -----------------------------------------------------------------


@pytest.mark.slow
def test_the_archive_carries_its_build_metadata_and_trusted_key(archive, release_key):
    meta = metadata_of(archive)
    assert meta["product"] == "pilot"
    assert meta["version"] == VERSION
    assert meta["python_tags"] == ["cp311", "cp312", "cp313"] and meta["python_tag"] == "cp311"  # the oldest
    assert meta["platform_tag"] == platform_tag()
    assert re.fullmatch(r"[0-9a-f]{64}", meta["build_id"])
    assert meta["trusted_keys"] == [{"keyid": release_key.public.keyid, "public": release_key.public.raw.hex()}]
    assert meta["threshold"] == 1
    assert archive.name == f"pilot-{VERSION}-{platform_tag()}.pyz"  # one archive for every interpreter

    with zipfile.ZipFile(archive) as zf:
        outer = [info.filename for info in zf.infolist()]
        main_py, main_pyc = zf.read("__main__.py").decode(), zf.read("__main__.pyc")
        build_py, build_pyc = zf.read("pilot_build.py").decode(), zf.read("pilot_build.pyc")
        environment = json.loads(zf.read("environment.json"))
    with payload(archive) as inner:
        members = {info.filename: info for info in inner.infolist()}
        site_packages = sorted(n for n in members if n.startswith("site-packages/"))
        digest = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "build_id"}, sort_keys=True).encode()
                                + b"\0")
        for name in site_packages:
            digest.update(name.removeprefix("site-packages/").encode() + b"\0")
            digest.update(hashlib.sha256(inner.read(name)).digest())
        # The unpacked copy is a directory `python` can run: the entry modules (each interpreter compiles them).
        assert inner.read("__main__.py").decode() == main_py
        assert inner.read("pilot_build.py").decode() == build_py
        # The archive's own bytecode of them is this (the building) interpreter's: zipimport loads it.
        assert main_pyc[:4] == build_pyc[:4] == importlib.util.MAGIC_NUMBER
        order = [name for name in members if name.startswith("site-packages/")]

    # A tiny central directory: CPython reads every entry of it before __main__ runs.
    assert outer == OUTER_MEMBERS
    # The entry module is the launcher, verbatim; the metadata is a module of its own, a Python literal.
    assert main_py == (REPO / "pilot" / "launcher.py").read_text()
    assert build_py.startswith("PILOT_BUILD = ") and build_py.count("\n") == 1
    assert ast.literal_eval(build_py.removeprefix("PILOT_BUILD = ")) == meta
    # What changes between releases comes last, so that fewer offsets move: the dependencies, then
    # Pilot's own package, then the entry modules.
    first_own = next(i for i, name in enumerate(order) if name.startswith("site-packages/pilot/"))
    assert all(name.startswith("site-packages/pilot/") for name in order[first_own:])
    assert list(members)[-2:] == ["__main__.py", "pilot_build.py"]
    # The unpacked copy is shared by build id: it hashes what site-packages holds and the metadata beside it.
    assert environment["build_id"] == meta["build_id"] == digest.hexdigest()
    assert environment["entry_point"] == "pilot.cli:main"
    assert "site-packages/pilot/cli.py" in members and "site-packages/pilot/launcher.py" in members
    assert any(n.startswith("site-packages/cryptography/") for n in members)
    # Sources, with no pip bookkeeping or stubs; every package keeps its METADATA and licences. Bytecode only of
    # Pilot's own modules, for each interpreter the build had at hand (tests give it this machine's), named for
    # it. Native code: cryptography's abi3 library once, cffi's and PyYAML's extension modules once for each
    # interpreter, named for it.
    bytecode = [n for n in members if n.endswith(".pyc")]
    assert all(n.startswith("site-packages/pilot/") and "/__pycache__/" in n for n in bytecode), bytecode
    sources = [n for n in members if n.startswith("site-packages/pilot/") and n.endswith(".py")]
    for tag in sorted(set(interpreters()) & {"cp311", "cp312", "cp313"}):
        assert sum(f".cpython-{tag[2:]}.pyc" in n for n in bytecode) == len(sources), tag
    assert "site-packages/rich/console.py" in members
    assert not [n for n in members if n.endswith((".pyi", "/py.typed", "/RECORD", "/INSTALLER", "/WHEEL"))]
    native = sorted(n for n in members if n.endswith(".so"))
    assert [n for n in native if n.endswith(".abi3.so")] == ["site-packages/cryptography/hazmat/bindings/_rust.abi3.so"]
    per_python = {}
    for name in native:
        per_python.setdefault(interpreter_of(name), []).append(name.rsplit("/", 1)[-1].split(".")[0])
    assert per_python.pop(None) == ["_rust"]
    assert per_python == {tag: ["_cffi_backend", "_yaml"] for tag in ("cp311", "cp312", "cp313")}
    assert [n for n in members if re.fullmatch(r"site-packages/rich-[^/]+\.dist-info/METADATA", n)]
    assert [n for n in members if n.startswith("site-packages/cryptography-") and "/licenses/" in n]
    assert len(members) == len(site_packages) + 2


def test_two_versions_of_the_same_code_have_two_build_ids(v1, archives):
    """Their unpacked copies hold each one's own entry module (its version, its keys): they must not share one."""
    other = archives.build("1.0.1")
    assert metadata_of(other)["build_id"] != metadata_of(v1)["build_id"]


@pytest.mark.parametrize("module", ["__main__", "pilot_build"])
def test_the_entry_modules_are_precompiled_for_their_interpreter_and_kept_as_source_for_others(v1, module):
    """zipimport loads __main__.pyc instead of compiling 50 KiB of source on every start; another
    interpreter rejects its magic number and compiles the source (the wrong-interpreter line)."""
    import importlib.util

    with zipfile.ZipFile(v1) as zf:
        source, pyc = zf.read(f"{module}.py"), zf.read(f"{module}.pyc")
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, unchecked: no mtime, reproducible
    assert pyc[8:16] == importlib.util.source_hash(source)


@pytest.mark.slow
def test_zip_members_have_a_fixed_time_and_normalised_modes(archive):
    with zipfile.ZipFile(archive) as zf:
        outer = zf.infolist()
    with payload(archive) as inner:
        infos = inner.infolist()
    assert len(infos) > 100
    for members in (outer, infos):
        assert {info.date_time for info in members} == {(1980, 1, 1, 0, 0, 0)}  # whatever the commit's time
        assert {info.create_system for info in members} == {3}
        assert {info.external_attr >> 16 for info in members} <= {0o100644, 0o100755}
    assert {info.compress_type for info in infos} == {zipfile.ZIP_DEFLATED}
    # The payload is stored: the launcher reads its bytes in place, through a window on the file; so is the
    # bytecode zipimport loads on every start, which would otherwise import zlib to inflate it.
    assert {info.filename: info.compress_type for info in outer if info.compress_type != zipfile.ZIP_DEFLATED} == {
        "site-packages.zip": zipfile.ZIP_STORED, "__main__.pyc": zipfile.ZIP_STORED,
        "pilot_build.pyc": zipfile.ZIP_STORED}


@pytest.mark.slow
def test_nothing_in_the_archive_names_the_build_machine(archive):
    data = archive.read_bytes()
    assert data.startswith(SHEBANG)  # sh, not the path of the interpreter that built it
    forbidden = [
        b"build/.venv",  # the tool environment
        b"/tmp/pilot-build-",  # the staging directory
        f"{tempfile.gettempdir()}/pilot-build-".encode(),
        str(REPO).encode(),  # the checkout
        sys.prefix.encode(),  # the dev venv that started the build
    ]
    preamble = data[:data.index(b"PK\x03\x04")]
    found = [("the preamble", pattern) for pattern in forbidden if pattern in preamble]
    with zipfile.ZipFile(archive) as outer, payload(archive) as inner:
        for zf in (outer, inner):
            for info in zf.infolist():
                content = zf.read(info) if info.filename != "site-packages.zip" else b""
                found += [(info.filename, pattern) for pattern in forbidden if pattern in content]
                assert not info.filename.startswith(("/", "..", "bin/", "site-packages/bin/"))
    assert found == []


@pytest.mark.slow
def test_zip_tools_read_the_archive_despite_its_preamble(archive, tmp_path):
    """The preamble sits in front of the zip, whose offsets count from the file's start: unzip reads it
    without complaint, as zipfile and zipimport do."""
    if shutil.which("unzip") is None:
        pytest.skip("no unzip on this machine")
    shown = run("unzip", "-p", archive, "pilot-build.json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == metadata_of(archive), shown.stderr
    tested = run("unzip", "-t", archive)
    assert tested.returncode == 0 and "No errors detected" in tested.stdout, tested.stdout + tested.stderr
    assert "extra bytes" not in tested.stdout + tested.stderr


@pytest.mark.slow
def test_the_archive_carries_the_published_schema_byte_for_byte(archive):
    with payload(archive) as zf:
        packaged = zf.read("site-packages/pilot/update/manifest.schema.json")
    assert packaged == (REPO / "manifest.schema.json").read_bytes()


def test_a_wheel_gets_the_published_schema_from_setup_py(tmp_path):
    """pip and pipx installs: setup.py's build_py copies the top-level schema into the package."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    not_kept = shutil.ignore_patterns("__pycache__", "manifest.schema.json")  # the copy a checkout may have
    shutil.copytree(REPO / "pilot", source / "pilot", ignore=not_kept)
    for name in ("setup.py", "pyproject.toml", "README.md", "manifest.schema.json"):
        shutil.copy2(REPO / name, source / name)
    assert not (source / "pilot" / "update" / "manifest.schema.json").exists()
    result = run(sys.executable, "setup.py", "--quiet", "build_py", "--build-lib", tmp_path / "lib", cwd=source)
    assert result.returncode == 0, result.stderr
    built = tmp_path / "lib" / "pilot" / "update"
    assert (built / "manifest.schema.json").read_bytes() == (REPO / "manifest.schema.json").read_bytes()
    assert (built / "schema.py").is_file()


# --- running it -------------------------------------------------------------------------------


@pytest.mark.slow
def test_python3_runs_the_archive_from_another_directory(archive, tmp_path):
    python3 = shutil.which("python3")
    if python3 is None:
        pytest.skip("no python3 on PATH")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run(python3, archive, "--version", cwd=elsewhere)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"pilot {VERSION}\n", "")


@pytest.mark.slow
def test_the_archive_is_executable_through_its_preamble(archive, tmp_path):
    local = tmp_path / archive.name
    shutil.copyfile(archive, local)
    local.chmod(0o755)
    assert local.read_bytes()[: len(SHEBANG)] == SHEBANG

    result = run(f"./{local.name}", "--version", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"pilot {VERSION}\n", "")

    result = run(f"./{local.name}", "version", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["version"] == VERSION
    assert info["python"] == PYTHON_TAG
    assert info["platform"] == platform_tag()
    assert Path(info["archive"]).resolve() == local.resolve()
    assert info["install_method"] == "pyz"
    assert info["build_id"] == metadata_of(archive)["build_id"]


@pytest.mark.slow
@pytest.mark.parametrize(("python", "tag"), unsupported_interpreters())
def test_another_python_gets_one_line_and_exit_5_from_every_command(archive, tmp_path, python, tag):
    """Python 2.7 included: the one line says which interpreters the archive is for, and which to use."""
    python = need(python, tag)
    env = {**os.environ, "PILOT_HOME": str(tmp_path / "home")}
    for args in (["version"], [], ["status", "--json"], ["task", "add", "t"], ["self-update", "--yes"],
                 ["self-update", "--status"], ["start"], ["--help"]):
        result = run(python, archive, *args, cwd=tmp_path, env=env)
        assert result.returncode == 5, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"pilot: this archive is for CPython 3.11 to 3.13 on {platform_tag()} but this is ")
        assert lines[0].endswith(": run it with python3.13"), lines[0]
        assert result.stdout == ""
    assert not (tmp_path / "home").exists()  # nothing else ran
    # `--version` is answered from the archive's metadata, on any interpreter.
    result = run(python, archive, "--version", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"pilot {VERSION}\n")


# --- a build outside git ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_build_without_git_metadata_still_runs(tmp_path):
    env = os.environ.copy()
    env["GIT_DIR"] = str(tmp_path / "no-such-git-dir")  # as from a source tarball: no commit, no commit time
    env.pop("SOURCE_DATE_EPOCH", None)
    built = run_build(VERSION, tmp_path / "dist", env=env)
    meta = metadata_of(built)
    assert meta["source_commit"] is None and meta["trusted_keys"] == []
    with zipfile.ZipFile(built) as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    result = run(sys.executable, built, "version", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == VERSION


# --- refusing bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1.0", "1.0.0+local", "1.0-rc1", "latest", "1.0.0.0.0", ""])
def test_build_refuses_a_version_that_is_not_canonical_pep440(tmp_path, version):
    out = tmp_path / "dist"
    result = run(sys.executable, BUILD_SCRIPT, "--version", version, "--out", out)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("build: creating the tool")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("build: --version: ") and "not in the expected form" in lines[0]
    assert not out.exists()
