"""The README's first command, `python3 release-tools/demo.py`, runs the whole story to its end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.archives import REPO

pytestmark = pytest.mark.slow


def test_the_demo_installs_with_the_one_line_installer_and_updates_to_the_new_version(tmp_path, isolated_home):
    work = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(REPO / "release-tools" / "demo.py"), "--workdir", str(work)],
                            capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"installed pilot 1.0.0 at {work / 'bin' / 'pilot'}" in result.stdout
    assert "pilot 1.1.0 (updated from 1.0.0)" in result.stdout
    assert f"done: {work / 'bin' / 'pilot'} is now 1.1.0" in result.stdout
    assert sorted(p.name for p in (work / "bin").iterdir()) == ["pilot", "pilot.backup"]
    assert not isolated_home.exists()  # the PILOT_HOME it was given stays untouched: it uses its own under demo/
