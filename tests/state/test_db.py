"""The database file: migrations from every older schema, failure and SIGKILL halfway, snapshots, rollback guard."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pilot.errors import StateError
from pilot.state import db
from pilot.state.db import DB_FILENAME, SCHEMA_VERSION, SNAPSHOT_DIRNAME, Migration
from pilot.state.models import Usage
from pilot.state.store import Store, open_store
from tests.state import children

REPO = Path(__file__).resolve().parents[2]
APP = "1.0.0"
REAL_MIGRATIONS = list(db.MIGRATIONS)
T0 = "2024-05-01T10:00:00.000000+00:00"


def raw(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / DB_FILENAME)


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


# --- old schemas, written the way each old version wrote its rows ------------------------------


def seed_v1(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO tasks (title, command, status, created_at, started_at, ended_at, exit_code, log_tail) "
                 "VALUES ('v1 done', '[\"make\", \"test\"]', 'done', ?, ?, ?, 0, 'all green')", (T0, T0, T0))
    conn.execute("INSERT INTO tasks (title, status, created_at) VALUES ('v1 queued', 'queued', ?)", (T0,))


def seed_v2(conn: sqlite3.Connection) -> None:
    seed_v1(conn)
    conn.execute("INSERT INTO sessions (started_at, version, pid, input_tokens, output_tokens, cache_read_tokens, "
                 "cache_write_tokens, cost_usd) VALUES (?, '0.9.0', 4242, 10, 20, 30, 40, 0.5)", (T0,))
    conn.execute("UPDATE tasks SET input_tokens = 10, output_tokens = 20, cache_read_tokens = 30, "
                 "cache_write_tokens = 40, cost_usd = 0.5 WHERE title = 'v1 done'")


def seed_v3(conn: sqlite3.Connection) -> None:
    seed_v2(conn)
    conn.execute("UPDATE tasks SET session_id = 1 WHERE title = 'v1 done'")
    conn.execute("INSERT INTO tasks (title, status, created_at, exit_code, session_id) "
                 "VALUES ('v3 failed', 'failed', ?, 2, 1)", (T0,))


SEEDS = {0: lambda conn: None, 1: seed_v1, 2: seed_v2, 3: seed_v3}


def build_schema(home: Path, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database as the Pilot whose newest migration was `version` left it, with rows in it."""
    home.mkdir(parents=True, exist_ok=True)
    (home / DB_FILENAME).touch()  # version 0 is an empty file
    with monkeypatch.context() as patch:
        patch.setattr(db, "MIGRATIONS", REAL_MIGRATIONS[:version])
        conn = db.connect(home / DB_FILENAME)
        db.migrate(conn, app_version="0.9.0", snapshot_dir=home / SNAPSHOT_DIRNAME)
    with conn:
        SEEDS[version](conn)
    conn.close()


def test_every_older_schema_has_a_seed():
    assert set(SEEDS) == set(range(SCHEMA_VERSION)), "add a seed_vN for the schema the new migration replaces"


def test_a_new_database_is_wal_full_sync_and_current(isolated_home):
    with open_store(isolated_home, app_version=APP) as store:
        assert store.warnings == []
    conn = db.connect(isolated_home / DB_FILENAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == db.BUSY_TIMEOUT_MS
    assert db.user_version(conn) == SCHEMA_VERSION
    assert tables(conn) >= {"meta", "tasks", "sessions", "update_events"}
    assert db.read_meta(conn, db.MIN_READER_KEY) == db.ANY_READER
    assert db.read_meta(conn, db.WRITTEN_BY_KEY) == APP
    assert not list((isolated_home / SNAPSHOT_DIRNAME).glob("*"))  # nothing existed to snapshot


@pytest.mark.parametrize("old", range(SCHEMA_VERSION))
def test_migrates_from_every_older_schema_keeping_rows(old, isolated_home, monkeypatch):
    build_schema(isolated_home, old, monkeypatch)
    with open_store(isolated_home, app_version=APP) as store:
        assert store.warnings == []
        tasks = {task.title: task for task in store.tasks()}
        assert db.user_version(raw(isolated_home)) == SCHEMA_VERSION
        if old == 0:
            assert tasks == {}
            return
        done = tasks["v1 done"]
        assert (done.command, done.status, done.exit_code, done.log_tail) == (("make", "test"), "done", 0, "all green")
        assert done.session_id == (1 if old >= 3 else None)  # v3's column, default for rows older than it
        # v4's columns are empty for every row older than them, and nothing invents a reason for an old failure.
        for task in tasks.values():
            assert (task.failure_reason, task.agent_session_id, task.cancel_requested_at, task.pgid) == (
                None, None, None, None)
        assert ("v3 failed" in tasks) == (old >= 3)
        assert tasks["v1 queued"].usage == Usage()
        expected = Usage(10, 20, 30, 40, 0.5) if old >= 2 else Usage()  # v2's columns default to zero
        assert done.usage == expected
        assert store.totals().usage == expected
        tables = {row[0] for row in raw(isolated_home).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "update_events" in tables  # retired, never dropped: an older Pilot after a rollback still writes it
        assert (store.session(1) is not None) == (old >= 2)
        if old >= 2:
            assert not store.session_cancel_requested(1)
    snapshot = sqlite3.connect(isolated_home / SNAPSHOT_DIRNAME / f"{DB_FILENAME}.before-v{old + 1}")
    assert db.user_version(snapshot) == old
    assert snapshot.execute("SELECT count(*) FROM tasks").fetchone()[0] == (3 if old >= 3 else 2)


def test_a_newer_additive_schema_still_opens_in_this_version(isolated_home, monkeypatch):
    """A rollback to this version after a newer one expanded the schema: nothing to restore, nothing lost."""
    expand = Migration(SCHEMA_VERSION + 1, db.ANY_READER, (
        "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "CREATE TABLE labels (task_id INTEGER NOT NULL, label TEXT NOT NULL)",
    ))
    monkeypatch.setattr(db, "MIGRATIONS", [*REAL_MIGRATIONS, expand])
    with open_store(isolated_home, app_version="2.0.0") as newer:
        newer.add_task("written by the newer version")
        raw_conn = raw(isolated_home)
        raw_conn.execute("UPDATE tasks SET priority = 9")
        raw_conn.commit()
    monkeypatch.setattr(db, "MIGRATIONS", REAL_MIGRATIONS)
    with open_store(isolated_home, app_version=APP) as older:
        assert older.warnings == []
        assert [task.title for task in older.tasks()] == ["written by the newer version"]
        older.add_task("written by the older version")  # its INSERT relies on the new column's default
        assert older.claim_next_task(session_id=1).title == "written by the newer version"
    assert db.user_version(raw(isolated_home)) == SCHEMA_VERSION + 1


def test_a_migration_that_fails_midway_changes_nothing(isolated_home, monkeypatch):
    with open_store(isolated_home, app_version=APP) as store:
        store.add_task("kept")
    broken = Migration(SCHEMA_VERSION + 1, db.ANY_READER, (
        "CREATE TABLE extra (x INTEGER)",
        "ALTER TABLE tasks ADD COLUMN y INTEGER NOT NULL DEFAULT 0",
        "THIS IS NOT SQL",
    ))
    monkeypatch.setattr(db, "MIGRATIONS", [*REAL_MIGRATIONS, broken])
    with pytest.raises(StateError) as failure:
        open_store(isolated_home, app_version=APP)
    assert f"schema v{SCHEMA_VERSION + 1}" in failure.value.one_line()
    assert "\n" not in failure.value.one_line()
    conn = raw(isolated_home)
    assert db.user_version(conn) == SCHEMA_VERSION
    assert "extra" not in tables(conn)
    assert "y" not in columns(conn, "tasks")
    monkeypatch.setattr(db, "MIGRATIONS", REAL_MIGRATIONS)
    with open_store(isolated_home, app_version=APP) as store:
        assert [task.title for task in store.tasks()] == ["kept"]


@pytest.mark.parametrize("pause_at", [0, len(REAL_MIGRATIONS[-1].statements)], ids=["before-ddl", "after-ddl"])
def test_sigkill_inside_a_migration_leaves_the_previous_schema(pause_at, isolated_home, monkeypatch):
    old = SCHEMA_VERSION - 1
    build_schema(isolated_home, old, monkeypatch)
    child = subprocess.Popen([sys.executable, "-m", "tests.state.children", "migrate-and-pause", str(isolated_home),
                              str(pause_at)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == children.PAUSED  # inside BEGIN IMMEDIATE, DDL run or not
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    conn = raw(isolated_home)
    assert db.user_version(conn) == old
    assert not {"failure_reason", "agent_session_id", "cancel_requested_at", "pgid"} & columns(conn, "tasks")
    assert "cancel_requested_at" not in columns(conn, "sessions")
    conn.close()
    with open_store(isolated_home, app_version=APP) as store:
        assert sorted(task.title for task in store.tasks()) == ["v1 done", "v1 queued", "v3 failed"]
        assert store.task(1).usage == Usage(10, 20, 30, 40, 0.5)
        assert store.task(3).failure_reason is None
    assert db.user_version(raw(isolated_home)) == SCHEMA_VERSION


def test_two_connections_migrating_at_once_both_succeed(isolated_home):
    barrier = threading.Barrier(2, timeout=30)  # a thread that failed must not leave the other waiting for ever
    errors: list[BaseException] = []

    def migrate_one() -> None:
        try:
            conn = db.connect(isolated_home / DB_FILENAME)  # both at once on a new file, too
            barrier.wait()
            db.migrate(conn, app_version=APP, snapshot_dir=isolated_home / SNAPSHOT_DIRNAME)
            conn.close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=migrate_one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert db.user_version(raw(isolated_home)) == SCHEMA_VERSION


def test_many_connections_opening_a_new_database_at_once_all_succeed(tmp_path):
    """`PRAGMA journal_mode = WAL` on a new file by two connections at once can be "database is locked"
    without SQLite waiting: two `pilot task add` on a fresh machine. connect() waits like the busy handler."""
    def open_it(path: Path, barrier: threading.Barrier, errors: list[BaseException]) -> None:
        try:
            barrier.wait()
            db.connect(path).close()
        except BaseException as error:
            errors.append(error)

    for attempt in range(150):
        barrier, errors = threading.Barrier(6, timeout=30), []
        threads = [threading.Thread(target=open_it, args=(tmp_path / f"fresh-{attempt}.db", barrier, errors))
                   for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


# --- snapshots and the rollback guard ---------------------------------------------------------


def wal_store(home: Path) -> Store:
    """A store whose WAL is never checkpointed automatically, so the -wal file holds the recent writes."""
    conn = db.connect(home / DB_FILENAME)
    db.migrate(conn, app_version=APP, snapshot_dir=home / SNAPSHOT_DIRNAME)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    return Store(conn, path=home / DB_FILENAME)


def test_snapshot_and_restore_through_the_backup_api_while_a_wal_exists(isolated_home, tmp_path):
    store = wal_store(isolated_home)
    store.add_task("A")
    store.add_task("B")
    assert (isolated_home / f"{DB_FILENAME}-wal").stat().st_size > 0
    snapshot = tmp_path / "snap.db"
    store.snapshot(snapshot)
    store.add_task("C")
    other = db.connect(isolated_home / DB_FILENAME)  # the restore goes through SQLite, under every connection
    db.restore_snapshot(other, snapshot)
    assert [task.title for task in store.tasks()] == ["B", "A"]
    fresh = raw(isolated_home)
    assert [row[0] for row in fresh.execute("SELECT title FROM tasks ORDER BY id")] == ["A", "B"]
    assert db.user_version(fresh) == SCHEMA_VERSION
    store.add_task("D")  # the restored database is a working WAL database
    assert [row[0] for row in fresh.execute("SELECT title FROM tasks ORDER BY id")] == ["A", "B", "D"]
    store.close()
    other.close()


def test_a_file_copy_restore_would_replay_the_leftover_wal(isolated_home, tmp_path):
    """Why the backup API: copying the snapshot file back resurrects writes made after it."""
    store = wal_store(isolated_home)
    store.add_task("A")
    snapshot = tmp_path / "snap.db"
    store.snapshot(snapshot)
    store.add_task("C")
    shutil.copyfile(snapshot, isolated_home / DB_FILENAME)  # the mistake
    titles = [row[0] for row in raw(isolated_home).execute("SELECT title FROM tasks ORDER BY id")]
    assert titles == ["A", "C"]  # not the snapshot's ["A"]: the -wal was replayed onto the copy
    store.close()


CONTRACT = Migration(SCHEMA_VERSION + 1, "2.0.0", ("ALTER TABLE tasks RENAME COLUMN title TO name",))


def upgrade_then_contract(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pilot 1.0.0 writes a task; Pilot 2.0.0 applies a non-additive migration and writes another."""
    with open_store(home, app_version=APP) as store:
        store.add_task("before the upgrade")
    monkeypatch.setattr(db, "MIGRATIONS", [*REAL_MIGRATIONS, CONTRACT])
    with open_store(home, app_version="2.0.0") as newer:
        assert len(newer.warnings) == 1
        assert "older than 2.0.0 cannot read" in newer.warnings[0]
    conn = raw(home)
    conn.execute("INSERT INTO tasks (name, created_at) VALUES ('after the upgrade', ?)", (T0,))
    conn.commit()
    conn.close()
    monkeypatch.setattr(db, "MIGRATIONS", REAL_MIGRATIONS)


def test_an_old_version_restores_the_snapshot_from_before_a_contracting_migration(isolated_home, monkeypatch):
    upgrade_then_contract(isolated_home, monkeypatch)
    with open_store(isolated_home, app_version=APP) as old:
        [warning] = old.warnings
        assert "\n" not in warning
        assert f"{DB_FILENAME}.before-v{SCHEMA_VERSION + 1}" in warning and "needs Pilot 2.0.0" in warning
        assert [task.title for task in old.tasks()] == ["before the upgrade"]
        old.add_task("after the rollback")
    kept = list((isolated_home / SNAPSHOT_DIRNAME).glob(f"{DB_FILENAME}.from-v{SCHEMA_VERSION + 1}-*"))
    assert len(kept) == 1 and str(kept[0]) in warning
    newer_rows = [row[0] for row in sqlite3.connect(kept[0]).execute("SELECT name FROM tasks ORDER BY id")]
    assert newer_rows == ["before the upgrade", "after the upgrade"]  # set aside, not lost
    with open_store(isolated_home, app_version=APP) as again:
        assert again.warnings == []  # restored once; the next start is quiet
        assert db.user_version(raw(isolated_home)) == SCHEMA_VERSION


def test_an_old_version_without_a_snapshot_refuses_in_one_line(isolated_home, monkeypatch):
    upgrade_then_contract(isolated_home, monkeypatch)
    for snapshot in (isolated_home / SNAPSHOT_DIRNAME).glob(f"{DB_FILENAME}.before-v*"):
        snapshot.unlink()
    with pytest.raises(StateError) as refused:
        open_store(isolated_home, app_version=APP)
    line = refused.value.one_line()
    assert "needs Pilot 2.0.0 or newer and this is Pilot 1.0.0" in line and "upgrade Pilot" in line
    assert "\n" not in line
    assert db.user_version(raw(isolated_home)) == SCHEMA_VERSION + 1  # untouched


# --- the user's environment -------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_one_state_error(isolated_home):
    isolated_home.mkdir(parents=True)
    (isolated_home / DB_FILENAME).write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StateError) as failure:
        open_store(isolated_home, app_version=APP)
    assert failure.value.message == f"cannot open {isolated_home / DB_FILENAME}: file is not a database"
    assert "move it aside" in failure.value.one_line() and "\n" not in failure.value.one_line()


def test_a_home_that_cannot_be_created_is_one_state_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StateError) as failure:
        open_store(blocker / "home", app_version=APP)
    assert failure.value.message.startswith(f"cannot open {blocker / 'home' / DB_FILENAME}: Not a directory")


def test_a_full_disk_is_one_state_error_and_loses_nothing_committed(isolated_home):
    conn = db.connect(isolated_home / DB_FILENAME)
    db.migrate(conn, app_version=APP, snapshot_dir=isolated_home / SNAPSHOT_DIRNAME)
    store = Store(conn, path=isolated_home / DB_FILENAME)
    store.add_task("committed")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own "disk is full"
    with pytest.raises(StateError) as failure:
        store.add_task("x" * 100_000)
    assert failure.value.message == f"cannot write {isolated_home / DB_FILENAME}: database or disk is full"
    assert failure.value.hint == "free some disk space"
    assert [task.title for task in store.tasks()] == ["committed"]
    store.close()
