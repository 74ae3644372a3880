"""Self-update. The front door: the CLI, the headless daemon and the dashboard use only these names.

    open_updater(...) -> Updater   check(), begin() -> Update (prepare, apply), update(), restart_into_installed()
    open_background_updater(cfg)   the daemon's engine, or None where Pilot cannot update itself
    roll_back()                    `pilot self-update --rollback`
    update_status()                `pilot self-update --status`
    confirm_start(), settle_boot(), commit_boot()
                                   a new version confirms its start, or ends before it could
    take_notice()                  how the last update ended, told once
    note_dashboard_user()          the dashboard ran here: pre-flights test its imports too
    FileSource                     offline installs: the same checks over local files
    install_copy(build, dir)       `pilot install`: the running archive copied onto PATH, checked;
                                   path_hint(dir) the line that puts dir on PATH
    plan_removal(build, purge), remove(removal)
                                   `pilot uninstall`

Layers, python-tuf style: `manifest`, `schema` and `verify` are pure (bytes in, dataclasses or
errors out); `fetch` is the only network code; `install`, `sentinel` and `restart` the only code
that touches the install and execs; `state` owns update/state.json; `updater` is the flow and
holds every guard. The names load lazily, so importing one small module here costs nothing of
the rest (`pilot status` imports `state` alone).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~2 ms, and `pilot status` comes through here
if TYPE_CHECKING:
    from pilot.update.fetch import FileSource
    from pilot.update.installation import install_copy, path_hint, plan_removal, remove
    from pilot.update.sentinel import commit_boot, confirm_start, settle_boot
    from pilot.update.state import note_dashboard_user, take_notice, update_status
    from pilot.update.updater import (
        CheckResult,
        Prepared,
        Settings,
        Update,
        UpdateOutcome,
        Updater,
        open_background_updater,
        open_updater,
        roll_back,
    )

__all__ = ["CheckResult", "FileSource", "Prepared", "Settings", "Update", "UpdateOutcome", "Updater", "commit_boot",
           "confirm_start", "install_copy", "note_dashboard_user", "open_background_updater", "open_updater",
           "path_hint", "plan_removal", "remove", "roll_back", "settle_boot", "take_notice", "update_status"]
_HOMES = {name: "pilot.update.updater" for name in __all__} | {"FileSource": "pilot.update.fetch"} | {
    name: "pilot.update.sentinel" for name in ("commit_boot", "confirm_start", "settle_boot")} | {
    name: "pilot.update.state" for name in ("note_dashboard_user", "take_notice", "update_status")} | {
    name: "pilot.update.installation" for name in ("install_copy", "path_hint", "plan_removal", "remove")}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'pilot.update' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
