"""`pilot install` and `pilot uninstall`: put the running archive on PATH, or take an install away.

The copy is checked before it is put in place: its bytes hash to what was read from the running
archive, and its embedded metadata names this build. An existing install is replaced the way an
update replaces it (install.swap_in: the old archive kept as <path>.backup), and both commands
hold the whole-update lock, so neither runs into an update of the same home.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pilot.buildinfo import BuildInfo
from pilot.errors import InstallError, VerificationError
from pilot.launcher import (
    UpdateInProgress,
    extraction_dir,
    extraction_root,
    pilot_home,
    remember_interpreter,
    update_dir,
)
from pilot.update.install import Paths, ensure_writable, fsync_file, read_metadata, sha256_of, swap_in, temp_file

INSTALL_NAME = "pilot"
READ_BYTES = 1 << 20


def default_directory() -> Path:
    return Path.home() / ".local" / "bin"


@dataclass(frozen=True)
class Placed:
    path: Path
    version: str
    replaced: str | None  # the version the copy replaced there, or None (nothing was there)
    changed: bool  # False: this very build was installed there already
    on_path: bool
    found_first: Path | None  # what `pilot` runs on PATH now, when it is another file than this one

    def as_json(self) -> dict:
        return {"installed": str(self.path), "version": self.version, "replaced": self.replaced,
                "changed": self.changed, "on_path": self.on_path,
                "found_first": str(self.found_first) if self.found_first else None}


def install_copy(build: BuildInfo, directory: Path | str | None = None) -> Placed:
    """Copy the running archive to DIRECTORY/pilot (default ~/.local/bin), checked, executable, atomically."""
    target_dir = Path(os.path.expanduser(str(directory))) if directory else default_directory()
    target_dir = Path(os.path.abspath(target_dir))
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InstallError(f"cannot create {target_dir}: {error.strerror}", hint="choose another --dir") from None
    if not target_dir.is_dir():
        raise InstallError(f"{target_dir} is not a directory", hint="choose another --dir")
    ensure_writable(target_dir)
    paths = Paths.for_archive(target_dir / INSTALL_NAME)
    with holding_the_update_lock():
        there = installed_metadata(paths.install)
        replaced = str(there.get("version")) if there is not None else None
        changed = not _same_file(build.archive, paths.install) and (there is None or
                                                                    there.get("build_id") != build.build_id)
        if changed:
            with temp_file(paths.install.parent) as candidate:
                copy_checked(build, candidate)
                swap_in(candidate, paths)
    _record_interpreter()
    return Placed(paths.install, build.version, replaced if changed else None, changed,
                  on_path(target_dir), _found_first(paths.install))


def installed_metadata(path: Path) -> dict | None:
    """The build metadata of the Pilot archive at path; None when nothing is there; InstallError for another file."""
    if not os.path.lexists(path):
        return None
    try:
        return read_metadata(path)
    except VerificationError:
        raise InstallError(f"{path} exists and is not a Pilot archive",
                           hint="move it away, or choose another --dir") from None


def copy_checked(build: BuildInfo, target: Path) -> None:
    """target := the running archive's bytes; then read back: the same sha256, metadata naming this build."""
    digest = hashlib.sha256()
    try:
        with open(build.archive, "rb") as source, open(target, "wb") as out:
            for block in iter(lambda: source.read(READ_BYTES), b""):
                digest.update(block)
                out.write(block)
    except OSError as error:
        raise InstallError(f"cannot copy {build.archive} to {target.parent}: {error.strerror}") from None
    fsync_file(target)
    if sha256_of(target) != digest.hexdigest():
        raise VerificationError(f"the copy in {target.parent} does not read back as written (a failing disk?)")
    if read_metadata(target).get("build_id") != build.build_id:
        raise VerificationError(f"{build.archive} changed while it was copied (an update replaced it?): run "
                                "the command again")
    os.chmod(target, 0o755)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _record_interpreter() -> None:
    """The interpreter that installs Pilot is the one its `pilot` starts (the archive's sh preamble reads
    the record), even where `python3` on PATH is another, unsupported one."""
    try:
        os.makedirs(update_dir(), exist_ok=True)
    except OSError:
        return  # an unusable PILOT_HOME: the preamble looks on PATH instead, and the command says why
    remember_interpreter()


def on_path(directory: Path) -> bool:
    return any(entry and _same_file(Path(entry), directory) for entry in os.environ.get("PATH", "").split(os.pathsep))


def _found_first(installed: Path) -> Path | None:
    found = shutil.which(INSTALL_NAME)
    return Path(found) if found and not _same_file(found, installed) else None


def path_hint(directory: Path, shell: str | None = None) -> str:
    """The line that puts directory on PATH, for the user's shell, and the file it goes in."""
    shown = str(directory).replace(str(Path.home()), "$HOME", 1) if directory.is_relative_to(Path.home()) \
        else str(directory)
    name = Path(shell or os.environ.get("SHELL") or "sh").name
    if name == "fish":
        return f"fish_add_path {shown}"
    profile = {"bash": "~/.bashrc", "zsh": "~/.zshrc"}.get(name, "~/.profile")
    return f"echo 'export PATH=\"{shown}:$PATH\"' >> {profile}"


class holding_the_update_lock:
    """The whole-update lock of this PILOT_HOME, or InstallError when an update or another install holds it."""

    def __enter__(self) -> holding_the_update_lock:
        self.lock = UpdateInProgress()
        try:
            acquired = self.lock.acquire()
        except OSError as error:
            raise InstallError(f"cannot use {update_dir()}: {error.strerror}",
                               hint="set PILOT_HOME to a directory you can write") from None
        if not acquired:
            raise InstallError("an update of this Pilot is in progress", hint="run this again when it has ended")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.lock.release()


# --- uninstall --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """What `pilot uninstall` removes: the install (and the link it was run through), its backup, the unpacked
    copies of both builds, and with purge the home."""

    install: Path
    files: list[Path]
    extractions: list[Path]
    home: Path | None
    kept_home: Path | None = field(default=None)

    def as_json(self) -> dict:
        return {"removed": [str(p) for p in (*self.files, *self.extractions)] + ([str(self.home)] if self.home else []),
                "kept": str(self.kept_home) if self.kept_home else None}


def plan_removal(build: BuildInfo, purge: bool) -> Removal:
    paths = Paths.for_archive(build.archive)
    files = [p for p in (Path(os.path.abspath(build.archive)), paths.install, paths.backup) if os.path.lexists(p)]
    build_ids = {build.build_id}
    if paths.backup.exists():
        with contextlib.suppress(VerificationError):  # not an archive of ours: removed all the same
            build_ids.add(str(read_metadata(paths.backup).get("build_id")))
    root = Path(extraction_root())
    extractions = []
    for build_id in sorted(build_ids):
        name = Path(extraction_dir(build_id)).name
        extractions += sorted(root.glob(f".{name}*"))  # its lock, and copies being made, unpacked early or trashed
        if (root / name).exists():
            extractions.append(root / name)
    home = Path(pilot_home())
    return Removal(paths.install, list(dict.fromkeys(files)), extractions, home if purge and home.exists() else None,
                   None if purge or not home.exists() else home)


def remove(removal: Removal) -> None:
    """Delete what plan_removal found, under the update lock; the unpacked copy this process runs from last."""
    with holding_the_update_lock():
        for path in removal.files:
            _delete(path)
    for path in removal.extractions:
        _delete(path)
    root = Path(extraction_root())
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if removal.home is not None:
        _delete(removal.home)
    if removal.install.parent == default_directory():  # made by `pilot install`, most likely: gone if empty now
        for directory in (default_directory(), default_directory().parent):
            with contextlib.suppress(OSError):
                directory.rmdir()


def _delete(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        raise InstallError(f"cannot remove {path}: {error.strerror}",
                           hint="remove it by hand, or run this as its owner") from None


__all__ = ["Placed", "Removal", "default_directory", "install_copy", "path_hint", "plan_removal", "remove"]
