"""End-to-end fixtures: real archives installed in a temp bin dir, a real release tree served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_release_tool
from tests.support.server import StaticServer

BROKEN_UNLESS_SELF_TEST = '''import sys as _sys
if _sys.argv[1:3] != ["debug", "self-test"]:
    {action}
'''


def broken_cli(action: str) -> dict[str, str]:
    """An overlay for pilot/cli.py that passes the pre-flight self-test but breaks every real start."""
    source = (Path(__file__).resolve().parents[2] / "pilot" / "cli.py").read_text()
    header, _, rest = source.partition("from __future__ import annotations\n")
    return {"pilot/cli.py": header + "from __future__ import annotations\n" + BROKEN_UNLESS_SELF_TEST.format(
        action=action) + rest}


BROKEN = {
    "raises": broken_cli('raise RuntimeError("v3 cannot read its config")'),
    "exits": broken_cli("import os; os._exit(7)"),
    "hangs": broken_cli("import time; time.sleep(3600)"),
}

SLOW_CLI = '''import os as _os, sys as _sys, time as _time
_phase = "SELF_TEST" if _sys.argv[1:3] == ["debug", "self-test"] else "START"
if _os.environ.get("PILOT_TEST_SLOW_" + _phase):
    if _os.environ.get("PILOT_TEST_MARKER"):
        open(_os.environ["PILOT_TEST_MARKER"] + "." + _phase.lower(), "w").close()
    _time.sleep(float(_os.environ["PILOT_TEST_SLOW_" + _phase]))
'''


def slow_cli() -> dict[str, str]:
    """An overlay for pilot/cli.py that, when asked by the environment, takes its time to start or to self-test.

    PILOT_TEST_SLOW_START / PILOT_TEST_SLOW_SELF_TEST: seconds to sleep first; PILOT_TEST_MARKER: a path
    prefix whose `.start` / `.self_test` file appears when the sleep begins (so a test can signal it then)."""
    source = (Path(__file__).resolve().parents[2] / "pilot" / "cli.py").read_text()
    header, _, rest = source.partition("from __future__ import annotations\n")
    return {"pilot/cli.py": header + "from __future__ import annotations\n" + SLOW_CLI + rest}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Install:
    """One Pilot install: an archive at bin/pilot, its PILOT_HOME, and a way to run it."""

    bin_dir: Path
    home: Path
    manifest_url: str
    env: dict = field(default_factory=dict)
    python: str = sys.executable  # the interpreter that runs it: one archive serves every supported one

    @property
    def path(self) -> Path:
        return self.bin_dir / "pilot"

    @property
    def backup(self) -> Path:
        return self.bin_dir / "pilot.backup"

    def run(self, *args: str, timeout: float = 180, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env, **(extra_env or {})}
        return subprocess.run([self.python, str(self.path), *args], capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def popen(self, *args: str, extra_env: dict | None = None) -> subprocess.Popen:
        env = {**os.environ, **self.env, **(extra_env or {})}
        return subprocess.Popen([self.python, str(self.path), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)

    def status(self) -> dict:
        result = self.run("self-update", "--status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def version(self) -> str:
        return self.run("--version").stdout.strip()

    def stray_files(self) -> list[str]:
        return sorted(p.name for p in self.bin_dir.iterdir() if p.name not in ("pilot", "pilot.backup"))


@dataclass
class ReleaseSite:
    root: Path
    server: StaticServer
    key: Path

    @property
    def manifest_url(self) -> str:
        return f"{self.server.url}/stable/manifest.json"

    @property
    def manifest(self) -> Path:
        return self.root / "stable" / "manifest.json"

    def publish(self, archive: Path, *extra: str, env: dict | None = None) -> None:
        result = run_release_tool("publish", "--root", str(self.root), "--channel", "stable", "--base-url",
                                  self.server.url, "--key", str(self.key), *extra, str(archive), env=env)
        assert result.returncode == 0, result.stderr

    def artifact(self, version: str) -> Path:
        return next((self.root / "releases" / version).glob("*.pyz"))


@pytest.fixture
def release_site(site, server, release_key) -> ReleaseSite:
    return ReleaseSite(site, server, release_key.private_path)


@pytest.fixture
def install_factory(tmp_path, release_site, isolated_home):
    def make(archive: Path) -> Install:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        shutil.copyfile(archive, bin_dir / "pilot")
        (bin_dir / "pilot").chmod(0o755)
        return Install(bin_dir, isolated_home, release_site.manifest_url,
                       env={"PILOT_MANIFEST_URL": release_site.manifest_url})

    return make
