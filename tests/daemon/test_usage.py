"""UsageTracker against realistic Claude Code stream-json transcripts, broken lines and fuzz."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from pilot.daemon.usage import MAX_TOKENS, Usage, UsageTracker, UsageUpdate


def line(obj: object) -> str:
    return json.dumps(obj)


def assistant(message_id: str | None, *, inp: int = 0, out: int = 0, write: int = 0, read: int = 0,
              content: list | None = None) -> str:
    message = {
        "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": content or [{"type": "text", "text": "Working on it."}], "stop_reason": None,
        "usage": {"input_tokens": inp, "cache_creation_input_tokens": write, "cache_read_input_tokens": read,
                  "output_tokens": out, "service_tier": "standard"},
    }
    if message_id is not None:
        message["id"] = message_id
    return line({"type": "assistant", "message": message, "parent_tool_use_id": None, "session_id": "s-1"})


def result(*, cost: object = 0.0123, inp: int = 0, out: int = 0, write: int = 0, read: int = 0,
           subtype: str = "success") -> str:
    return line({"type": "result", "subtype": subtype, "is_error": subtype != "success", "duration_ms": 5400,
                 "num_turns": 2, "result": "Done.", "session_id": "s-1", "total_cost_usd": cost,
                 "usage": {"input_tokens": inp, "cache_creation_input_tokens": write,
                           "cache_read_input_tokens": read, "output_tokens": out}})


SYSTEM_INIT = line({"type": "system", "subtype": "init", "cwd": "/work", "session_id": "s-1",
                    "tools": ["Bash", "Read"], "model": "claude-sonnet-4-20250514", "permissionMode": "default"})
TOOL_RESULT = line({"type": "user", "message": {"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "README.md\npilot/"}]}, "session_id": "s-1"})

# A two-turn session as Claude Code prints it: msg_01 streams over two lines (text, then a tool call
# with the final output count), a tool result, msg_02, and the result with the cumulative usage.
TRANSCRIPT = [
    SYSTEM_INIT,
    assistant("msg_01", inp=4, out=1, write=1500, read=12000),
    assistant("msg_01", inp=4, out=85, write=1500, read=12000,
              content=[{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]),
    TOOL_RESULT,
    assistant("msg_02", inp=3, out=120, write=400, read=13500),
    result(cost=0.0123, inp=7, out=205, write=1900, read=25500),
]
SESSION_TOTAL = Usage(input_tokens=7, output_tokens=205, cache_read_tokens=25500, cache_write_tokens=1900)


def feed_all(tracker: UsageTracker, lines: list[str]) -> list[UsageUpdate | None]:
    return [tracker.feed(text) for text in lines]


def total_of(updates: list[UsageUpdate | None]) -> Usage:
    total = Usage()
    for update in updates:
        if update is not None:
            total = total + update.delta
    return total


def test_transcript_counts_each_message_once_and_ends_with_the_cost():
    tracker = UsageTracker()
    updates = feed_all(tracker, TRANSCRIPT)

    assert updates[0] is None and updates[3] is None  # system and user events are log output
    assert updates[1] == UsageUpdate(Usage(input_tokens=4, output_tokens=1, cache_read_tokens=12000,
                                           cache_write_tokens=1500))
    assert updates[2] == UsageUpdate(Usage(output_tokens=84))  # same id: only the increase
    assert updates[4] == UsageUpdate(Usage(input_tokens=3, output_tokens=120, cache_read_tokens=13500,
                                           cache_write_tokens=400))
    assert updates[5] == UsageUpdate(Usage(), final_cost=0.0123)  # result agrees: nothing more to add
    assert total_of(updates) == SESSION_TOTAL
    assert tracker.totals == Usage(**{**SESSION_TOTAL.__dict__, "cost_usd": 0.0123})
    assert tracker.final_cost == 0.0123


def test_a_repeated_line_is_still_an_event_but_adds_nothing():
    tracker = UsageTracker()
    first = tracker.feed(assistant("msg_01", inp=10, out=5, write=100, read=200))
    again = tracker.feed(assistant("msg_01", inp=10, out=5, write=100, read=200))
    assert first == UsageUpdate(Usage(input_tokens=10, output_tokens=5, cache_read_tokens=200,
                                      cache_write_tokens=100))
    assert again is not None and again.empty


def test_interleaved_messages_are_tracked_separately():
    tracker = UsageTracker()
    updates = feed_all(tracker, [
        assistant("msg_a", inp=10, out=1),
        assistant("msg_b", inp=20, out=2),  # e.g. a sub-agent's message in between
        assistant("msg_a", inp=10, out=30),
        assistant("msg_b", inp=20, out=2),
    ])
    assert [u.delta for u in updates] == [Usage(input_tokens=10, output_tokens=1), Usage(input_tokens=20,
                                          output_tokens=2), Usage(output_tokens=29), Usage()]


def test_smaller_numbers_later_never_take_tokens_back():
    tracker = UsageTracker()
    tracker.feed(assistant("msg_01", inp=10, out=50))
    update = tracker.feed(assistant("msg_01", inp=12, out=20))
    assert update.delta == Usage(input_tokens=2)
    assert tracker.totals == Usage(input_tokens=12, output_tokens=50)


def test_messages_without_an_id_count_every_time():
    tracker = UsageTracker()
    feed_all(tracker, [assistant(None, out=5), assistant(None, out=5)])
    assert tracker.totals == Usage(output_tokens=10)


def test_result_with_higher_cumulative_usage_brings_the_totals_up():
    tracker = UsageTracker()
    tracker.feed(assistant("msg_01", inp=10, out=5, write=100, read=200))
    update = tracker.feed(result(cost=0.5, inp=15, out=5, write=90, read=900))
    # Higher fields are topped up; a lower field (cache write 90 < 100) is not taken back.
    assert update == UsageUpdate(Usage(input_tokens=5, cache_read_tokens=700), final_cost=0.5)
    assert tracker.totals == Usage(input_tokens=15, output_tokens=5, cache_read_tokens=900,
                                   cache_write_tokens=100, cost_usd=0.5)


def test_result_alone_carries_everything():
    """A run whose assistant lines were lost (or a CLI that prints only the result) is still counted."""
    tracker = UsageTracker()
    update = tracker.feed(result(cost=1.25, inp=1, out=2, write=3, read=4, subtype="error_max_turns"))
    assert update == UsageUpdate(Usage(input_tokens=1, output_tokens=2, cache_read_tokens=4, cache_write_tokens=3),
                                 final_cost=1.25)


def test_result_without_a_usable_cost_gives_no_final_cost():
    for cost in (None, "0.01", -1, True, float("nan"), float("inf"), 10**400):
        tracker = UsageTracker()
        update = tracker.feed(result(cost=cost, out=3))
        assert update == UsageUpdate(Usage(output_tokens=3), final_cost=None), cost
    assert UsageTracker().feed('{"type":"result","total_cost_usd":NaN}') == UsageUpdate(Usage())
    assert UsageTracker().feed('{"type":"result","total_cost_usd":0}') == UsageUpdate(Usage(), final_cost=0.0)


def test_log_lines_and_garbage_are_not_events():
    tracker = UsageTracker()
    for text in [
        "", "\n", "plain log output", "  { not json", "{", "[1, 2]", "null", '"text"', "42",
        '{"type": "system", "subtype": "init"}', '{"type": "user"}', '{"no": "type"}',
        '{"type": "assistant"}', '{"type": "assistant", "message": "hi"}',
        '{"type": "assistant", "message": {"id": "m", "content": []}}',  # no usage at all
        '{"type": "assistant", "message": {"id": "m", "usage": [1, 2]}}',
        "[" * 100_000, '{"a":' * 100_000,  # nesting deep enough to exhaust the JSON parser's recursion
        '{"type": "assistant"}' + "\x00" * 10, "\ud800", "\ufeff" + "{}",
    ]:
        assert tracker.feed(text) is None, text
    assert tracker.totals == Usage()


def test_nonsense_token_counts_count_as_zero():
    tracker = UsageTracker()
    bad = {"input_tokens": -5, "output_tokens": "12", "cache_creation_input_tokens": True,
           "cache_read_input_tokens": MAX_TOKENS + 1}
    update = tracker.feed(line({"type": "assistant", "message": {"id": "m", "usage": bad}}))
    assert update is not None and update.empty
    update = tracker.feed(line({"type": "assistant", "message": {"id": "m2", "usage": {"output_tokens": 7.0}}}))
    assert update.delta == Usage(output_tokens=7)


def test_bytes_and_non_strings_do_not_raise():
    tracker = UsageTracker()
    assert tracker.feed(assistant("m", out=3).encode()).delta == Usage(output_tokens=3)
    assert tracker.feed(b"\xff\xfe{") is None
    assert tracker.feed(None) is None  # type: ignore[arg-type]
    assert tracker.feed(12) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
counts = st.one_of(st.integers(min_value=-10, max_value=10**6), st.integers(), st.floats(), st.booleans(),
                   st.none(), st.text(max_size=3), json_values)
usages = st.fixed_dictionaries({}, optional={
    "input_tokens": counts, "output_tokens": counts, "cache_creation_input_tokens": counts,
    "cache_read_input_tokens": counts,
}) | json_values
messages = st.fixed_dictionaries({}, optional={"id": st.sampled_from(["msg_1", "msg_2", ""]) | json_values,
                                               "usage": usages, "content": json_values}) | json_values
events = st.one_of(
    st.fixed_dictionaries({"type": st.just("assistant")}, optional={"message": messages}),
    st.fixed_dictionaries({"type": st.just("result")},
                          optional={"usage": usages, "total_cost_usd": st.floats() | st.integers() | json_values}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
stream_lines = st.one_of(
    events.map(lambda e: json.dumps(e, allow_nan=True)),
    st.text(),
    events.map(lambda e: json.dumps(e)[: len(json.dumps(e)) // 2]),  # truncated mid-line
)


def _fields(usage: Usage) -> tuple[int, int, int, int]:
    return usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens


@settings(max_examples=150, deadline=None)
@given(st.lists(stream_lines, max_size=15))
def test_fuzz_never_raises_and_deltas_add_up(lines):
    tracker = UsageTracker()
    total = Usage()
    for text in lines:
        update = tracker.feed(text)
        if update is None:
            continue
        assert all(isinstance(n, int) and 0 <= n <= MAX_TOKENS for n in _fields(update.delta))
        assert update.delta.cost_usd == 0.0
        assert update.final_cost is None or 0 <= update.final_cost < 1e9
        total = total + update.delta
    assert _fields(total) == _fields(tracker.totals)
    assert all(n <= MAX_TOKENS for n in _fields(total))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 1000), st.integers(0, 1000)),
                max_size=20),
       st.integers(0, 5000))
def test_fuzz_well_formed_streams_count_the_max_per_message(msgs, extra):
    """For sane input: totals = sum over ids of the largest number seen, and the result only tops up."""
    tracker = UsageTracker()
    for message_id, inp, out in msgs:
        tracker.feed(assistant(message_id, inp=inp, out=out))
    expected_in = sum(max([i for m, i, _ in msgs if m == mid], default=0) for mid in "abc")
    expected_out = sum(max([o for m, _, o in msgs if m == mid], default=0) for mid in "abc")
    assert (tracker.totals.input_tokens, tracker.totals.output_tokens) == (expected_in, expected_out)

    tracker.feed(result(cost=0.1, inp=expected_in + extra, out=expected_out // 2))
    assert tracker.totals.input_tokens == expected_in + extra
    assert tracker.totals.output_tokens == expected_out
    assert tracker.totals.cost_usd == 0.1


def test_the_agents_session_id_is_the_latest_well_formed_one_any_event_names():
    tracker = UsageTracker()
    assert tracker.session_id is None
    assert tracker.feed("plain text session_id: nope") is None and tracker.session_id is None
    assert tracker.feed(SYSTEM_INIT) is None  # still log output
    assert tracker.session_id == "s-1"
    for bad in ("", "has space", "x" * 201, 42, None, "bell\x07"):
        tracker.feed(line({"type": "system", "session_id": bad}))
        assert tracker.session_id == "s-1"
    tracker.feed(line({"type": "result", "subtype": "success", "session_id": "s-2", "total_cost_usd": 0.5}))
    assert tracker.session_id == "s-2"
