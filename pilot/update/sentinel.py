"""The application side of the boot sentinel and the update state file.

The boot guard itself lives in pilot.launcher (the archive's entry module, stdlib only,
so a broken new version cannot disable it). This module opens a trial before the exec,
commits it once the new version has really started, and reads and writes the update
state (update/state.json): the last outcome, the highest manifest serial accepted, the
versions that failed their trial, and whether the user has been told.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pilot.buildinfo import BuildInfo
from pilot.errors import UpdateError
from pilot.launcher import (
    BOOT_TIMEOUT_SECONDS,
    UpdateLock,
    failpoint,
    read_json,
    record_outcome,
    remove_file,
    state_path,
    trial_path,
    write_json,
)

__all__ = ["Trial", "UpdateLock", "commit_boot", "load_state", "open_trial", "save_state", "take_notice"]


@dataclass(frozen=True)
class Trial:
    from_version: str
    to_version: str
    from_build_id: str
    to_build_id: str
    install_path: Path
    backup_path: Path
    resume_argv: tuple[str, ...]


def boot_timeout() -> int:
    return int(os.environ.get("PILOT_BOOT_TIMEOUT", BOOT_TIMEOUT_SECONDS))


@contextlib.contextmanager
def exclusive_update() -> Iterator[None]:
    """Hold the update lock for a whole update or rollback; a second one fails at once, cleanly."""
    try:
        lock = UpdateLock(blocking=False).__enter__()
    except BlockingIOError:
        raise UpdateError("another update is running", hint="wait for it to finish, then try again") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def load_state() -> dict:
    return read_json(state_path()) or {}


def save_state(state: dict) -> None:
    write_json(state_path(), state)


def open_trial_record() -> dict | None:
    return read_json(trial_path())


def open_trial(trial: Trial) -> dict:
    """Record the trial boot with its one attempt already spent (boot counting before the exec).

    Call under UpdateLock before the new archive replaces the old one.
    """
    timeout = boot_timeout()
    record = {
        "from_version": trial.from_version, "to_version": trial.to_version,
        "from_build_id": trial.from_build_id, "to_build_id": trial.to_build_id,
        "install_path": str(trial.install_path), "backup_path": str(trial.backup_path),
        "resume_argv": list(trial.resume_argv), "pid": os.getpid(), "attempts_left": 0,
        "started_at": time.time(), "deadline": time.time() + timeout,
    }
    write_json(trial_path(), record)
    return record


def commit_boot(build: BuildInfo | None) -> dict | None:
    """Mark this process's trial boot as good. Returns the committed trial, or None if none was ours."""
    record = open_trial_record()
    if build is None or record is None:
        return None
    if record.get("pid") != os.getpid() or record.get("to_build_id") != build.build_id:
        return None
    signal.alarm(0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    failpoint("boot-before-commit")
    with UpdateLock():
        write_json(state_path(), record_outcome(load_state(), record, "committed"))
        remove_file(trial_path())
    failpoint("boot-after-commit")
    return record


def record_failure(state: dict, outcome: str, reason: str, *, from_version: str, to_version: str | None,
                   install_path: Path | None, backup_path: Path | None) -> dict:
    """Note an update that ended before any trial (refused, failed to download...) in the state."""
    trial = {"from_version": from_version, "to_version": to_version,
             "install_path": str(install_path) if install_path else None,
             "backup_path": str(backup_path) if backup_path else None}
    new_state = record_outcome(state, trial, outcome, reason)
    new_state["notice_pending"] = False  # the user saw this one as it happened
    return new_state


def record_installed(trial: Trial) -> None:
    """`--no-restart`: the new archive is in place and passed its self-test; it starts with the next command."""
    record = {"from_version": trial.from_version, "to_version": trial.to_version,
              "install_path": str(trial.install_path), "backup_path": str(trial.backup_path)}
    with UpdateLock():
        state = record_outcome(load_state(), record, "installed")
        state["notice_pending"] = False
        save_state(state)


def rollback_notice() -> str | None:
    """One line for the user when an update was rolled back and they have not been told yet."""
    if not os.path.exists(state_path()):
        return None
    state = load_state()
    last = state.get("last") or {}
    if last.get("state") != "rolled_back" or not state.get("notice_pending"):
        return None
    take_notice()
    return (f"pilot: rolled back from {last.get('to_version')} to {last.get('from_version')}: {last.get('reason')} "
            "(details: pilot self-update --status)")


def take_notice() -> dict | None:
    """The last outcome if the user has not been told about it yet (and mark it told)."""
    state = load_state()
    if not state.get("notice_pending") or not state.get("last"):
        return None
    with UpdateLock():
        state = load_state()
        state["notice_pending"] = False
        save_state(state)
    return state.get("last")
