"""Putting a verified archive in place: download beside the install, pre-flight, swap, prune.

At every instant the install path holds a complete archive: the new one is written to a
private temp file in the same directory (a rename across filesystems is not atomic),
fsynced, the current archive is kept as `<name>.backup` through a hard link, and
`os.replace` moves the new one in. The directory is fsynced after each rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pilot.errors import InstallError, UpdateCancelled, VerificationError
from pilot.launcher import (
    IN_USE_FILE,
    SELF_TEST_DASHBOARD_ENV,
    build_pythons,
    extraction_root,
    failpoint,
    fsync_directory,
    pid_alive,
    read_build_metadata,
)
from pilot.update.manifest import Artifact
from pilot.update.verify import check_digest

PREFLIGHT_TIMEOUT = 180
TEMP_PREFIX = ".pilot-download-"
LEGACY_TEMP_AGE = 24 * 3600  # a temp name without its owner's pid is stale after a day



@dataclass(frozen=True)
class Paths:
    install: Path
    backup: Path

    @classmethod
    def for_archive(cls, archive: Path) -> Paths:
        install = Path(os.path.realpath(archive))  # a symlinked install is updated where it really lives
        return cls(install, install.with_name(install.name + ".backup"))


def ensure_writable(directory: Path) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InstallError(
            f"cannot write to {directory}, where Pilot is installed",
            hint="run the update as the owner of that directory, or move pilot to one you own such as ~/.local/bin",
        )


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "F_FULLFSYNC"):  # macOS: os.fsync does not flush the drive's cache
            import fcntl

            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
        else:
            os.fsync(fd)
    finally:
        os.close(fd)


def new_temp(directory: Path) -> Path:
    """A private (0600) temp file beside the install, so the final rename stays on one filesystem."""
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".partial", dir=directory)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def temp_file(directory: Path) -> Iterator[Path]:
    """new_temp, removed on exit unless the caller moved it away."""
    path = new_temp(directory)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


Progress = Callable[[int, int], None]  # (bytes received, bytes in all), called as the download streams
Cancelled = Callable[[], bool]  # polled between chunks and while the self-test runs


def never() -> bool:
    return False


def receive(chunks: Iterator[bytes], target: Path, artifact: Artifact, progress: Progress | None = None,
            cancelled: Cancelled = never, written: Callable[[int], None] | None = None) -> None:
    """Write the stream to target, hashing as it goes; never more than the signed size.
    `written(n)` after each chunk is on disk (an early unpack follows the file)."""
    digest = hashlib.sha256()
    received = 0
    with target.open("wb") as out:
        for chunk in chunks:
            if cancelled():
                raise UpdateCancelled("the update was cancelled during the download; nothing changed")
            received += len(chunk)
            if received > artifact.size:
                raise VerificationError(f"the download is larger than the {artifact.size} bytes the manifest signs")
            digest.update(chunk)
            out.write(chunk)
            if written:
                out.flush()
                written(received)
            if progress:
                progress(received, artifact.size)
        out.flush()
        os.fsync(out.fileno())
    check_digest(received, digest.hexdigest(), size=artifact.size, sha256=artifact.sha256, what="the download")


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read a MiB at a time: the release tools' and `pilot install`'s check of a whole file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(archive: Path) -> dict:
    """The archive's pilot-build.json, read with zipfile (never by running the archive)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return read_build_metadata(zf)
    except (OSError, zipfile.BadZipFile):
        raise VerificationError(f"{archive.name}: not a Pilot archive (no readable pilot-build.json)") from None
    except ValueError as error:
        raise VerificationError(f"{archive.name}: not a Pilot archive ({error})") from None


def check_metadata(archive: Path, *, version: str, artifact: Artifact) -> dict:
    metadata = read_metadata(archive)
    if metadata.get("version") != version:
        raise VerificationError(f"the archive says it is version {metadata.get('version')!r}, not {version}")
    if artifact.python_tag not in build_pythons(metadata) or metadata.get("platform_tag") != artifact.platform_tag:
        raise VerificationError("the archive was built for another interpreter or platform than the manifest says")
    if artifact.build_id and metadata.get("build_id") != artifact.build_id:
        raise VerificationError("the archive's build id differs from the signed one")
    return metadata


def preflight(candidate: Path, *, version: str, build_id: str, cancelled: Cancelled = never,
              dashboard: bool = False) -> None:
    """Run the new archive's self-test with this interpreter; it also pre-extracts it for a warm first start.

    dashboard: the install's dashboard has run, so the self-test imports it as well (Textual: ~0.3 s)."""
    env = dict(os.environ)
    for name in ("PILOT_FAILPOINT", "SHIV_FORCE_EXTRACT", SELF_TEST_DASHBOARD_ENV):
        env.pop(name, None)
    if dashboard:
        env[SELF_TEST_DASHBOARD_ENV] = "1"
    with subprocess.Popen([sys.executable, str(candidate), "debug", "self-test"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True) as child:
        try:
            stdout, stderr = _wait(child, cancelled)
        finally:
            if child.poll() is None:  # cancelled, timed out or interrupted: the self-test goes with us
                child.kill()
                child.wait()
    answer = _last_json_line(stdout)
    if child.returncode != 0 or answer is None:
        detail = (stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1][:200]
        raise InstallError(f"the new version {version} failed its self-test: {detail}")
    if answer.get("version") != version or answer.get("build_id") != build_id:
        raise InstallError(f"the new version's self-test answered {answer.get('version')!r}, expected {version}")


def _wait(child: subprocess.Popen, cancelled: Cancelled) -> tuple[str, str]:
    """communicate() in short slices, so a cancel (a daemon asked to stop) ends the wait within a moment."""
    deadline = time.monotonic() + PREFLIGHT_TIMEOUT
    while True:
        try:
            return child.communicate(timeout=0.2)
        except subprocess.TimeoutExpired:
            if cancelled():
                raise UpdateCancelled("the update was cancelled during the self-test; nothing changed") from None
            if time.monotonic() > deadline:
                raise InstallError(f"the new version hung in its self-test ({PREFLIGHT_TIMEOUT} s)") from None


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return None


def swap_in(candidate: Path, paths: Paths) -> None:
    """Make candidate the install, keeping the current archive as the backup.

    The new file takes the installed one's owner, group and mode, so an update run with sudo
    does not hand a user's install to root."""
    if paths.install.exists():
        take_ownership_of(candidate, paths.install.stat())
    else:
        os.chmod(candidate, 0o755)
    fsync_file(candidate)
    if paths.install.exists():
        keep_as(paths.install, paths.backup)
        failpoint("after-backup")
    os.replace(candidate, paths.install)
    failpoint("after-rename")
    fsync_directory(str(paths.install.parent))


def take_ownership_of(path: Path, like: os.stat_result) -> None:
    """Give path the owner, group and mode of `like`. Only root may give a file away; a user keeps it."""
    if (like.st_uid, like.st_gid) != (os.stat(path).st_uid, os.stat(path).st_gid):
        with contextlib.suppress(PermissionError):
            os.chown(path, like.st_uid, like.st_gid)
    os.chmod(path, stat.S_IMODE(like.st_mode))


def keep_as(source: Path, target: Path) -> None:
    """Atomically make target a copy of source (a hard link when the filesystem allows)."""
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    try:
        os.link(source, staging)
    except OSError:
        shutil.copy2(source, staging)
        take_ownership_of(staging, source.stat())
        fsync_file(staging)
    os.replace(staging, target)
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()  # rename() does nothing when target is already a link to source (an interrupted swap's)
    fsync_directory(str(target.parent))


def _temp_owner(name: str, install_name: str) -> int | None:
    """The pid named by a temp file this module makes beside the install: 0 if it names none, None if not ours."""
    patterns = (
        rf"{re.escape(TEMP_PREFIX)}(\d+)-.*\.partial",  # new_temp
        rf"\.{re.escape(install_name)}(?:\.backup)?\.(\d+)\.(?:partial|current)",  # keep_as, swap_back
    )
    for pattern in patterns:
        if match := re.fullmatch(pattern, name):
            return int(match.group(1))
    if name.startswith(TEMP_PREFIX) and name.endswith(".partial"):
        return 0  # made by a Pilot before temp names carried the pid
    return None


def sweep_stale_temps(paths: Paths, now: float | None = None) -> list[Path]:
    """Remove the temp files of updates whose process is gone (SIGKILL, power cut) from beside the install.

    A file whose owner is still alive (a daemon preparing an upgrade, this very process) is never touched."""
    now = time.time() if now is None else now
    removed = []
    try:
        names = os.listdir(paths.install.parent)
    except OSError:
        return removed
    for name in names:
        owner = _temp_owner(name, paths.install.name)
        if owner is None or owner == os.getpid():
            continue
        path = paths.install.parent / name
        try:
            if owner == 0 and now - path.lstat().st_mtime < LEGACY_TEMP_AGE:
                continue
            if owner and pid_alive(owner):
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def prune_extractions(keep_build_ids: set[str]) -> list[Path]:
    """Delete extraction directories of builds that are neither kept nor in use by a running process."""
    import fcntl

    removed = []
    root = Path(extraction_root())
    for directory in sorted(root.glob("pilot_*")):
        if not directory.is_dir() or directory.name.removeprefix("pilot_") in keep_build_ids:
            continue
        fd = os.open(directory / IN_USE_FILE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
        finally:
            os.close(fd)
    return removed
