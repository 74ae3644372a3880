"""`pilot debug self-test`, the new version's pre-flight, run from real archives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NATIVE = ["_cffi_backend", "cryptography.hazmat.bindings._rust", "yaml._yaml"]


def self_test(archive: Path, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """The self-test's result and the top-level names of the modules it imported."""
    environment = {key: value for key, value in os.environ.items() if key != "PILOT_SELF_TEST_DASHBOARD"}
    environment.update(PILOT_HOME=str(tmp_path / "home"), SHIV_ROOT=str(tmp_path / "shiv"), **env)
    result = subprocess.run([sys.executable, "-X", "importtime", str(archive), "debug", "self-test"],
                            capture_output=True, text=True, env=environment, timeout=120)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return result, names


def test_the_self_test_loads_every_native_library_and_leaves_the_dashboard_out(v1, tmp_path):
    result, names = self_test(v1, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["native"] == NATIVE and answer["dashboard"] is False
    assert "textual" not in names and {"cryptography", "yaml", "urllib3", "sqlite3"} <= names


def test_for_a_dashboard_user_the_self_test_imports_the_dashboard_too(v1, tmp_path):
    result, names = self_test(v1, tmp_path, PILOT_SELF_TEST_DASHBOARD="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["dashboard"] is True and "textual" in names


def test_a_native_library_that_cannot_load_fails_the_self_test(archives, tmp_path):
    """An extension module built for another machine: the pre-flight must say so before any swap."""
    broken = archives.build("1.0.0", overlay={f"pilot/_probe{_suffix()}": "not a shared object\n"})
    result, _ = self_test(broken, tmp_path)
    assert result.returncode != 0
    assert "pilot._probe" in result.stderr or "_probe" in result.stderr


def _suffix() -> str:
    import importlib.machinery

    return importlib.machinery.EXTENSION_SUFFIXES[0]
