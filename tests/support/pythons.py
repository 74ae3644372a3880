"""The CPython interpreters this machine has (pyenv's), for the tests that run one archive under each.

Supported ones (pilot.launcher.PUBLISHED_PYTHONS) must run it; the others must get the wrong-interpreter
line. A tag the machine lacks is still a test case, skipped with the reason, so a run says what it missed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from pilot.launcher import PUBLISHED_PYTHONS

PYENV_ROOT = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
PYTHON_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def interpreters() -> dict[str, Path]:
    """tag -> interpreter: this one (the test's), then every other CPython 2.7+ that pyenv has, newest first."""
    found = {PYTHON_TAG: Path(sys.executable)}
    for python in sorted(PYENV_ROOT.glob("versions/[23].*/bin/python[23].*"), reverse=True):
        match = re.fullmatch(r"python([23])\.(\d+)", python.name)
        if match:
            found.setdefault(f"cp{match[1]}{match[2]}", python)
    return found


def _params(tags: list[str]) -> list:
    found = interpreters()
    return [pytest.param(found.get(tag), tag, id=tag) for tag in tags]


def supported_interpreters() -> list:
    """(python, tag) for each interpreter an archive supports; python is None where the machine has none."""
    return _params(list(PUBLISHED_PYTHONS))


def unsupported_interpreters() -> list:
    """(python, tag) for the interpreters outside the supported range this machine has; at least a (skipped)
    3.10 and 2.7 slot."""
    tags = [tag for tag in interpreters() if tag not in PUBLISHED_PYTHONS]
    return _params(tags + [tag for tag in ("cp310", "cp27") if tag not in tags])


def need(python: Path | None, tag: str) -> Path:
    if python is None:
        pytest.skip(f"no CPython {tag} on this machine (looked under {PYENV_ROOT}/versions)")
    return python
