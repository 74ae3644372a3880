"""Build real Pilot archives with build/build.py, cached by everything that goes into them.

The cache lives in .pytest_cache/pilot-archives and is keyed by the sources, the locks,
the version, the trusted keys and any overlay, so a rerun with unchanged code reuses the
archives and a change to any input builds afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "build" / "build.py"
CACHE = REPO / ".pytest_cache" / "pilot-archives"


@contextlib.contextmanager
def payload(archive: Path) -> Iterator[zipfile.ZipFile]:
    """The archive's inner zip (site-packages and the entry module), read the way the launcher reads it."""
    from pilot.launcher import open_payload

    with open(archive, "rb") as stream, zipfile.ZipFile(stream) as outer, open_payload(outer, stream) as inner:
        yield inner


def build_metadata(archive: Path) -> dict:
    """The archive's pilot-build.json, read as the launcher reads it."""
    from pilot.launcher import read_build_metadata

    with zipfile.ZipFile(archive) as zf:
        return read_build_metadata(zf)


def source_fingerprint() -> str:
    digest = hashlib.sha256()
    roots = [REPO / "pilot", REPO / "build"]
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and ".venv" not in path.name and not any(
                part.startswith(".venv") for part in path.relative_to(REPO).parts
            ):
                digest.update(path.relative_to(REPO).as_posix().encode())
                digest.update(path.read_bytes())
    digest.update((REPO / "manifest.schema.json").read_bytes())
    return digest.hexdigest()


def run_build(version: str, out: Path, *, trusted_keys: Iterable[Path] = (), threshold: int = 1,
              root_keys: Iterable[Path] = (), root_threshold: int = 1, overlay: Path | None = None,
              env: dict | None = None, compresslevel: int = 6) -> Path:
    command = [sys.executable, str(BUILD_SCRIPT), "--version", version, "--out", str(out),
               "--threshold", str(threshold), "--compresslevel", str(compresslevel)]
    for key in trusted_keys:
        command += ["--trusted-key", str(key)]
    for key in root_keys:
        command += ["--root-key", str(key)]
    if root_keys:
        command += ["--root-threshold", str(root_threshold)]
    if overlay is not None:
        command += ["--overlay", str(overlay)]
    result = subprocess.run(command, capture_output=True, text=True, env=with_interpreters(env or os.environ.copy()),
                            timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"build failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def with_interpreters(env: dict) -> dict:
    """env with this machine's CPythons first on PATH as python3.X, as the release builders have them, so that a
    test's archive carries Pilot's bytecode for each, like a release's (a version manager's shims may not run
    a version that is not selected)."""
    from tests.support.pythons import interpreters

    directory = CACHE / "interpreters"
    directory.mkdir(parents=True, exist_ok=True)
    for tag, python in interpreters().items():
        link = directory / f"python{tag[2]}.{tag[3:]}"
        if tag.startswith("cp3") and not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(python)
    return {**env, "PATH": f"{directory}{os.pathsep}{env.get('PATH', '')}"}


class ArchiveFactory:
    """`build(version, overlay={"pilot/x.py": "..."})` -> path of a cached, real archive."""

    def __init__(self, trusted_keys: list[Path], threshold: int = 1) -> None:
        self.trusted_keys = trusted_keys
        self.threshold = threshold
        self.fingerprint = source_fingerprint()

    def build(self, version: str, overlay: dict[str, str] | None = None, *,
              trusted_keys: list[Path] | None = None, threshold: int | None = None, compresslevel: int = 6,
              root_keys: list[Path] = (), root_threshold: int = 1) -> Path:
        """compresslevel: another one than the default 6 changes every member (a release sharing nothing);
        root_keys: the offline keys that alone sign later key sets (build.py --root-key), root_threshold of them."""
        keys = self.trusted_keys if trusted_keys is None else trusted_keys
        threshold = self.threshold if threshold is None else threshold
        recipe = {
            "source": self.fingerprint, "version": version, "overlay": overlay or {}, "threshold": threshold,
            "keys": [hashlib.sha256(k.read_bytes()).hexdigest() for k in keys],
            **({"compresslevel": compresslevel} if compresslevel != 6 else {}),
            **({"root_keys": [hashlib.sha256(k.read_bytes()).hexdigest() for k in root_keys],
                "root_threshold": root_threshold} if root_keys else {}),
        }
        slot = CACHE / hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / f".{slot.name}.lock", "w") as lock:  # two test runs in one checkout build it once
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._build_into(slot, version, overlay, keys, threshold, compresslevel, root_keys, root_threshold)

    def _build_into(self, slot: Path, version: str, overlay: dict[str, str] | None, keys: list[Path], threshold: int,
                    compresslevel: int, root_keys: list[Path], root_threshold: int) -> Path:
        done = slot / "archive.txt"
        if done.exists():
            path = Path(done.read_text().strip())
            if path.exists():
                return path
        shutil.rmtree(slot, ignore_errors=True)
        overlay_dir = None
        if overlay:
            overlay_dir = slot / "overlay"
            for name, text in overlay.items():
                (overlay_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (overlay_dir / name).write_text(text)
        path = run_build(version, slot / "dist", trusted_keys=keys, threshold=threshold, root_keys=root_keys,
                         root_threshold=root_threshold, overlay=overlay_dir, compresslevel=compresslevel)
        done.write_text(str(path))
        return path
