"""The values the state store hands out: frozen, so a reader can never write through them.

Times are timezone-aware UTC datetimes; the database keeps them as ISO-8601 text.
"""

from __future__ import annotations

from datetime import datetime

TASK_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED_STATUSES = ("done", "failed", "cancelled", "interrupted")
CANCELLED = "cancelled"  # the failure reason of a task cancelled by `pilot task cancel`


class Record:
    """A frozen value declared like a dataclass (annotated fields, then defaults), without `dataclasses`.

    `pilot status` and `pilot task list` build these on every run: importing dataclasses (and
    inspect with it) and generating four classes cost ~10 ms there. Construction (positional or
    keyword), ==, hash and repr behave as @dataclass(frozen=True) made them; as_dict() is asdict().
    """

    _fields: tuple[str, ...] = ()
    _defaults: dict[str, object]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        # The class's own annotations, in order (strings, under `from __future__ import annotations`);
        # not inspect.get_annotations: inspect is the import this class exists to avoid.
        own = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
        cls._fields = (*cls._fields, *own)
        cls._defaults = {**getattr(cls, "_defaults", {}), **{name: cls.__dict__[name] for name in own
                                                             if name in cls.__dict__}}

    def __init__(self, *args: object, **kwargs: object) -> None:
        name = type(self).__name__
        if len(args) > len(self._fields):
            raise TypeError(f"{name}() takes {len(self._fields)} arguments but {len(args)} were given")
        values = dict(zip(self._fields, args, strict=False))
        for key, value in kwargs.items():
            if key not in self._fields or key in values:
                raise TypeError(f"{name}() got an unexpected or repeated argument {key!r}")
            values[key] = value
        missing = [key for key in self._fields if key not in values and key not in self._defaults]
        if missing:
            raise TypeError(f"{name}() missing {len(missing)} required argument(s): {', '.join(missing)}")
        self.__dict__.update({key: values[key] if key in values else self._defaults[key] for key in self._fields})

    def _values(self) -> tuple:
        return tuple(self.__dict__[key] for key in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={self.__dict__[key]!r}" for key in self._fields)
        return f"{type(self).__qualname__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def as_dict(self) -> dict[str, object]:
        """Field -> value, nested records as dicts too (what dataclasses.asdict gave)."""
        return {key: value.as_dict() if isinstance(value, Record) else value for key, value in
                zip(self._fields, self._values(), strict=True)}


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
