"""install.sh, the one-line installer: run by dash and by bash against the local release site, on a fresh HOME.

`curl -fsSL SITE/install.sh | sh` is the first thing a user runs: it must install exactly what the signed
manifest names, say in one line why when it will not, and leave nothing behind when it stops or is undone."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_release_tool
from tests.support.archives import build_metadata
from tests.support.pythons import interpreters, need

pytestmark = pytest.mark.slow
SHELLS = ["dash", "bash"]  # every case is listed for both; `found` says at run time whether it can run
# What the script runs besides the interpreter: a PATH of these alone shows it needs nothing else.
TOOLS = ("curl", "openssl", "uname", "mktemp", "rm", "grep", "cut", "head", "chmod", "cat", "sh")


def found(shell: str) -> str:
    """The shell's path. A missing one fails in CI, where it is a broken set-up (Debian and Ubuntu have both: dash
    is their /bin/sh), and skips elsewhere saying so: the case is never dropped from the run."""
    path = shutil.which(shell)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{shell} is not installed")
        pytest.skip(f"{shell} is not installed: the installer is not run by it here")
    return path


class Machine:
    """A fresh user: an empty HOME, a PATH with python3 and the basic tools only."""

    def __init__(self, root: Path, python: str = sys.executable, without: tuple[str, ...] = ()) -> None:
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.bin = root / "path"
        self.bin.mkdir()
        (self.bin / "python3").symlink_to(python)
        for tool in TOOLS:
            if tool not in without and shutil.which(tool):
                (self.bin / tool).symlink_to(shutil.which(tool))
        self.env = {"HOME": str(self.home), "PATH": str(self.bin), "SHELL": "/bin/bash", "LC_ALL": "C.UTF-8",
                    "TMPDIR": str(root)}

    def run(self, shell: str, script: Path, *args: str, stdin: bool = False) -> subprocess.CompletedProcess:
        """`shell script args`, or with stdin the way `curl ... | sh -s -- args` runs it."""
        command = [shell, "-s", "--", *args] if stdin else [shell, str(script), *args]
        return subprocess.run(command, input=script.read_text() if stdin else None, capture_output=True, text=True,
                              env=self.env, timeout=300, stdin=None if stdin else subprocess.DEVNULL)

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.home)) for p in self.home.rglob("*") if not p.is_dir())


@pytest.fixture
def published(site, server, release_key, v1) -> Path:
    result = run_release_tool("publish", "--root", str(site), "--channel", "stable", "--base-url", server.url,
                              "--key", str(release_key.private_path), str(v1))
    assert result.returncode == 0, result.stderr
    return site / "install.sh"


def test_publish_writes_an_installer_for_its_site_that_shellcheck_finds_clean(published, server, release_key):
    text = published.read_text()
    assert f"SITE='{server.url}'" in text and "CHANNEL='stable'" in text and "THRESHOLD=1" in text
    assert release_key.public.keyid in text and "@" + "SITE@" not in text
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):  # build/dev.py installs it there: its absence is a broken set-up
            pytest.fail("shellcheck is not installed")
        pytest.skip("shellcheck is not installed (build/dev.py installs it)")
    result = subprocess.run(["shellcheck", "--shell=sh", str(published)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("piped", [False, True], ids=["file", "piped"])
def test_on_a_fresh_home_it_installs_pilot_in_local_bin_and_uninstall_leaves_nothing(published, v1, tmp_path, shell,
                                                                                      piped):
    shell = found(shell)
    machine = Machine(tmp_path)
    result = machine.run(shell, published, stdin=piped)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the signature was checked (openssl is on PATH): nothing to warn about
    installed = machine.home / ".local" / "bin" / "pilot"
    assert installed.read_bytes() == v1.read_bytes() and os.access(installed, os.X_OK)
    assert f"installed pilot 1.0.0 at {installed}" in result.stdout
    assert "is not on your PATH" in result.stdout and 'export PATH="$HOME/.local/bin:$PATH"' in result.stdout
    version = subprocess.run([str(installed), "--version"], capture_output=True, text=True, env=machine.env)
    assert version.stdout == "pilot 1.0.0\n"
    status = subprocess.run([str(installed), "status"], capture_output=True, text=True, env=machine.env)
    assert status.returncode == 0, status.stderr

    gone = subprocess.run([str(installed), "uninstall", "--purge", "--yes"], capture_output=True, text=True,
                          env=machine.env, stdin=subprocess.DEVNULL)
    assert gone.returncode == 0, gone.stderr
    assert machine.files() == [] and not list(machine.home.iterdir()), list(machine.home.rglob("*"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("pilot-install")] == []  # its temp dir too


def test_dir_installs_elsewhere_and_says_when_it_is_on_path(published, tmp_path):
    machine = Machine(tmp_path)
    target = tmp_path / "tools dir"
    machine.env["PATH"] = f"{target}:{machine.env['PATH']}"
    result = machine.run("/bin/sh", published, "--dir", str(target))
    assert result.returncode == 0, result.stderr
    assert (target / "pilot").is_file() and "not on your PATH" not in result.stdout
    assert not (machine.home / ".local").exists()


def tamper(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("shell", SHELLS)
def test_a_tampered_archive_is_refused_in_one_line_and_nothing_is_installed(published, site, tmp_path, shell):
    shell = found(shell)
    (archive,) = (site / "releases" / "1.0.0").glob("*.pyz")
    tamper(archive)
    machine = Machine(tmp_path)
    result = machine.run(shell, published)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "install.sh: the download's sha256 differs from the signed manifest's: refusing it, " \
                            "nothing was installed\n"
    assert machine.files() == []


@pytest.mark.parametrize("shell", SHELLS)
def test_a_tampered_manifest_is_refused_in_one_line_and_nothing_is_installed(published, site, tmp_path, shell, v2):
    """The attacker swaps the archive and writes its size and sha256 into the manifest: the signature catches it."""
    shell = found(shell)
    manifest = site / "stable" / "manifest.json"
    (archive,) = (site / "releases" / "1.0.0").glob("*.pyz")
    original = archive.read_bytes()
    shutil.copyfile(v2, archive)
    text = manifest.read_text().replace(str(len(original)), str(archive.stat().st_size))
    text = text.replace(hashlib.sha256(original).hexdigest(), hashlib.sha256(archive.read_bytes()).hexdigest())
    manifest.write_text(text)
    machine = Machine(tmp_path)
    result = machine.run(shell, published)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "signatures do not verify" in result.stderr, result.stderr
    assert machine.files() == []


def test_without_openssl_it_says_the_signature_is_not_checked_and_still_checks_the_archive(published, site,
                                                                                           tmp_path):
    machine = Machine(tmp_path, without=("openssl",))
    result = machine.run("/bin/sh", published)
    assert result.returncode == 0, result.stderr
    assert "the manifest's signature is NOT checked" in result.stderr and result.stderr.count("\n") == 1
    (archive,) = (site / "releases" / "1.0.0").glob("*.pyz")
    tamper(archive)
    again = Machine(tmp_path / "again", without=("openssl",))
    result = again.run("/bin/sh", published)
    assert result.returncode == 1 and "sha256 differs" in result.stderr
    assert again.files() == []


def test_without_a_supported_python_it_says_which_it_needs(published, tmp_path):
    old = need(interpreters().get("cp310"), "cp310")  # it stands for a python3 older than Pilot supports
    machine = Machine(tmp_path, python=str(old))
    result = machine.run("/bin/sh", published)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "install.sh: no CPython 3.11 to 3.13 found: install one (or set PILOT_PYTHON) and run " \
                            "this again\n"


def test_an_unknown_option_is_one_line(published, tmp_path):
    result = Machine(tmp_path).run("/bin/sh", published, "--frobnicate")
    assert (result.returncode, result.stderr) == (1, "install.sh: unknown option --frobnicate (see --help)\n")


def test_the_archive_it_installs_is_the_one_the_manifest_names_for_this_interpreter(published, v1, tmp_path):
    machine = Machine(tmp_path)
    assert machine.run("/bin/sh", published).returncode == 0
    meta = build_metadata(machine.home / ".local" / "bin" / "pilot")
    assert meta["build_id"] == build_metadata(v1)["build_id"]
    assert (machine.home / ".pilot" / "update" / "python").read_text() == f"{machine.bin / 'python3'}\n"
