"""Failpoints: every name is placed once in the code, unset they do nothing, set they SIGKILL."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from pilot import cli
from pilot.launcher import FAILPOINT_ENV, FAILPOINTS, failpoint
from tests.support.archives import REPO

CALL = re.compile(r"""\bfailpoint\(\s*["']([^"']+)["']\s*\)""")


def call_sites() -> list[tuple[str, str]]:
    sites = []
    for path in sorted((REPO / "pilot").rglob("*.py")):
        for name in CALL.findall(path.read_text()):
            sites.append((name, path.relative_to(REPO).as_posix()))
    return sites


def test_every_failpoint_is_placed_exactly_once_and_every_placement_is_listed():
    names = [name for name, _ in call_sites()]
    assert len(FAILPOINTS) == len(set(FAILPOINTS))
    assert sorted(names) == sorted(FAILPOINTS), call_sites()


def test_failpoints_are_placed_in_the_steps_they_name():
    where = dict(call_sites())
    assert where["after-backup"] == where["after-rename"] == "pilot/update/install.py"
    assert where["after-download"] == where["after-trial-open"] == where["before-exec"] == "pilot/update/updater.py"
    assert where["boot-trial-start"] == where["rollback-after-restore"] == "pilot/launcher.py"
    assert where["boot-before-commit"] == where["boot-after-commit"] == "pilot/update/sentinel.py"
    assert where["during-migration"] == "pilot/state/db.py"


def test_an_unset_or_other_failpoint_does_nothing(monkeypatch):
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)
    failpoint("after-rename")
    monkeypatch.setenv(FAILPOINT_ENV, "after-backup")
    failpoint("after-rename")


def test_a_set_failpoint_kills_the_process_with_sigkill():
    code = ("from pilot.launcher import failpoint\n"
            "print('before', flush=True)\nfailpoint('after-rename')\nprint('after')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={"PATH": "/usr/bin:/bin", FAILPOINT_ENV: "after-rename", "PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == "before\n"


def test_debug_failpoints_prints_one_name_per_line(capsys):
    assert cli.main(["debug", "failpoints"]) == 0
    assert capsys.readouterr().out.splitlines() == list(FAILPOINTS)


@pytest.mark.parametrize("name", ["after-rename", "during-migration"])
def test_the_self_test_child_never_inherits_a_failpoint(name, monkeypatch, tmp_path):
    from pilot.update import install

    seen = {}

    def fake_run(command, **kwargs):
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(command, 0, '{"version": "2.0.0", "build_id": "b"}', "")

    monkeypatch.setenv(FAILPOINT_ENV, name)
    monkeypatch.setattr(install.subprocess, "run", fake_run)
    install.preflight(tmp_path / "candidate", version="2.0.0", build_id="b")
    assert FAILPOINT_ENV not in seen


def test_a_trial_is_told_apart_by_version_when_both_releases_share_a_build_id():
    """Same code, new version: one build id. A kill before the swap must void the trial, not roll back."""
    from pilot.launcher import boot_decision

    trial = {"pid": 1000, "deadline": 5030.0, "from_build_id": "same", "to_build_id": "same",
             "from_version": "1.0.0", "to_version": "2.0.0"}
    dead = lambda pid: False  # noqa: E731
    assert boot_decision(trial, "same", 2000, 5000.0, is_alive=dead, version="1.0.0") == "void"
    assert boot_decision(trial, "same", 2000, 5000.0, is_alive=dead, version="2.0.0") == "rollback"
    assert boot_decision(trial, "same", 1000, 5000.0, is_alive=lambda pid: True, version="2.0.0") == "trial"
