"""Pilot's local state: one SQLite file (WAL) with tasks, sessions, token usage and update history.

`open_store(app_version=...)` is the entry point; see db.py for migrations and the rollback
guard, store.py for reads and writes and their thread-safety rules.
"""

from pilot.state.db import DB_FILENAME, SCHEMA_VERSION, open_store
from pilot.state.models import Session, Task, Totals, UpdateEvent, Usage
from pilot.state.store import Store

__all__ = ["DB_FILENAME", "SCHEMA_VERSION", "Session", "Store", "Task", "Totals", "UpdateEvent", "Usage", "open_store"]
