"""Mount a file system for the length of a test (a full or read-only disk), or skip where this machine cannot."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def mounted(*mount_args: str, target: Path) -> Iterator[Path]:
    """`mount ... target` for the duration, or skip when this machine does not let us mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    target.mkdir(parents=True, exist_ok=True)
    result = _run(["mount", *mount_args, str(target)])
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        _run(["umount", "-l", str(target)])
