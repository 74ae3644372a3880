"""Token and cost accounting from Claude Code's `--output-format stream-json --verbose` output.

Pure: no I/O, no clock. One `UsageTracker` per task run; feed it every output line.

Each line is a JSON object. Assistant messages carry usage:

    {"type": "assistant", "message": {"id": "msg_1", "usage": {"input_tokens": 10, "output_tokens": 5,
     "cache_creation_input_tokens": 100, "cache_read_input_tokens": 200}, ...}}

The same message id can appear on several lines while its content streams. The latest numbers
for an id are that message's running total, so only the increase over what was already counted
is emitted; a smaller number later never takes tokens back. The last line is the result:

    {"type": "result", "subtype": "success", "total_cost_usd": 0.0123, "usage": {...cumulative...}}

It reconciles: whatever its cumulative usage has above the counted totals is emitted, together
with the authoritative cost. Anything else (plain text, other event types, malformed JSON) is
log output: `feed` returns None. `feed` never raises.

Every event names the agent's own session (`"session_id": "..."` on the `system` init line, the
`result` line and the others); the latest well-formed one is `session_id`, whatever `feed` returns.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pilot.state.models import Usage

__all__ = ["MAX_TOKENS", "Usage", "UsageTracker", "UsageUpdate"]

# A per-message or per-run token count above this is garbage, not usage (and would not fit SQLite).
MAX_TOKENS = 2**53
MAX_SESSION_ID = 200  # characters; a longer "session id" is not one
# Usage field in the stream -> Usage attribute. Order is the order of the tuples below.
_FIELDS = (
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_input_tokens", "cache_read_tokens"),
    ("cache_creation_input_tokens", "cache_write_tokens"),
)
_ZERO = (0, 0, 0, 0)

Counts = tuple[int, int, int, int]  # input, output, cache read, cache write


@dataclass(frozen=True)
class UsageUpdate:
    """What one line changes: tokens to add now (possibly none) and, on the result line, the final cost."""

    delta: Usage
    final_cost: float | None = None

    @property
    def empty(self) -> bool:
        """Nothing to write: no token increase and no cost."""
        return self.final_cost is None and _counts_of(self.delta) == _ZERO


class UsageTracker:
    """Turns stream-json lines into usage deltas, counting each message once."""

    def __init__(self) -> None:
        self._messages: dict[str, Counts] = {}  # per message id: what has been counted for it
        self._totals: Counts = _ZERO  # everything emitted so far
        self.final_cost: float | None = None
        self.session_id: str | None = None  # the agent's own session id, once an event named it

    @property
    def totals(self) -> Usage:
        """Everything emitted so far, with the final cost once the result line has been seen."""
        return _usage(self._totals, self.final_cost or 0.0)

    def feed(self, line: str) -> UsageUpdate | None:
        """The usage a line adds, or None if the line is not a usage-bearing event (it is log output).

        An assistant line whose message was already counted in full returns an update with an empty
        delta: it is still an event, not log output.
        """
        try:
            event = _parse(line)
            if event is None:
                return None
            self._note_session(event.get("session_id"))
            kind = event.get("type")
            if kind == "assistant":
                return self._assistant(event)
            if kind == "result":
                return self._result(event)
        except Exception:  # defence in depth: a tracker bug must never take a task down
            return None
        return None

    def _note_session(self, value: object) -> None:
        if isinstance(value, str) and 0 < len(value) <= MAX_SESSION_ID and value.isprintable() and \
                not any(ch.isspace() for ch in value):
            self.session_id = value

    def _assistant(self, event: dict) -> UsageUpdate | None:
        message = event.get("message")
        if not isinstance(message, dict):
            return None
        counts = _counts(message.get("usage"))
        if counts is None:
            return None
        message_id = message.get("id")
        if not isinstance(message_id, str) or not message_id:
            return self._add(_ZERO, counts)  # no id: nothing to deduplicate against
        seen = self._messages.get(message_id, _ZERO)
        self._messages[message_id] = _max(seen, counts)
        return self._add(seen, counts)

    def _result(self, event: dict) -> UsageUpdate:
        cost = event.get("total_cost_usd")
        final_cost = float(cost) if _is_cost(cost) else None
        if final_cost is not None:
            self.final_cost = final_cost
        cumulative = _counts(event.get("usage")) or _ZERO
        update = self._add(self._totals, cumulative)
        return UsageUpdate(update.delta, final_cost)

    def _add(self, counted: Counts, latest: Counts) -> UsageUpdate:
        """Emit what `latest` has above `counted`, field by field, and add it to the totals."""
        increase = tuple(min(max(new - old, 0), MAX_TOKENS - total)
                         for old, new, total in zip(counted, latest, self._totals, strict=True))
        self._totals = tuple(t + i for t, i in zip(self._totals, increase, strict=True))
        return UsageUpdate(_usage(increase))


def _parse(line: object) -> dict | None:
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("utf-8", "replace")
    if not isinstance(line, str):
        return None
    text = line.strip()
    if not text.startswith("{"):  # cheap rejection of plain log lines
        return None
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _tokens(value: object) -> int:
    """A token count, or 0 for anything that is not a plausible one."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_TOKENS:
        return value
    return 0


def _counts(usage: object) -> Counts | None:
    if not isinstance(usage, dict):
        return None
    return tuple(_tokens(usage.get(key)) for key, _ in _FIELDS)


def _is_cost(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 <= value < 1e9 and math.isfinite(value)  # range first: a huge int cannot become a float


def _max(a: Counts, b: Counts) -> Counts:
    return tuple(max(x, y) for x, y in zip(a, b, strict=True))


def _usage(counts: Counts, cost: float = 0.0) -> Usage:
    return Usage(**{attr: n for (_, attr), n in zip(_FIELDS, counts, strict=True)}, cost_usd=cost)


def _counts_of(usage: Usage) -> Counts:
    return tuple(getattr(usage, attr) for _, attr in _FIELDS)
