"""Shared fixtures: an isolated PILOT_HOME for every test, deterministic keys, cached real archives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.archives import REPO, ArchiveFactory
from tests.support.keys import TestKey, make_key
from tests.support.server import StaticServer

RELEASE_TOOL = REPO / "release-tools" / "release.py"


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, session_dir, monkeypatch) -> Path:
    """No test may touch the real ~/.pilot or ~/.shiv."""
    home = tmp_path / "pilot-home"
    monkeypatch.setenv("PILOT_HOME", str(home))
    monkeypatch.setenv("SHIV_ROOT", str(session_dir / "shiv-root"))
    monkeypatch.setenv("PYENV_ROOT", os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv")))
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    monkeypatch.delenv("PILOT_MANIFEST_URL", raising=False)
    monkeypatch.delenv("PILOT_FAILPOINT", raising=False)
    return home


@pytest.fixture
def alarm_guard():
    """Trial boots, commits and the engine's exec arm or disarm SIGALRM, which pytest-timeout also uses:
    put it back afterwards."""
    handler = signal.getsignal(signal.SIGALRM)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, handler)


@pytest.fixture(scope="session")
def release_key(session_dir) -> TestKey:
    return make_key("release", session_dir / "keys")


@pytest.fixture(scope="session")
def other_key(session_dir) -> TestKey:
    """A well-formed key that no build trusts."""
    return make_key("intruder", session_dir / "keys")


@pytest.fixture(scope="session")
def archives(release_key) -> ArchiveFactory:
    return ArchiveFactory([release_key.public_path])


@pytest.fixture(scope="session")
def v1(archives) -> Path:
    """Pilot 1.0.0, built once per session (and cached across runs)."""
    return archives.build("1.0.0")


@pytest.fixture(scope="session")
def v2(archives) -> Path:
    return archives.build("2.0.0")


def run_release_tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RELEASE_TOOL), *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture
def site(tmp_path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    return root


@pytest.fixture
def server(site):
    with StaticServer(site) as running:
        yield running
