"""The database file: connecting, schema migrations, snapshots and the rollback guard.

One SQLite file, `$PILOT_HOME/pilot.db`, in WAL mode with `synchronous=FULL`: every
committed write survives a SIGKILL of the daemon (and, with FULL, a power cut).

Migrations are keyed by `PRAGMA user_version` and are additive (expand/contract): they
add tables and columns (new columns always with a DEFAULT, so an older writer's INSERT
still works) and never rename or drop. The Store names its columns in every SELECT, so
a Pilot that was rolled back to an older version reads a newer schema by ignoring what
it does not know. Each migration records, in `meta.min_reader_version`, the oldest Pilot
that can read the schema it produces. A contracting migration (one that drops or renames)
must raise that version; an older Pilot that finds it then restores the snapshot taken
just before that migration, keeps the newer database beside it, and says so.

Python's sqlite3 does not open a transaction before DDL, so connections use
`isolation_level=None` and every migration runs inside an explicit `BEGIN IMMEDIATE`:
a migration that fails or is killed halfway leaves the schema and `user_version` as they
were. Snapshots and restores go through the backup API, never a file copy: a copied-back
file would have the old database's leftover `-wal` replayed onto it.
"""

from __future__ import annotations

import _thread  # for threading.get_ident, without importing threading (~0.7 ms on every command)
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence

from pilot.errors import StateError
from pilot.launcher import failpoint, fsync_directory
from pilot.state.models import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from pathlib import Path

DB_FILENAME = "pilot.db"
SNAPSHOT_DIRNAME = "snapshots"  # under PILOT_HOME: where open_store keeps pre-migration snapshots
BUSY_TIMEOUT_MS = 10_000  # the daemon's writes are tiny; a CLI waiting 10 s means something is wrong
MIN_READER_KEY = "min_reader_version"
WRITTEN_BY_KEY = "schema_written_by"
ANY_READER = "0"  # every Pilot that has a state store can read the schema


class Migration(Record):
    version: int  # the user_version the database has after this migration
    min_reader_version: str  # the oldest Pilot that can read the schema this migration produces
    statements: tuple[str, ...]


_USAGE_COLUMNS_DDL = (
    "input_tokens INTEGER NOT NULL DEFAULT 0",
    "output_tokens INTEGER NOT NULL DEFAULT 0",
    "cache_read_tokens INTEGER NOT NULL DEFAULT 0",
    "cache_write_tokens INTEGER NOT NULL DEFAULT 0",
    "cost_usd REAL NOT NULL DEFAULT 0",
)

MIGRATIONS: list[Migration] = [
    # v1: the task queue, and the meta table every later migration records itself in.
    Migration(1, ANY_READER, (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # command is a JSON array (argv) or NULL; status is checked in Python, not by a CHECK
        # constraint, so a later version can add a status without rebuilding the table.
        """CREATE TABLE tasks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            command TEXT,
            status TEXT NOT NULL DEFAULT 'queued',
            created_at TEXT NOT NULL,
            started_at TEXT,
            ended_at TEXT,
            exit_code INTEGER,
            log_tail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX tasks_by_status ON tasks (status, id)",
    )),
    # v2: daemon sessions and token accounting, per session and per task.
    Migration(2, ANY_READER, (
        f"""CREATE TABLE sessions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            version TEXT NOT NULL,
            pid INTEGER NOT NULL,
            {", ".join(_USAGE_COLUMNS_DDL)}
        )""",
        *(f"ALTER TABLE tasks ADD COLUMN {column}" for column in _USAGE_COLUMNS_DDL),
    )),
    # v3: the update history, and which session ran a task. update_events is retired: no Pilot since
    # 0.2 reads or writes it (update/state.json is the one record of updates), but the table stays,
    # because migrations only ever add and an older Pilot that a rollback brings back still writes it.
    Migration(3, ANY_READER, (
        """CREATE TABLE update_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            from_version TEXT,
            to_version TEXT,
            detail TEXT
        )""",
        "ALTER TABLE tasks ADD COLUMN session_id INTEGER REFERENCES sessions (id)",
        "CREATE INDEX tasks_by_session ON tasks (session_id)",
    )),
    # v4: why a task ended, the agent's own session id, and what cancelling and reaping need from another
    # process: a task's (or a whole session's) cancel request, and the process group a task runs in.
    Migration(4, ANY_READER, (
        "ALTER TABLE tasks ADD COLUMN failure_reason TEXT",
        "ALTER TABLE tasks ADD COLUMN agent_session_id TEXT",
        "ALTER TABLE tasks ADD COLUMN cancel_requested_at TEXT",
        "ALTER TABLE tasks ADD COLUMN pgid INTEGER",
        "ALTER TABLE sessions ADD COLUMN cancel_requested_at TEXT",
    )),
]

SCHEMA_VERSION = MIGRATIONS[-1].version


# --- errors -----------------------------------------------------------------------------------

_HINTS = {
    "SQLITE_NOTADB": "move it aside and Pilot starts with an empty state",
    "SQLITE_CORRUPT": "move it aside and Pilot starts with an empty state",
    "SQLITE_BUSY": "another Pilot process is holding it",
    "SQLITE_FULL": "free some disk space",
    "SQLITE_READONLY": "check the permissions of PILOT_HOME",
    "SQLITE_CANTOPEN": "check that PILOT_HOME exists and is writable",
}


def _is_environmental(error: sqlite3.Error) -> bool:
    """Errors the user's machine causes (full disk, foreign file, locks), as opposed to our bugs."""
    return isinstance(error, sqlite3.OperationalError) or type(error) is sqlite3.DatabaseError


def _describe_os_error(error: OSError) -> str:
    reason = error.strerror or str(error)
    return f"{reason}: {error.filename}" if error.filename else reason


def _hint(error: sqlite3.Error) -> str | None:
    name = getattr(error, "sqlite_errorname", "") or ""
    return _HINTS.get("_".join(name.split("_")[:2]))  # SQLITE_BUSY_SNAPSHOT -> SQLITE_BUSY


@contextlib.contextmanager
def state_errors(action: str) -> Iterator[None]:
    """Turn the environment's sqlite3 and OS errors into a one-line StateError: "cannot <action>: <why>"."""
    try:
        yield
    except StateError:
        raise
    except sqlite3.Error as error:
        if not _is_environmental(error):
            raise
        lines = str(error).splitlines()
        raise StateError(f"cannot {action}: {lines[0] if lines else type(error).__name__}",
                         hint=_hint(error)) from error
    except OSError as error:
        raise StateError(f"cannot {action}: {_describe_os_error(error)}") from error


def _path(value: str | os.PathLike) -> Path:
    """A Path, for the snapshot and restore code. pathlib is imported only here: it costs ~3.5 ms (with
    urllib and ipaddress), and opening an up-to-date database, what every command does, needs none."""
    from pathlib import Path

    return Path(value)


# --- connections ------------------------------------------------------------------------------


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """Open (creating if needed) the database in WAL mode with full durability.

    Autocommit (`isolation_level=None`): every writer opens its own `BEGIN IMMEDIATE`.
    `check_same_thread=False` because the Store shares the connection between threads
    behind its own lock."""
    path = os.fspath(path)
    with state_errors(f"open {path}"):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enter_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
    return conn


def _enter_wal(conn: sqlite3.Connection) -> None:
    """PRAGMA journal_mode = WAL, which reads page 1 (a foreign file fails here). Two processes opening a
    new database at once can find it locked without SQLite calling the busy handler: wait like it would."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def database_path(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return row[2] if row and row[2] else DB_FILENAME


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def read_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A meta value, or None (also before v1 created the table)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return None
        raise
    return None if row is None else str(row[0])


def _write_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


# --- versions ---------------------------------------------------------------------------------


def can_read(app_version: str, min_reader_version: str) -> bool:
    """Whether Pilot `app_version` may read a schema that needs `min_reader_version`.

    An unparsable requirement (written by some future Pilot) counts as unreadable."""
    if min_reader_version == ANY_READER:
        return True  # the usual case, answered without importing packaging on every CLI start
    from packaging.version import InvalidVersion, Version

    app = Version(app_version)  # our own version: unparsable is a bug, let it raise
    try:
        return app >= Version(min_reader_version)
    except InvalidVersion:
        return False


def _later_version(a: str | None, b: str) -> str:
    if a is None or can_read(b, a):
        return b
    return a


# --- snapshots --------------------------------------------------------------------------------


def backup_to_file(source: sqlite3.Connection, target: str | os.PathLike) -> None:
    """Write a consistent copy of `source` to `target` with the backup API, atomically.

    The copy is switched to a rollback journal so it is one self-contained file."""
    target = _path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{_thread.get_ident()}")
    try:
        dest = sqlite3.connect(str(partial), isolation_level=None)
        try:
            source.backup(dest)
            dest.execute("PRAGMA journal_mode = DELETE")
        finally:
            dest.close()
        os.replace(partial, target)
        fsync_directory(str(target.parent))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _snapshot_committed(path: str, target: Path) -> None:
    """Snapshot the committed state of the database at `path` through a second, read-only connection.

    Used inside a migration's write transaction: the backup API refuses a source connection
    that holds a write lock, while a WAL reader sees exactly the last commit."""
    reader = sqlite3.connect(f"{_path(path).as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        backup_to_file(reader, target)
    finally:
        reader.close()


def restore_snapshot(conn: sqlite3.Connection, snapshot: str | os.PathLike) -> None:
    """Replace the database behind `conn` with `snapshot`, page by page, through the backup API.

    Goes through SQLite, so the live database's -wal and every other connection stay consistent."""
    source = sqlite3.connect(f"{_path(snapshot).resolve().as_uri()}?mode=ro", uri=True)
    try:
        source.backup(conn)
    finally:
        source.close()


def snapshot_path(snapshot_dir: str | os.PathLike, version: int) -> Path:
    return _path(snapshot_dir) / f"{DB_FILENAME}.before-v{version}"


_SNAPSHOT_NAME = re.escape(DB_FILENAME) + r"\.before-v(\d+)$"  # compiled when a restore needs it


def _peek(snapshot: Path) -> tuple[int, str | None] | None:
    """(user_version, min_reader_version) of a snapshot file, or None if it cannot be read."""
    try:
        conn = sqlite3.connect(f"{snapshot.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return user_version(conn), read_meta(conn, MIN_READER_KEY)
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _readable_snapshot(snapshot_dir: str | os.PathLike, app_version: str) -> tuple[Path, int] | None:
    """The newest snapshot this Pilot can read, with its schema version."""
    found = []
    for candidate in _path(snapshot_dir).glob(f"{DB_FILENAME}.before-v*"):
        match = re.fullmatch(_SNAPSHOT_NAME, candidate.name)
        if match:
            found.append((int(match.group(1)), candidate))
    for _, candidate in sorted(found, reverse=True):
        info = _peek(candidate)
        if info is not None and (info[1] is None or can_read(app_version, info[1])):
            return candidate, info[0]
    return None


# --- the rollback guard -----------------------------------------------------------------------


@contextlib.contextmanager
def _restore_lock(snapshot_dir: str | os.PathLike) -> Iterator[None]:
    """Serialise restores between processes: a second old Pilot must not set aside the restored file."""
    import fcntl  # here: only a restore takes this lock

    os.makedirs(snapshot_dir, exist_ok=True)
    fd = os.open(os.path.join(snapshot_dir, ".restore.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_readable(conn: sqlite3.Connection, *, app_version: str, snapshot_dir: str | os.PathLike) -> list[str]:
    """If a newer Pilot contracted the schema past what this version reads, go back to the snapshot.

    The newer database is kept beside the snapshots (nothing is deleted); returns the warning line."""
    needed = read_meta(conn, MIN_READER_KEY)
    if needed is None or can_read(app_version, needed):
        return []
    with _restore_lock(snapshot_dir):
        needed = read_meta(conn, MIN_READER_KEY)  # another process may have restored meanwhile
        if needed is None or can_read(app_version, needed):
            return []
        return [_restore_readable(conn, app_version=app_version, needed=needed, snapshot_dir=snapshot_dir)]


def _restore_readable(conn: sqlite3.Connection, *, app_version: str, needed: str,
                      snapshot_dir: str | os.PathLike) -> str:
    path = database_path(conn)
    schema = user_version(conn)
    found = _readable_snapshot(snapshot_dir, app_version)
    if found is None:
        raise StateError(f"{path} (schema v{schema}) needs Pilot {needed} or newer and this is Pilot {app_version}",
                         hint=f"no snapshot this version can read is left in {snapshot_dir}: upgrade Pilot")
    snapshot, snapshot_schema = found
    kept = _path(snapshot_dir) / f"{DB_FILENAME}.from-v{schema}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    backup_to_file(conn, kept)
    restore_snapshot(conn, snapshot)
    return (f"warning: {os.path.basename(path)} was migrated to schema v{schema}, which needs Pilot {needed} or newer; "
            f"this is Pilot {app_version}, so the snapshot taken before that ({snapshot.name}, schema "
            f"v{snapshot_schema}) was restored and the newer database was kept as {kept}")


# --- migrations -------------------------------------------------------------------------------


def _check_sequence(migrations: Sequence[Migration]) -> None:
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise ValueError(f"migrations must be numbered {expected}, got {[m.version for m in migrations]}")


def migrate(conn: sqlite3.Connection, *, app_version: str, snapshot_dir: str | os.PathLike) -> list[str]:
    """Bring the database up to this Pilot's schema; returns warning lines for the user.

    First the rollback guard (`ensure_readable`), then each pending migration in its own
    `BEGIN IMMEDIATE` transaction, after a backup-API snapshot of the committed state to
    `snapshot_dir / pilot.db.before-v{N}` (skipped when the database was empty to begin with). A
    database newer than this Pilot's schema is left alone: additive migrations keep it readable."""
    migrations = MIGRATIONS  # read at call time, so tests can substitute the list
    _check_sequence(migrations)
    path = database_path(conn)
    with state_errors(f"open {path}"):
        warnings = ensure_readable(conn, app_version=app_version, snapshot_dir=snapshot_dir)
        current = user_version(conn)
    for migration in migrations:
        if migration.version > current:
            warning = _apply(conn, migration, path=path, app_version=app_version,
                             snapshot_dir=snapshot_dir if current > 0 else None)
            warnings.extend([warning] if warning else [])
    return warnings


def _apply(conn: sqlite3.Connection, migration: Migration, *, path: str, app_version: str,
           snapshot_dir: str | os.PathLike | None) -> str | None:
    """One migration, all or nothing; returns a warning when it locks out older Pilots.

    `snapshot_dir` is None for a database that was empty when migrate() began: nothing to keep."""
    with state_errors(f"migrate {path} to schema v{migration.version}"):
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: the snapshot and DDL see one state
        try:
            current = user_version(conn)
            if current >= migration.version:  # another process migrated while we waited
                conn.execute("ROLLBACK")
                return None
            if snapshot_dir is not None:
                _snapshot_committed(path, snapshot_path(snapshot_dir, migration.version))
            previous = read_meta(conn, MIN_READER_KEY)
            for statement in migration.statements:
                conn.execute(statement)
                failpoint("during-migration")
            needed = _later_version(previous, migration.min_reader_version)
            _write_meta(conn, MIN_READER_KEY, needed)
            _write_meta(conn, WRITTEN_BY_KEY, app_version)
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    if previous is None or needed == previous:
        return None
    restores = f"an older Pilot will restore {snapshot_path(snapshot_dir, migration.version)}" if snapshot_dir \
        else "there is no older data to go back to"
    return f"warning: {DB_FILENAME} is now schema v{migration.version}, which Pilot older than {needed} " \
        f"cannot read; {restores}"
