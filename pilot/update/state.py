"""update/state.json: the only application-side reader and writer of the update state.

The file remembers what an install has learnt: the highest manifest serial and key set it
accepted (replay defence), its rollout identity, the versions that failed to start here and
those the user rolled back from, how the last update ended and whether the user has been
told. The entry module (pilot.launcher) writes outcomes too, through its one fold
`record_outcome`; everything here goes through that fold or through `_change`, always
under the update lock, and keeps keys it does not know (a newer Pilot may have written them).
"""

from __future__ import annotations

from collections.abc import Callable

from pilot.launcher import (
    HOME_HINT,
    UpdateLock,
    fold_state,
    home_problem,
    pilot_home,
    read_json,
    state_path,
    status_report,
    write_json,
)
from pilot.records import Record

__all__ = ["Outcome", "UpdateState", "install_id", "load", "record", "remember_manifest", "remember_standing",
           "take_notice", "update_status"]
STANDING = "standing"  # the last verified check's word on the running version (remember_standing)


class Outcome(Record):
    """How the last update ended (`last` in the file)."""

    state: str  # committed, installed, rolled_back, rolled_back_by_user, failed
    from_version: str | None
    to_version: str | None
    at: str | None
    reason: str | None
    install_path: str | None
    backup_path: str | None
    rollback_pid: int | None = None

    @classmethod
    def from_json(cls, data: object) -> Outcome | None:
        if not isinstance(data, dict) or not isinstance(data.get("state"), str):
            return None
        text = {name: _text(data.get(name)) for name in
                ("from_version", "to_version", "at", "reason", "install_path", "backup_path")}
        pid = data.get("rollback_pid")
        return cls(state=data["state"], rollback_pid=pid if type(pid) is int else None, **text)


class UpdateState(Record):
    highest_serial: int = 0
    highest_keyset_version: int = 1
    install_id: str | None = None
    bad_versions: tuple[str, ...] = ()  # failed to start here: never chosen automatically again
    user_rollbacks: tuple[str, ...] = ()  # rolled back from on request: never chosen automatically again
    last: Outcome | None = None
    notice_pending: bool = False
    dashboard_user: bool = False  # the dashboard has run here: a pre-flight imports it too

    @classmethod
    def from_json(cls, data: dict) -> UpdateState:
        """Whatever is in the file, read leniently: a damaged field reads as its default."""
        return cls(
            highest_serial=_count(data.get("highest_serial"), 0),
            highest_keyset_version=_count(data.get("highest_keyset_version"), 1),
            install_id=_text(data.get("install_id")),
            bad_versions=_versions(data.get("bad_versions")),
            user_rollbacks=_versions(data.get("user_rollbacks")),
            last=Outcome.from_json(data.get("last")),
            notice_pending=data.get("notice_pending") is True,
            dashboard_user=data.get("dashboard_user") is True,
        )

    @property
    def skipped_versions(self) -> tuple[str, ...]:
        """Versions an automatic choice passes over."""
        return self.bad_versions + tuple(v for v in self.user_rollbacks if v not in self.bad_versions)


def _count(value: object, default: int) -> int:
    return value if type(value) is int and value >= default else default


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _versions(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _raw() -> dict:
    return read_json(state_path()) or {}


def load() -> UpdateState:
    return UpdateState.from_json(_raw())


def _change(edit: Callable[[dict], bool]) -> None:
    """Read, edit in place (`edit` returns whether it changed anything) and write, under the update lock."""
    with UpdateLock():
        data = _raw()
        if edit(data):
            write_json(state_path(), data)


def remember_manifest(serial: int, keyset_version: int) -> None:
    """Raise the high-water marks to what a verified manifest showed (never lower them)."""

    def edit(data: dict) -> bool:
        current = UpdateState.from_json(data)
        if serial <= current.highest_serial and keyset_version <= current.highest_keyset_version:
            return False
        data["highest_serial"] = max(serial, current.highest_serial)
        data["highest_keyset_version"] = max(keyset_version, current.highest_keyset_version)
        return True

    _change(edit)


def remember_standing(version: str, line: str | None, *, required: bool) -> None:
    """Keep what the last verified check said of the running `version` (below the minimum, yanked or
    halted: `line`), or forget it when all is well; every command then says it (the entry module reads it for them,
    without the update engine)."""
    entry = {"version": version, "line": line, "required": required} if line else None
    if _raw().get(STANDING) == entry:
        return  # the usual case: one read, no lock, no write

    def edit(data: dict) -> bool:
        if data.get(STANDING) == entry:
            return False
        if entry is None:
            data.pop(STANDING, None)
        else:
            data[STANDING] = entry
        return True

    _change(edit)


def install_id() -> str:
    """This install's random identity (its place in staged rollouts), made on first use."""
    made: list[str] = []

    def edit(data: dict) -> bool:
        existing = _text(data.get("install_id"))
        if existing:
            made.append(existing)
            return False
        import secrets

        made.append(secrets.token_hex(16))
        data["install_id"] = made[0]
        return True

    _change(edit)
    return made[0]


def note_dashboard_user() -> None:
    """The dashboard starts: from now on an update's pre-flight imports the dashboard's code as well."""
    if load().dashboard_user:
        return  # the usual case: one read, no lock, no write

    def edit(data: dict) -> bool:
        changed = data.get("dashboard_user") is not True
        data["dashboard_user"] = True
        return changed

    _change(edit)


def record(trial: dict, outcome: str, reason: str | None = None, *, notice: bool = True) -> None:
    """Fold an outcome in (pilot.launcher.record_outcome). `notice=False`: the user saw it happen."""
    with UpdateLock():
        fold_state(trial, outcome, reason, notice)


def take_notice() -> Outcome | None:
    """The last outcome if the user has not been told about it yet, marking it told."""
    if not load().notice_pending:
        return None
    told: list[Outcome | None] = []

    def edit(data: dict) -> bool:
        told.append(Outcome.from_json(data.get("last")) if data.get("notice_pending") is True else None)
        data["notice_pending"] = False
        return told[0] is not None

    _change(edit)
    return told[0]


def update_status() -> dict:
    """Where the update stands (`pilot self-update --status`, `pilot status`): the entry module's own report,
    the one it gives when the application cannot start."""
    from pilot.buildinfo import current_build
    from pilot.errors import StateError

    problem = home_problem(pilot_home(), create=False)
    if problem is not None:
        raise StateError(problem, hint=HOME_HINT)
    build = current_build()
    return status_report(build.version if build else None)
