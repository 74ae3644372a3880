"""Pilot's local state: one SQLite file (WAL) with tasks, sessions and token usage.

`open_store(app_version=...)` is the entry point; see db.py for migrations and the rollback
guard, store.py for reads and writes and their thread-safety rules.
"""

from pilot.state.db import DB_FILENAME, SCHEMA_VERSION
from pilot.state.models import Session, Task, Totals, Usage
from pilot.state.store import Store, open_store

__all__ = ["DB_FILENAME", "SCHEMA_VERSION", "Session", "Store", "Task", "Totals", "Usage", "open_store"]
