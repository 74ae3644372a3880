"""Reads and writes of Pilot's state: tasks, sessions with token usage, and the update history.

Thread safety: one connection per Store, opened with `check_same_thread=False` and
guarded by one lock (a `threading.Lock`); every method takes the lock for its whole transaction,
so the daemon's threads may share a Store. Separate processes (the daemon and a CLI
command) each open their own Store; SQLite's locks and `busy_timeout` serialise them.

Every write is one short `BEGIN IMMEDIATE ... COMMIT`: taking the write lock up front
means two claimers can never both see the same queued task, and a read transaction never
has to be upgraded (which in WAL mode fails at once instead of waiting). Each usage delta
is committed on its own, so a SIGKILL loses at most the delta being written.

Every SELECT names its columns: a Pilot rolled back to an older version reads a database
that a newer one extended, by ignoring the columns it does not know.
"""

from __future__ import annotations

import _thread  # for threading.Lock, which it is, without importing threading (~0.7 ms)
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from pilot.errors import StateError
from pilot.launcher import pilot_home
from pilot.state.db import DB_FILENAME, SNAPSHOT_DIRNAME, backup_to_file, connect, migrate, state_errors
from pilot.state.models import CANCELLED, Session, Task, Totals, Usage

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from pathlib import Path

LOG_TAIL_CHARS = 4000

_USAGE_COLUMNS = "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd"
_TASK_COLUMNS = (f"id, title, command, status, created_at, started_at, ended_at, exit_code, {_USAGE_COLUMNS}, "
                 "log_tail, session_id, failure_reason, agent_session_id, cancel_requested_at, pgid")
_SESSION_COLUMNS = f"id, started_at, ended_at, version, pid, {_USAGE_COLUMNS}"
_ADD_USAGE = ", ".join(f"{c} = {c} + ?" for c in _USAGE_COLUMNS.split(", "))


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _to_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _from_text(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _usage(row: tuple, start: int) -> Usage:
    values = row[start:start + 5]
    return Usage(int(values[0]), int(values[1]), int(values[2]), int(values[3]), float(values[4]))


def _usage_params(usage: Usage) -> tuple[int, int, int, int, float]:
    return (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
            usage.cost_usd)


def _task(row: tuple) -> Task:
    command = None if row[2] is None else tuple(json.loads(row[2]))
    return Task(id=row[0], title=row[1], command=command, status=row[3], created_at=_from_text(row[4]),
                started_at=_from_text(row[5]), ended_at=_from_text(row[6]), exit_code=row[7],
                usage=_usage(row, 8), log_tail=row[13], session_id=row[14], failure_reason=row[15],
                agent_session_id=row[16], cancel_requested_at=_from_text(row[17]), pgid=row[18])


def _session(row: tuple) -> Session:
    return Session(id=row[0], started_at=_from_text(row[1]), ended_at=_from_text(row[2]), version=row[3],
                   pid=row[4], usage=_usage(row, 5))


class Store:
    """Pilot's state in one SQLite connection (see the module docstring for threads and processes)."""

    def __init__(self, conn: sqlite3.Connection, *, path: str | os.PathLike, warnings: list[str] | None = None,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self._conn = conn
        self._lock = _thread.allocate_lock()
        self._clock = clock
        self._closed = False
        self._path = os.fspath(path)  # a str: the commands that open a store never need pathlib
        self.warnings: list[str] = list(warnings or [])

    @property
    def path(self) -> Path:
        from pathlib import Path

        return Path(self._path)

    # --- plumbing -----------------------------------------------------------------------------

    def _now(self) -> str:
        return _to_text(self._clock())

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, state_errors(f"read {self._path}"):
            self._check_open()
            yield self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction, holding SQLite's write lock from its first statement."""
        with self._lock, state_errors(f"write {self._path}"):
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise StateError(f"{self._path} was already closed")

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close; safe to call twice.

        Everything is already committed; the checkpoint is so an exec right after this
        leaves one clean file (TRUNCATE empties the -wal even when a CLI still has it open)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                with contextlib.suppress(sqlite3.Error):  # a busy checkpoint costs nothing: the WAL is durable
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- tasks --------------------------------------------------------------------------------

    def add_task(self, title: str, command: tuple[str, ...] | None = None) -> Task:
        encoded = None if command is None else json.dumps(list(command))
        with self._write() as conn:
            cursor = conn.execute("INSERT INTO tasks (title, command, status, created_at) VALUES (?, ?, 'queued', ?)",
                                  (title, encoded, self._now()))
            return self._task_in(conn, cursor.lastrowid)

    def claim_next_task(self, session_id: int) -> Task | None:
        """The oldest queued task, now running in `session_id`; None when the queue is empty."""
        with self._write() as conn:
            row = conn.execute("SELECT id FROM tasks WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute("UPDATE tasks SET status = 'running', started_at = ?, session_id = ? WHERE id = ?",
                         (self._now(), session_id, row[0]))
            return self._task_in(conn, row[0])

    def add_task_usage(self, task_id: int, usage: Usage) -> None:
        """Add a usage delta to the task and to the session running it, in one committed transaction."""
        with self._write() as conn:
            session_id = self._session_of(conn, task_id)
            conn.execute(f"UPDATE tasks SET {_ADD_USAGE} WHERE id = ?", (*_usage_params(usage), task_id))
            if session_id is not None:
                conn.execute(f"UPDATE sessions SET {_ADD_USAGE} WHERE id = ?", (*_usage_params(usage), session_id))

    def set_task_cost(self, task_id: int, cost_usd: float) -> None:
        """Replace the summed-up cost by the authoritative one; the session moves by the difference."""
        with self._write() as conn:
            session_id = self._session_of(conn, task_id)
            (previous,) = conn.execute("SELECT cost_usd FROM tasks WHERE id = ?", (task_id,)).fetchone()
            conn.execute("UPDATE tasks SET cost_usd = ? WHERE id = ?", (cost_usd, task_id))
            if session_id is not None:
                conn.execute("UPDATE sessions SET cost_usd = cost_usd + ? WHERE id = ?",
                             (cost_usd - previous, session_id))

    def append_log(self, task_id: int, text: str) -> None:
        """Append to the task's output tail, keeping only the last LOG_TAIL_CHARS characters."""
        with self._write() as conn:
            self._session_of(conn, task_id)  # raises for an unknown task
            conn.execute("UPDATE tasks SET log_tail = substr(log_tail || ?, ?) WHERE id = ?",
                         (text[-LOG_TAIL_CHARS:], -LOG_TAIL_CHARS, task_id))

    def finish_task(self, task_id: int, *, exit_code: int | None, failed: bool = False, cancelled: bool = False,
                    failure_reason: str | None = None) -> Task:
        """Record the end of a task: cancelled, else failed, else done, with the reason the daemon gives
        (pilot.daemon.tasks decides it; a task that is done has none)."""
        status = "cancelled" if cancelled else "failed" if failed else "done"
        if status == "done":
            failure_reason = None
        with self._write() as conn:
            self._session_of(conn, task_id)
            conn.execute("UPDATE tasks SET status = ?, ended_at = ?, exit_code = ?, failure_reason = ? WHERE id = ?",
                         (status, self._now(), exit_code, failure_reason, task_id))
            return self._task_in(conn, task_id)

    def set_task_process(self, task_id: int, pgid: int | None) -> None:
        """The process group the task runs in, so that a later start can stop what a dead daemon left behind."""
        with self._write() as conn:
            self._session_of(conn, task_id)
            conn.execute("UPDATE tasks SET pgid = ? WHERE id = ?", (pgid, task_id))

    def set_agent_session(self, task_id: int, agent_session_id: str) -> None:
        """The agent's own session id (Claude Code's stream-json `session_id`), kept beside Pilot's session."""
        with self._write() as conn:
            self._session_of(conn, task_id)
            conn.execute("UPDATE tasks SET agent_session_id = ? WHERE id = ?", (agent_session_id, task_id))

    def request_cancel(self, task_id: int) -> tuple[str, Task] | None:
        """Cancel a task from any process: (its status before, the task now); None for an unknown id.

        A queued task is cancelled at once (it never starts: claiming and this are both one write
        transaction). A running one gets `cancel_requested_at` (the first request's time is kept); the
        daemon running it polls for that and stops its process group. A finished task is left as it is."""
        now = self._now()
        with self._write() as conn:
            row = conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            if row[0] == "queued":
                conn.execute("UPDATE tasks SET status = 'cancelled', ended_at = ?, cancel_requested_at = ?, "
                             "failure_reason = ? WHERE id = ?", (now, now, CANCELLED, task_id))
            elif row[0] == "running":
                conn.execute("UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, ?) WHERE id = ?",
                             (now, task_id))
            return row[0], self._task_in(conn, task_id)

    def cancel_requests(self, session_id: int) -> list[int]:
        """The ids of the tasks this session runs that someone asked to cancel."""
        with self._read() as conn:
            rows = conn.execute("SELECT id FROM tasks WHERE status = 'running' AND session_id = ? "
                                "AND cancel_requested_at IS NOT NULL ORDER BY id", (session_id,))
            return [row[0] for row in rows]

    def interrupt_running(self, reason: str) -> list[Task]:
        """Mark tasks a dead daemon left running as interrupted (never re-run: they may have had effects).

        Their failure reason is "interrupted: <reason>", and the log tail ends with "[interrupted: <reason>]"."""
        note = f"\n[interrupted: {reason}]\n"
        with self._write() as conn:
            ids = [row[0] for row in conn.execute("SELECT id FROM tasks WHERE status = 'running' ORDER BY id")]
            for task_id in ids:
                conn.execute("UPDATE tasks SET status = 'interrupted', ended_at = ?, failure_reason = ?, "
                             "log_tail = substr(log_tail || ?, ?) WHERE id = ?",
                             (self._now(), f"interrupted: {reason}", note, -LOG_TAIL_CHARS, task_id))
            return [self._task_in(conn, task_id) for task_id in ids]

    def task(self, task_id: int) -> Task | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else _task(row)

    def tasks(self, limit: int = 50) -> list[Task]:
        """The latest tasks, newest first."""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY id DESC LIMIT ?", (limit,))
            return [_task(row) for row in rows]

    def running_tasks(self) -> list[Task]:
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE status = 'running' ORDER BY id")
            return [_task(row) for row in rows]

    def queued_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM tasks WHERE status = 'queued'").fetchone()[0])

    def totals(self) -> Totals:
        """Usage summed over all tasks, and how many tasks are in each status."""
        sums = ", ".join(f"total({c})" for c in _USAGE_COLUMNS.split(", "))
        with self._read() as conn:
            usage_row = conn.execute(f"SELECT {sums} FROM tasks").fetchone()
            counts = dict(conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
        return Totals(usage=_usage(usage_row, 0), done=counts.get("done", 0), failed=counts.get("failed", 0),
                      queued=counts.get("queued", 0), running=counts.get("running", 0),
                      interrupted=counts.get("interrupted", 0), cancelled=counts.get("cancelled", 0))

    def _task_in(self, conn: sqlite3.Connection, task_id: int) -> Task:
        row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise StateError(f"task {task_id} does not exist in {self._path}")
        return _task(row)

    def _session_of(self, conn: sqlite3.Connection, task_id: int) -> int | None:
        row = conn.execute("SELECT session_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise StateError(f"task {task_id} does not exist in {self._path}")
        return row[0]

    # --- sessions -----------------------------------------------------------------------------

    def start_session(self, *, version: str, pid: int) -> Session:
        with self._write() as conn:
            cursor = conn.execute("INSERT INTO sessions (started_at, version, pid) VALUES (?, ?, ?)",
                                  (self._now(), version, pid))
            return self._session_in(conn, cursor.lastrowid)

    def resume_session(self, session_id: int, *, version: str) -> Session | None:
        """Continue an open session after a hot upgrade's exec; None if it is unknown or already ended."""
        with self._write() as conn:
            cursor = conn.execute("UPDATE sessions SET version = ? WHERE id = ? AND ended_at IS NULL",
                                  (version, session_id))
            return self._session_in(conn, session_id) if cursor.rowcount else None

    def request_session_cancel(self, pid: int) -> int:
        """Ask the daemon with this pid to cancel its running tasks when it stops (`pilot stop --cancel-running`).

        Marks its open sessions; returns how many were marked (0: no open session has that pid)."""
        with self._write() as conn:
            cursor = conn.execute("UPDATE sessions SET cancel_requested_at = coalesce(cancel_requested_at, ?) "
                                  "WHERE pid = ? AND ended_at IS NULL", (self._now(), pid))
            return cursor.rowcount

    def session_cancel_requested(self, session_id: int) -> bool:
        with self._read() as conn:
            row = conn.execute("SELECT cancel_requested_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
            return row is not None and row[0] is not None

    def end_session(self, session_id: int) -> None:
        with self._write() as conn:
            conn.execute("UPDATE sessions SET ended_at = ? WHERE id = ? AND ended_at IS NULL",
                         (self._now(), session_id))

    def session(self, session_id: int) -> Session | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
            return None if row is None else _session(row)

    def _session_in(self, conn: sqlite3.Connection, session_id: int) -> Session:
        row = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return _session(row)

    # --- snapshots ----------------------------------------------------------------------------

    def snapshot(self, target: Path) -> None:
        """A consistent copy of the committed state at `target`, through the backup API (atomic replace)."""
        with self._lock, state_errors(f"snapshot {self._path} to {target}"):
            self._check_open()
            backup_to_file(self._conn, target)



def open_store(home: str | os.PathLike | None = None, *, app_version: str) -> Store:
    """Connect to `home/pilot.db` (default: PILOT_HOME), apply the rollback guard and migrations."""
    home = os.fspath(home) if home is not None else pilot_home()
    path = os.path.join(home, DB_FILENAME)
    conn = connect(path)
    try:
        warnings = migrate(conn, app_version=app_version, snapshot_dir=os.path.join(home, SNAPSHOT_DIRNAME))
    except BaseException:
        conn.close()
        raise
    return Store(conn, path=path, warnings=warnings)
