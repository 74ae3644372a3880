"""Child processes the state tests SIGKILL at chosen moments: `python -m tests.state.children <name> <home>`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pilot.state import db
from pilot.state import store as stores
from pilot.state.models import Usage

PAUSED = "paused"


def migrate_and_pause(home: Path, pause_at: int) -> None:
    """Migrate with a pause inside the last migration's transaction, after `pause_at` of its statements."""

    def pause() -> int:
        print(PAUSED, flush=True)
        time.sleep(60)  # the parent kills us long before this ends
        return 0

    last = db.MIGRATIONS[-1]
    statements = (*last.statements[:pause_at], "SELECT pilot_test_pause()", *last.statements[pause_at:])
    db.MIGRATIONS = [*db.MIGRATIONS[:-1], db.Migration(last.version, last.min_reader_version, statements)]
    conn = db.connect(home / db.DB_FILENAME)
    conn.create_function("pilot_test_pause", 0, pause)
    db.migrate(conn, app_version="1.0.0", snapshot_dir=home / db.SNAPSHOT_DIRNAME)
    print("finished", flush=True)  # never reached


DELTA = Usage(input_tokens=1, output_tokens=2, cache_read_tokens=3, cache_write_tokens=4, cost_usd=0.25)


def write_usage(home: Path) -> None:
    """Add DELTA to one running task forever, printing the count after each commit."""
    store = stores.open_store(home, app_version="1.0.0")
    session = store.start_session(version="1.0.0", pid=0)
    store.add_task("spend tokens")
    task = store.claim_next_task(session.id)
    print(f"ready {task.id} {session.id}", flush=True)
    committed = 0
    while True:
        store.add_task_usage(task.id, DELTA)
        committed += 1
        print(committed, flush=True)


if __name__ == "__main__":
    name, home = sys.argv[1], Path(sys.argv[2])
    if name == "migrate-and-pause":
        migrate_and_pause(home, int(sys.argv[3]))
    elif name == "write-usage":
        write_usage(home)
    else:
        raise SystemExit(f"unknown child {name}")
