"""The other CPython interpreters this machine has (pyenv's), for the wrong-interpreter tests."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

PYENV_ROOT = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
PYTHON_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def other_interpreters() -> list:
    """Every other CPython 2.7+ that pyenv has, newest first; at least a (skipped) 3.12 and 2.7 slot."""
    found = {}
    for python in sorted(PYENV_ROOT.glob("versions/[23].*/bin/python[23].*"), reverse=True):
        match = re.fullmatch(r"python([23])\.(\d+)", python.name)
        if match and f"cp{match[1]}{match[2]}" != PYTHON_TAG:
            found.setdefault(f"cp{match[1]}{match[2]}", python)
    found.setdefault("cp312", None)
    found.setdefault("cp27", None)
    return [pytest.param(path, tag, id=tag) for tag, path in found.items()]
