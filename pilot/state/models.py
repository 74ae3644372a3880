"""The values the state store hands out: frozen, so a reader can never write through them.

Times are timezone-aware UTC datetimes; the database keeps them as ISO-8601 text.
"""

from __future__ import annotations

from datetime import datetime

from pilot.records import Record  # here too: pilot.state.db builds its values on it

TASK_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED_STATUSES = ("done", "failed", "cancelled", "interrupted")
CANCELLED = "cancelled"  # the failure reason of a task cancelled by `pilot task cancel`


class Usage(Record):
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


class Task(Record):
    id: int
    title: str
    command: tuple[str, ...] | None
    status: str  # one of TASK_STATUSES
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    usage: Usage = Usage()  # immutable, so one shared default is safe
    log_tail: str = ""
    session_id: int | None = None  # Pilot's session (the daemon run) that ran the task
    failure_reason: str | None = None  # one short line whenever the task ended other than done
    agent_session_id: str | None = None  # the agent's own session id (Claude Code's stream-json session_id)
    cancel_requested_at: datetime | None = None  # `pilot task cancel` asked; the daemon acts within a second or two
    pgid: int | None = None  # the process group the task ran in (the reaper's handle on leftovers)


class Totals(Record):
    usage: Usage
    done: int
    failed: int
    queued: int
    running: int
    interrupted: int
    cancelled: int = 0


class Session(Record):
    id: int
    started_at: datetime
    ended_at: datetime | None
    version: str
    pid: int
    usage: Usage = Usage()  # immutable, so one shared default is safe


def exit_reason(exit_code: int | None) -> str:
    """Pure: a failed task's reason from its exit code: "exit status 2", "killed by SIGTERM"."""
    if exit_code is None:
        return "no exit status"
    if exit_code >= 0:
        return f"exit status {exit_code}"
    import signal  # here: it pulls in enum, and only a failed task needs it

    try:
        return f"killed by {signal.Signals(-exit_code).name}"
    except ValueError:
        return f"killed by signal {-exit_code}"
