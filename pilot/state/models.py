"""The values the state store hands out: frozen, so a reader can never write through them.

Times are timezone-aware UTC datetimes; the database keeps them as ISO-8601 text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

TASK_STATUSES = ("queued", "running", "done", "failed", "interrupted")
FINISHED_STATUSES = ("done", "failed", "interrupted")


@dataclass(frozen=True)
class Usage:
    """Token counts and cost; deltas and totals alike, so they add."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


@dataclass(frozen=True)
class Task:
    id: int
    title: str
    command: tuple[str, ...] | None
    status: str  # one of TASK_STATUSES
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    usage: Usage = field(default_factory=Usage)
    log_tail: str = ""
    session_id: int | None = None


@dataclass(frozen=True)
class Totals:
    usage: Usage
    done: int
    failed: int
    queued: int
    running: int
    interrupted: int


@dataclass(frozen=True)
class Session:
    id: int
    started_at: datetime
    ended_at: datetime | None
    version: str
    pid: int
    usage: Usage = field(default_factory=Usage)
