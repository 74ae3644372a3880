"""The application side of the boot sentinel: update/trial.json.

The boot guard itself lives in pilot.launcher (the archive's entry module, stdlib only, so
a broken new version cannot disable it). Here the updater opens a trial before it swaps the
new archive in, and the new version confirms its start (`commit_boot`) or, when it ends
before it could without having failed, hands the trial back (`settle_boot`) so that its
next start tries again. Which endings count as a failed start is documented in
pilot.launcher and docs/SECURITY.md.
"""

from __future__ import annotations

import os
import time

from pilot.buildinfo import current_build_id
from pilot.launcher import (
    UpdateLock,
    boot_timeout,
    failpoint,
    open_trial_record,
    read_json,
    release_trial,
    remove_file,
    same_trial,
    trial_path,
    write_json,
)
from pilot.update import state

TYPE_CHECKING = False  # the first start after an update commits here: no typing, dataclasses or pathlib on it
if TYPE_CHECKING:
    from pathlib import Path

    from pilot.buildinfo import BuildInfo

__all__ = ["commit_boot", "confirm_start", "open_trial", "open_trial_record", "settle_boot", "trial", "void_trial"]


def trial(*, from_version: str, to_version: str, from_build_id: str, to_build_id: str, install_path: Path | str,
          backup_path: Path | str, download: dict | None = None) -> dict:
    """What a trial record says of the update (open_trial adds who boots it); download: how the archive
    came (pilot.update.delta.Report.as_json()), kept in the outcome."""
    return {"from_version": from_version, "to_version": to_version, "from_build_id": from_build_id,
            "to_build_id": to_build_id, "install_path": str(install_path), "backup_path": str(backup_path),
            **({"download": download} if download else {})}


def open_trial(trial: dict, *, exec_argv: tuple[str, ...] | None, timeout: float | None = None) -> dict:
    """Record the trial before the swap, so a crash from here on is caught by the boot guard.

    With `exec_argv` this process is about to exec the new version with those arguments: it is
    the trial boot, with a deadline. Without, the new version starts with the user's next
    command, which claims the trial then. `timeout`: seconds the exec'd boot has to confirm (default
    PILOT_BOOT_TIMEOUT). Call under UpdateLock."""
    now = time.time()
    record = {**trial, "started_at": now, "opened_by": os.getpid(),
              "booted": False, "pid": None, "deadline": None, "resume_argv": []}
    if exec_argv is not None:
        record.update(pid=os.getpid(), deadline=now + (timeout or boot_timeout()), resume_argv=list(exec_argv))
    write_json(trial_path(), record)
    return record


def void_trial(record: dict) -> None:
    """The swap did not happen (it failed before the rename): drop the record this process opened."""
    with UpdateLock():
        if same_trial(open_trial_record(), record):
            remove_file(trial_path())


def _own_trial(build_id: str | None) -> dict | None:
    """The open trial if this process is the trial boot of this build."""
    if build_id is None or not os.path.exists(trial_path()):
        return None
    record = read_json(trial_path())
    if record is None or record.get("pid") != os.getpid() or record.get("to_build_id") != build_id:
        return None
    return record


def commit_boot(build: BuildInfo | None = None) -> dict | None:
    """Confirm that this process, the trial boot, has started. Returns the committed trial, or None if none was ours."""
    record = _own_trial(build.build_id if build is not None else current_build_id())
    if record is None:
        return None
    import signal  # here: a first start that has no trial to commit never needs it

    signal.alarm(0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    failpoint("boot-before-commit")
    with UpdateLock():
        if same_trial(read_json(trial_path()), record):
            state.record(record, "committed")
            remove_file(trial_path())
    failpoint("boot-after-commit")
    return record


def confirm_start(command: str | None) -> dict | None:
    """Called by the CLI once the arguments are parsed: every command but `pilot start` has started then."""
    if command == "start" or not os.path.exists(trial_path()):  # one stat on every start
        return None
    return commit_boot()


def settle_boot(ending: str, detail: str) -> None:
    """A command ended before it confirmed its start (only `pilot start` can): decide what that says.

    ending: "interrupted" (a signal), "output" (it could not write its output), "refused" (a
    refusal it explained in one line), "exited" (it returned) or "error" (anything else). The first two say nothing
    about the new version: the trial is handed back and its next start tries again. So does a
    refusal when the user's own command claimed the trial; but the exec right after an update
    re-runs the very command the old version was running, so there a refusal is the new
    version's failure. A failure's line is kept for the boot guard, which rolls back with it."""
    if not os.path.exists(trial_path()):
        return
    record = _own_trial(current_build_id())
    if record is None:
        return
    exec_d = record.get("opened_by", record["pid"]) == record["pid"]
    if ending in ("interrupted", "output") or (ending in ("refused", "exited") and not exec_d):
        import signal

        signal.alarm(0)
        release_trial(record)
        return
    with UpdateLock():
        current = read_json(trial_path())
        if same_trial(current, record):
            current["failure"] = f"did not start: {detail}"
            write_json(trial_path(), current)
