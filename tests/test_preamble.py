"""The archive's sh preamble: the same route as pilot.launcher.preamble_route, in every shell we can find.

The preamble is run by real shells (dash, bash, busybox when present) with a fake interpreter
(PILOT_PYTHON or one found on PATH) that prints how it was started, so each case shows which
route the shell took; the Python side decides the same case in the same environment. The end
to end tests at the bottom run real archives both ways (`./pilot` and `python3 pilot.pyz`).
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
from tests.support.archives import build_metadata
from tests.support.pythons import need, unsupported_interpreters

BUILD = {"version": "3.1.4", "build_id": "b" * 64, "python_tags": ["cp311", "cp312", "cp313"],
         "python_tag": "cp311", "platform_tag": launcher.platform_tag()}
SHELLS = [pytest.param(shell, id=Path(shell).name) for shell in
          (shutil.which("dash"), shutil.which("bash"), shutil.which("busybox")) if shell]
# Prints how it was started: its own name, then its arguments and PILOT_ARCHIVE, each ended by a NUL.
FAKE_PYTHON = """#!/bin/sh
printf '%s\\0' "{name}" "$@" "archive=${{PILOT_ARCHIVE-unset}}"
"""


def fake_python(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(FAKE_PYTHON.format(name=name))
    path.chmod(0o755)
    return path


class World:
    """A home, an extraction root and a preamble file for BUILD, each where the environment says."""

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.preamble = root / "bin" / "pilot"
        self.preamble.parent.mkdir(parents=True)
        self.preamble.write_text(launcher.preamble(BUILD))
        self.preamble.chmod(0o755)
        self.env = {"PATH": str(root / "path"), "HOME": str(root / "home"),
                    "PILOT_PYTHON": str(fake_python(root / "fakes", "the-python"))}
        monkeypatch.chdir(root)
        for name in ("PILOT_HOME", "SHIV_ROOT", "HOME", "PILOT_PYTHON", "PILOT_ARCHIVE"):
            monkeypatch.delenv(name, raising=False)

    def set(self, **values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                self.env.pop(name, None)
            else:
                self.env[name] = value

    def apply(self) -> None:
        """The same environment for the Python side, in this process."""
        for name in ("PILOT_HOME", "SHIV_ROOT", "HOME"):
            if name in self.env:
                self.monkeypatch.setenv(name, self.env[name])
            else:
                self.monkeypatch.delenv(name, raising=False)

    def unpacked(self, marker: bytes | None = BUILD["build_id"].encode() + b"\n", main: bool = True) -> Path:
        self.apply()
        directory = Path(launcher.extraction_dir(BUILD["build_id"]))
        directory.mkdir(parents=True, exist_ok=True)
        if main:
            (directory / "__main__.py").write_text("# the unpacked entry module\n")
        if marker is not None:
            (directory / launcher.COMPLETE_FILE).write_bytes(marker)
        return directory

    def trial(self, symlink_to: str | None = None) -> None:
        self.apply()
        path = Path(launcher.trial_path())
        path.parent.mkdir(parents=True, exist_ok=True)
        if symlink_to is not None:
            path.symlink_to(symlink_to)
        else:
            path.write_text("{}")

    def run(self, shell: str, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([shell, str(self.preamble), *argv], capture_output=True, text=True,
                              env=self.env, cwd=self.root, timeout=30)

    def route(self, shell: str, *argv: str) -> str:
        """The sh side's route: version | unpacked | archive, checked against what it passed on."""
        result = self.run(shell, *argv)
        assert result.returncode == 0, result.stderr
        if result.stdout == f"pilot {BUILD['version']}\n":
            return "version"
        _, target, *rest = result.stdout.split("\0")[:-1]
        self.apply()
        assert rest[:-1] == list(argv)  # the arguments arrive as they were given
        if target == str(self.preamble):
            assert rest[-1] == "archive=unset"
            return "archive"
        assert Path(self.root, target) == Path(launcher.extraction_dir(BUILD["build_id"])).absolute()
        assert rest[-1] == f"archive={self.preamble}"  # the unpacked copy is told which archive it belongs to
        return "unpacked"

    def python_route(self, *argv: str) -> str:
        self.apply()
        return launcher.preamble_route(list(argv), BUILD)


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    return World(tmp_path, monkeypatch)


def both(world: World, shell: str, *argv: str) -> str:
    sh, py = world.route(shell, *argv), world.python_route(*argv)
    assert sh == py, f"the preamble takes {sh!r}, the launcher's preamble_route says {py!r}"
    return sh


def marker(text: bytes):
    return lambda world: world.unpacked(marker=text)


CASES = {
    # name: (setup, argv, route)
    "warm copy": (lambda w: w.unpacked(), ["status"], "unpacked"),
    "no arguments": (lambda w: w.unpacked(), [], "unpacked"),
    "--version": (lambda w: None, ["--version"], "version"),
    "--version with more": (lambda w: w.unpacked(), ["--version", "--json"], "unpacked"),
    "arguments with spaces, quotes and newlines": (
        lambda w: w.unpacked(), ["task", "add", "a b", "--", "echo", "it's \"x\"\n$HOME *"], "unpacked"),
    "nothing unpacked": (lambda w: None, ["status"], "archive"),
    "no marker": (marker(None), ["status"], "archive"),
    "empty marker": (marker(b""), ["status"], "archive"),
    "another build's marker": (marker(b"a" * 64 + b"\n"), ["status"], "archive"),
    "marker without a newline": (marker(BUILD["build_id"].encode()), ["status"], "unpacked"),
    "marker with spaces around": (marker(b" \t" + BUILD["build_id"].encode() + b" \n"), ["status"], "unpacked"),
    "marker with a carriage return": (marker(BUILD["build_id"].encode() + b"\r\n"), ["status"], "archive"),
    "marker with a second line": (marker(BUILD["build_id"].encode() + b"\njunk\n"), ["status"], "unpacked"),
    "no entry module in the copy": (lambda w: w.unpacked(main=False), ["status"], "archive"),
    "an open trial": (lambda w: (w.unpacked(), w.trial()), ["status"], "archive"),
    "a trial record that is a dangling link": (
        lambda w: (w.unpacked(), w.trial(symlink_to="nowhere.json")), ["status"], "unpacked"),
    "self-update": (lambda w: w.unpacked(), ["self-update", "--yes"], "archive"),
    "self-update --status (recovery)": (lambda w: w.unpacked(), ["self-update", "--status"], "archive"),
}


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", CASES)
def test_the_preamble_and_the_launcher_take_the_same_route(world, shell, case):
    setup, argv, expected = CASES[case]
    setup(world)
    assert both(world, shell, *argv) == expected


PLACES = {
    # name: environment -> where PILOT_HOME and SHIV_ROOT are (relative to the world's root)
    "defaults under HOME": {},
    "empty values mean the defaults": {"PILOT_HOME": "", "SHIV_ROOT": ""},
    "absolute, with spaces and non-ASCII": {"PILOT_HOME": "{root}/my home ü/p", "SHIV_ROOT": "{root}/shiv dir ü"},
    "relative to the working directory": {"PILOT_HOME": "rel-home", "SHIV_ROOT": "rel-shiv"},
    "tilde paths": {"PILOT_HOME": "~/ph", "SHIV_ROOT": "~/sr"},
    "HOME with a trailing slash": {"HOME": "{root}/home/", "SHIV_ROOT": "~/sr"},
    "no HOME, absolute paths": {"HOME": None, "PILOT_HOME": "{root}/p", "SHIV_ROOT": "{root}/s"},
}


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("place", PLACES)
def test_the_same_route_wherever_the_environment_puts_things(world, shell, place):
    world.set(**{name: None if value is None else value.format(root=world.root)
                 for name, value in PLACES[place].items()})
    assert both(world, shell, "status") == "archive"
    world.unpacked()
    assert both(world, shell, "status") == "unpacked"
    world.trial()
    assert both(world, shell, "status") == "archive"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("env", [{"HOME": None}, {"HOME": None, "PILOT_HOME": "{root}/p"},
                                 {"PILOT_HOME": "~nobody/p"}, {"SHIV_ROOT": "~root/s"}],
                         ids=["no HOME", "no HOME for the extraction root", "~user home", "~user extraction root"])
def test_what_only_python_can_expand_goes_to_the_archive(world, shell, env):
    world.set(**{name: None if value is None else value.format(root=world.root) for name, value in env.items()})
    assert both(world, shell, "status") == "archive"


# --- which interpreter ------------------------------------------------------------------------


def started_with(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\0")[0]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_interpreter_is_pilot_python_then_the_recorded_one_then_path(world, shell):
    for name in ("python3", "python3.11", "python3.13", "python"):  # python3: e.g. a version manager's shim
        fake_python(world.root / "path", name)
    recorded = fake_python(world.root / "real", "recorded-python")
    assert started_with(world.run(shell, "status")) == "the-python"  # PILOT_PYTHON wins
    world.set(PILOT_PYTHON=None)
    assert started_with(world.run(shell, "status")) == "python3"  # the user's own, whichever version it is
    world.apply()
    record = Path(launcher.interpreter_record())
    record.parent.mkdir(parents=True)
    record.write_text(f"{recorded}\n")
    assert started_with(world.run(shell, "status")) == "recorded-python"  # straight past the shim
    recorded.unlink()  # the recorded interpreter was removed since
    assert started_with(world.run(shell, "status")) == "python3"
    (world.root / "path" / "python3").unlink()
    assert started_with(world.run(shell, "status")) == "python3.13"  # then the newest the archive supports
    (world.root / "path" / "python3.13").unlink()
    assert started_with(world.run(shell, "status")) == "python3.11"
    (world.root / "path" / "python3.11").unlink()
    assert started_with(world.run(shell, "status")) == "python"  # it says "wrong interpreter" if it is one


@pytest.mark.parametrize("shell", SHELLS)
def test_no_interpreter_at_all_is_one_line_and_exit_5(world, shell):
    world.set(PILOT_PYTHON=None)
    result = world.run(shell, "status")
    assert (result.returncode, result.stdout) == (5, "")
    assert result.stderr == "pilot: no python3 found (Pilot runs on CPython 3.11 to 3.13; install one, or set " \
                            "PILOT_PYTHON)\n"
    world.set(PILOT_PYTHON=str(world.root / "no-such-python"))
    result = world.run(shell, "status")
    assert (result.returncode, result.stdout) == (5, "")
    assert result.stderr == f"pilot: PILOT_PYTHON={world.root}/no-such-python: no such interpreter\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_version_is_answered_without_any_interpreter(world, shell):
    world.set(PILOT_PYTHON=None, PATH="/nonexistent")
    result = world.run(shell, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, "pilot 3.1.4\n", "")


# --- the Python side of the handover ----------------------------------------------------------


def test_the_unpacked_copy_takes_the_archive_from_the_preamble_and_passes_it_on_to_nobody(tmp_path, monkeypatch):
    copy = tmp_path / "unpacked"
    copy.mkdir()
    monkeypatch.setenv(launcher.ARCHIVE_ENV, "some/pilot")
    assert launcher.started_from(str(copy / "__main__.py")) == os.path.abspath("some/pilot")
    assert launcher.ARCHIVE_ENV not in os.environ  # a task the daemon runs does not inherit it
    assert launcher.started_from(str(copy / "__main__.py")) is None  # started by hand: nobody named the archive
    archive = tmp_path / "pilot.pyz"
    archive.write_bytes(b"")
    monkeypatch.setenv(launcher.ARCHIVE_ENV, "ignored")
    assert launcher.started_from(str(archive / "__main__.py")) == str(archive)
    assert os.environ[launcher.ARCHIVE_ENV] == "ignored"  # not ours to take: the zip names itself


def test_the_interpreter_is_recorded_only_where_an_update_directory_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("PILOT_HOME", str(tmp_path / "home"))
    record = Path(launcher.interpreter_record())
    launcher.remember_interpreter()
    assert not (tmp_path / "home").exists()  # a command that only reads creates nothing
    record.parent.mkdir(parents=True)
    launcher.remember_interpreter()
    assert record.read_text() == sys.executable + "\n"
    record.chmod(0o444)
    before = record.stat().st_mtime_ns
    launcher.remember_interpreter()  # unchanged: not written again
    assert record.stat().st_mtime_ns == before


# --- real archives, both ways of starting ------------------------------------------------------

LOGGING_PYTHON = """#!/bin/sh
printf '%s\\n' "$1" >> "{log}"
exec "{python}" "$@"
"""


class Installed:
    """A real archive installed as `pilot` in a directory with spaces and non-ASCII, run through its preamble
    by an interpreter wrapper (PILOT_PYTHON) that logs what the preamble started: the archive or the copy."""

    def __init__(self, archive: Path, root: Path, python: str = sys.executable) -> None:
        self.root = root
        self.path = root / "bin dir ü" / "pilot"
        self.path.parent.mkdir(parents=True)
        shutil.copyfile(archive, self.path)
        self.path.chmod(0o755)
        self.log = root / "started.log"
        wrapper = root / "python-wrapper"
        wrapper.write_text(LOGGING_PYTHON.format(log=self.log, python=python))
        wrapper.chmod(0o755)
        self.env = {**os.environ, "PILOT_HOME": str(root / "home"), "SHIV_ROOT": str(root / "shiv"),
                    "HOME": str(root), "PILOT_PYTHON": str(wrapper)}
        self.env.pop(launcher.ARCHIVE_ENV, None)
        self.build = build_metadata(archive)
        self.copy = root / "shiv" / f"pilot_{self.build['build_id']}"

    def run(self, *args: str, direct: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.path), *args] if direct else [sys.executable, str(self.path), *args]
        return subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=self.root, timeout=120,
                              stdin=subprocess.DEVNULL)

    def routes(self) -> list[str]:
        """What each direct start ran since the last call: "archive" or "unpacked"."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return ["archive" if line == str(self.path) else "unpacked" if line == str(self.copy) else line
                for line in lines]


@pytest.fixture
def installed(v1, tmp_path) -> Installed:
    return Installed(v1, tmp_path)


@pytest.mark.slow
def test_a_direct_start_unpacks_once_then_runs_the_unpacked_copy(installed):
    cold = installed.run("status")
    assert cold.returncode == 0, cold.stderr
    assert installed.routes() == ["archive"]  # nothing unpacked yet: the archive's __main__ unpacks
    warm = installed.run("status")
    assert (warm.returncode, warm.stderr) == (0, "")
    assert installed.routes() == ["unpacked"]
    assert warm.stdout == cold.stdout == installed.run("status", direct=False).stdout
    info = json.loads(installed.run("version", "--json").stdout)
    assert Path(info["archive"]) == installed.path and info["build_id"] == installed.build["build_id"]
    assert installed.run("--version").stdout == f"pilot {installed.build['version']}\n"
    assert installed.routes() == ["unpacked"]  # --version started no interpreter at all


@pytest.mark.slow
def test_a_warm_direct_start_never_reads_the_zip(installed):
    assert installed.run("status").returncode == 0
    data = installed.path.read_bytes()
    installed.path.write_bytes(data[:data.index(b"PK\x03\x04")])  # the preamble alone: no zip behind it
    installed.routes()
    assert installed.run("status").returncode == 0
    assert installed.routes() == ["unpacked"]
    assert installed.run("status", direct=False).returncode != 0  # python3 pilot must read it


@pytest.mark.slow
def test_a_damaged_copy_found_by_a_direct_start_is_unpacked_again(installed):
    assert installed.run("status").returncode == 0
    (installed.copy / "site-packages" / "pilot" / "cli.py").unlink()
    installed.routes()
    result = installed.run("status")
    assert result.returncode == 0, result.stderr
    assert "was damaged" in result.stderr and "Traceback" not in result.stderr
    assert installed.routes() == ["unpacked"]  # the repair re-ran the command from the archive itself
    assert (installed.copy / "site-packages" / "pilot" / "cli.py").is_file()
    assert installed.run("status").stderr == ""


@pytest.mark.slow
def test_a_copy_that_lost_its_build_module_hands_over_to_the_archive_which_unpacks_it_again(installed):
    assert installed.run("status").returncode == 0
    for name in ("pilot_build.py", f"__pycache__/pilot_build.{sys.implementation.cache_tag}.pyc"):
        (installed.copy / name).unlink()
    installed.routes()
    result = installed.run("status")
    assert (result.returncode, result.stderr) == (0, "")
    assert installed.routes() == ["unpacked"]  # then, by exec, the archive itself
    assert (installed.copy / "pilot_build.py").is_file()
    assert installed.run("status").returncode == 0 and installed.routes() == ["unpacked"]


@pytest.mark.slow
def test_an_open_trial_or_a_missing_marker_goes_through_the_archive(installed):
    assert installed.run("status").returncode == 0
    installed.routes()
    trial = Path(installed.env["PILOT_HOME"]) / "update" / "trial.json"
    trial.parent.mkdir(parents=True, exist_ok=True)
    trial.write_text("{}")  # the boot guard reads it; the preamble only sees that it is there
    assert installed.run("status").returncode == 0
    assert installed.routes() == ["archive"]
    trial.unlink()
    (installed.copy / launcher.COMPLETE_FILE).unlink()
    assert installed.run("status").returncode == 0
    assert installed.routes() == ["archive"]  # which unpacked it again
    assert installed.run("status").returncode == 0
    assert installed.routes() == ["unpacked"]


@pytest.mark.slow
def test_the_interpreter_that_ran_it_is_recorded_and_then_used_without_path(installed):
    (Path(installed.env["PILOT_HOME"]) / "update").mkdir(parents=True)
    assert installed.run("status", direct=False).returncode == 0
    record = Path(installed.env["PILOT_HOME"]) / "update" / "python"
    assert record.read_text() == sys.executable + "\n"
    env = {**installed.env, "PATH": "/nonexistent"}
    env.pop("PILOT_PYTHON")
    result = subprocess.run(["/bin/sh", str(installed.path), "status"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


@pytest.mark.slow
def test_the_unpacked_copy_run_by_hand_says_to_run_the_archive(installed):
    assert installed.run("status").returncode == 0
    env = {k: v for k, v in installed.env.items() if k != launcher.ARCHIVE_ENV}
    result = subprocess.run([sys.executable, str(installed.copy), "status"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "pilot: this is the unpacked copy of a Pilot archive; run the archive itself\n"


@pytest.mark.slow
@pytest.mark.parametrize(("python", "tag"), unsupported_interpreters())
def test_another_interpreter_through_the_preamble_gets_the_wrong_interpreter_line(v1, tmp_path, python, tag):
    python = need(python, tag)
    right = Installed(v1, tmp_path)
    assert right.run("status").returncode == 0  # a warm copy: the preamble takes its fast path
    wrong = {**right.env, "PILOT_PYTHON": str(python)}
    for args in (["status"], ["task", "list"], ["self-update", "--status"]):
        result = subprocess.run([str(right.path), *args], capture_output=True, text=True, env=wrong, timeout=60)
        assert result.returncode == 5, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "this archive is for CPython 3.11 to 3.13" in result.stderr, result.stderr
