"""The background update checker: its pure schedule, and its thread surviving whatever a check throws."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from pilot.daemon.checker import (
    FIRST_CHECK_DELAY,
    MAX_RETRY_AFTER,
    MIN_RETRY,
    RETRY_SPREAD,
    CheckOutcome,
    UpdateChecker,
    next_delay,
    random_first_delay,
)
from pilot.errors import DownloadError

HOUR = 3600.0
OK = CheckOutcome(at=0.0, result="result")
FAILED = CheckOutcome(at=0.0, error="HTTP 503 for https://updates.example/manifest.json")
WAIT = 2.0  # upper bound for anything the thread should do "at once"; normally milliseconds


class ScriptedUpdater:
    """`check()` returns or raises the next scripted item; the last one repeats."""

    def __init__(self, *script: object) -> None:
        self.script = list(script)
        self.calls = 0
        self.called = threading.Event()

    def check(self) -> object:
        item = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.called.set()
        if isinstance(item, BaseException):
            raise item
        return item


class Recorder:
    """An `on_outcome` that records outcomes, raises scripted errors, and signals after `expect` calls."""

    def __init__(self, expect: int = 1, raises: dict[int, Exception] | None = None) -> None:
        self.outcomes: list[CheckOutcome] = []
        self.expect = expect
        self.raises = raises or {}
        self.done = threading.Event()

    def __call__(self, outcome: CheckOutcome) -> None:
        self.outcomes.append(outcome)
        if len(self.outcomes) >= self.expect:
            self.done.set()
        if (error := self.raises.get(len(self.outcomes))) is not None:
            raise error


def rate_limited(retry_after: float | None) -> DownloadError:
    error = DownloadError("HTTP 429 for https://updates.example/manifest.json")
    error.retry_after = retry_after
    return error


def started(checker: UpdateChecker) -> threading.Thread:
    thread = threading.Thread(target=checker.run, name="update-checker", daemon=True)
    thread.start()
    return thread


def stop(checker: UpdateChecker, thread: threading.Thread) -> None:
    checker.stop()
    thread.join(WAIT)
    assert not thread.is_alive()


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pilot" and r.exc_info is not None]


# ---------------------------------------------------------------------------- first delay


@pytest.mark.parametrize("seed", range(20))
def test_random_first_delay_is_within_bounds(seed):
    low, high = FIRST_CHECK_DELAY
    assert low <= random_first_delay(random.Random(seed)) <= high
    checker = UpdateChecker(ScriptedUpdater(None), interval=HOUR, on_outcome=Recorder(), rng=random.Random(seed))
    assert low <= checker.first_delay <= high


def test_first_delay_is_drawn_at_random():
    delays = {random_first_delay(random.Random(seed)) for seed in range(20)}
    assert len(delays) == 20


def test_a_given_first_delay_is_used_and_the_environment_is_not_read(monkeypatch):
    monkeypatch.setenv("PILOT_FIRST_CHECK_DELAY", "not a number")
    given = UpdateChecker(ScriptedUpdater(None), interval=HOUR, on_outcome=Recorder(), first_delay=0.5)
    assert given.first_delay == 0.5
    drawn = UpdateChecker(ScriptedUpdater(None), interval=HOUR, on_outcome=Recorder(), rng=random.Random(1))
    assert FIRST_CHECK_DELAY[0] <= drawn.first_delay <= FIRST_CHECK_DELAY[1]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_first_delay_is_refused_by_the_caller_not_in_the_thread(bad):
    with pytest.raises(ValueError, match="first_delay"):
        UpdateChecker(ScriptedUpdater(None), interval=HOUR, on_outcome=Recorder(), first_delay=bad)


# ---------------------------------------------------------------------------- schedule


def test_after_a_success_the_interval_with_ten_percent_jitter():
    rng = random.Random(7)
    delays = [next_delay(OK, 0, HOUR, rng) for _ in range(200)]
    assert all(0.9 * HOUR <= d <= 1.1 * HOUR for d in delays)
    assert min(delays) < 0.95 * HOUR and max(delays) > 1.05 * HOUR  # jittered, not fixed


def spread_of(wait: float, interval: float = HOUR) -> tuple[float, float]:
    """The range a failure's delay is drawn from: never sooner than `wait`, at most half of it (or of the
    interval) later."""
    return wait, wait + RETRY_SPREAD * min(wait, interval)


def within(delay: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= delay <= bounds[1]


def test_failures_back_off_exponentially_from_min_retry_capped_at_the_interval():
    rng = random.Random(7)
    waits = [MIN_RETRY * 2 ** n for n in range(7)] + [HOUR, HOUR]
    delays = [next_delay(FAILED, failures, HOUR, rng) for failures in range(1, 10)]
    assert all(within(d, spread_of(w)) for d, w in zip(delays, waits, strict=True)), delays
    assert within(next_delay(FAILED, 100_000, HOUR, rng), spread_of(HOUR))  # a very long outage does not overflow


def test_the_backoff_is_spread_so_a_fleet_that_failed_together_does_not_retry_together():
    rng = random.Random(7)
    for failures, wait in [(1, MIN_RETRY), (4, 8 * MIN_RETRY), (50, HOUR)]:
        delays = [next_delay(FAILED, failures, HOUR, rng) for _ in range(1000)]
        low, high = spread_of(wait)
        assert all(low <= d <= high for d in delays)
        assert min(delays) < low + 0.05 * (high - low) and max(delays) > high - 0.05 * (high - low)
        assert 0.45 < sum(d < (low + high) / 2 for d in delays) / len(delays) < 0.55  # uniform, not lumped


def test_a_retry_after_longer_than_the_backoff_wins():
    rng = random.Random(7)
    asked = CheckOutcome(at=0.0, error="HTTP 429", retry_after=900.0)
    assert within(next_delay(asked, 1, HOUR, rng), spread_of(900.0))
    longer = CheckOutcome(at=0.0, error="HTTP 429", retry_after=5 * HOUR)
    assert within(next_delay(longer, 1, HOUR, rng), (5 * HOUR, 5.5 * HOUR))  # spread by at most half the interval


def test_a_fleet_told_the_same_instant_comes_back_over_half_an_interval():
    """A Retry-After date (the end of a maintenance window) names one instant for every client."""
    rng = random.Random(7)
    asked = CheckOutcome(at=0.0, error="HTTP 503", retry_after=2 * HOUR)
    returns = sorted(next_delay(asked, 1, HOUR, rng) for _ in range(10_000))
    assert returns[0] >= 2 * HOUR and returns[-1] <= 2.5 * HOUR
    busiest_minute = max(sum(1 for r in returns if m * 60 <= r - 2 * HOUR < (m + 1) * 60) for m in range(30))
    assert busiest_minute < 2 * len(returns) / 30  # about even over the 30 minutes, not all in the first


def test_a_retry_after_shorter_than_the_backoff_does_not_shorten_it():
    rng = random.Random(7)
    asked = CheckOutcome(at=0.0, error="HTTP 429", retry_after=1.0)
    assert within(next_delay(asked, 1, HOUR, rng), spread_of(MIN_RETRY))
    assert within(next_delay(asked, 3, HOUR, rng), spread_of(4 * MIN_RETRY))


@pytest.mark.parametrize("asked", [10 * MAX_RETRY_AFTER, float("inf")])
def test_a_retry_after_is_capped(asked):
    outcome = CheckOutcome(at=0.0, error="HTTP 429", retry_after=asked)
    assert within(next_delay(outcome, 1, HOUR, random.Random(7)), spread_of(MAX_RETRY_AFTER))
    assert MAX_RETRY_AFTER == 24 * HOUR


def test_a_garbled_retry_after_falls_back_to_the_backoff():
    outcome = CheckOutcome(at=0.0, error="HTTP 429", retry_after=float("nan"))
    assert within(next_delay(outcome, 2, HOUR, random.Random(7)), spread_of(2 * MIN_RETRY))


def test_a_retry_after_after_a_success_is_irrelevant():
    outcome = CheckOutcome(at=0.0, result="result", retry_after=10 * HOUR)
    assert 0.9 * HOUR <= next_delay(outcome, 0, HOUR, random.Random(7)) <= 1.1 * HOUR


# ---------------------------------------------------------------------------- one check


def test_a_pilot_error_is_a_quiet_outcome_that_reports_retry_after():
    checker = UpdateChecker(ScriptedUpdater(rate_limited(600.0)), interval=HOUR, on_outcome=Recorder(),
                            first_delay=0, clock=lambda: 1234.5)
    outcome = checker.check_once()
    assert outcome == CheckOutcome(at=1234.5, error="HTTP 429 for https://updates.example/manifest.json",
                                   retry_after=600.0)


def test_a_download_error_without_retry_after_still_works():
    checker = UpdateChecker(ScriptedUpdater(DownloadError("offline")), interval=HOUR, on_outcome=Recorder())
    assert checker.check_once().retry_after is None


def test_the_retry_after_reported_is_the_one_scheduled():
    checker = UpdateChecker(ScriptedUpdater(rate_limited(1e9)), interval=HOUR, on_outcome=Recorder())
    assert checker.check_once().retry_after == MAX_RETRY_AFTER


def test_step_schedules_from_retry_after_and_counts_failures():
    recorder = Recorder()
    checker = UpdateChecker(ScriptedUpdater(rate_limited(2 * HOUR), DownloadError("offline"), "result"),
                            interval=HOUR, on_outcome=recorder, rng=random.Random(7))
    assert within(checker.step(), spread_of(2 * HOUR)) and checker.failures == 1
    assert within(checker.step(), spread_of(2 * MIN_RETRY)) and checker.failures == 2
    assert 0.9 * HOUR <= checker.step() <= 1.1 * HOUR and checker.failures == 0
    assert [o.result for o in recorder.outcomes] == [None, None, "result"]


def test_an_unexpected_exception_from_the_check_is_logged_and_counted_as_a_failure(caplog):
    recorder = Recorder()
    checker = UpdateChecker(ScriptedUpdater(RuntimeError("boom\nsecond line")), interval=HOUR,
                            on_outcome=recorder, rng=random.Random(7))
    assert within(checker.step(), spread_of(MIN_RETRY))
    assert checker.failures == 1
    assert recorder.outcomes[0].error == "update check failed unexpectedly: RuntimeError: boom (details in pilot.log)"
    [record] = tracebacks(caplog)
    assert record.exc_info[1] is checker.updater.script[0]


def test_an_unexpected_exception_from_the_callback_is_logged_reported_and_counted(caplog):
    recorder = Recorder(raises={1: OSError(28, "No space left on device")})
    checker = UpdateChecker(ScriptedUpdater("result"), interval=HOUR, on_outcome=recorder, rng=random.Random(7))
    assert within(checker.step(), spread_of(MIN_RETRY))
    assert checker.failures == 1
    assert [o.result for o in recorder.outcomes] == ["result", None]
    assert recorder.outcomes[1].error == ("update check failed unexpectedly: OSError: [Errno 28] No space left on "
                                          "device (details in pilot.log)")
    [record] = tracebacks(caplog)
    assert isinstance(record.exc_info[1], OSError)


def test_a_callback_that_keeps_failing_is_logged_once_with_traceback(caplog):
    recorder = Recorder(raises={1: ValueError("first"), 2: ValueError("second")})
    checker = UpdateChecker(ScriptedUpdater("result"), interval=HOUR, on_outcome=recorder)
    checker.step()
    assert checker.failures == 1
    [record] = tracebacks(caplog)
    assert str(record.exc_info[1]) == "first"
    assert any("second" in r.getMessage() for r in caplog.records)


def test_base_exceptions_are_not_swallowed():
    checker = UpdateChecker(ScriptedUpdater(KeyboardInterrupt()), interval=HOUR, on_outcome=Recorder())
    with pytest.raises(KeyboardInterrupt):
        checker.step()


# ---------------------------------------------------------------------------- the thread


def test_the_thread_survives_an_unexpected_exception_from_the_check(caplog):
    recorder = Recorder(expect=3)
    updater = ScriptedUpdater(RuntimeError("boom"), "result")
    checker = UpdateChecker(updater, interval=0.01, on_outcome=recorder, first_delay=0)
    thread = started(checker)
    assert recorder.done.wait(WAIT)
    stop(checker, thread)
    assert recorder.outcomes[0].error.startswith("update check failed unexpectedly: RuntimeError: boom")
    assert [o.result for o in recorder.outcomes[1:3]] == ["result", "result"]
    assert len(tracebacks(caplog)) == 1


def test_the_thread_survives_an_unexpected_exception_from_the_callback(caplog):
    recorder = Recorder(expect=4, raises={1: RuntimeError("listener bug")})
    checker = UpdateChecker(ScriptedUpdater("result"), interval=0.01, on_outcome=recorder, first_delay=0)
    thread = started(checker)
    assert recorder.done.wait(WAIT)
    stop(checker, thread)
    assert [o.result for o in recorder.outcomes[:4]] == ["result", None, "result", "result"]
    assert "listener bug" in recorder.outcomes[1].error
    assert len(tracebacks(caplog)) == 1


def test_the_thread_waits_for_retry_after():
    recorder = Recorder(expect=2)
    updater = ScriptedUpdater(rate_limited(60.0), "result")
    checker = UpdateChecker(updater, interval=0.01, on_outcome=recorder, first_delay=0)
    thread = started(checker)
    assert updater.called.wait(WAIT)
    assert not recorder.done.wait(0.3)  # backoff alone (capped at the 0.01 s interval) would have rechecked by now
    stop(checker, thread)
    assert updater.calls == 1
    assert recorder.outcomes[0].retry_after == 60.0


def test_stop_ends_the_thread_during_the_first_delay():
    updater = ScriptedUpdater("result")
    checker = UpdateChecker(updater, interval=HOUR, on_outcome=Recorder(), first_delay=HOUR)
    thread = started(checker)
    checker.stop()
    thread.join(0.5)
    assert not thread.is_alive()
    assert updater.calls == 0


def test_stop_ends_the_thread_while_waiting_for_the_next_check():
    recorder = Recorder()
    checker = UpdateChecker(ScriptedUpdater("result"), interval=HOUR, on_outcome=recorder, first_delay=0)
    thread = started(checker)
    assert recorder.done.wait(WAIT)
    checker.stop()
    thread.join(0.5)
    assert not thread.is_alive()


def test_check_now_wakes_the_thread():
    recorder = Recorder(expect=2)
    updater = ScriptedUpdater("result")
    checker = UpdateChecker(updater, interval=HOUR, on_outcome=recorder, first_delay=HOUR)
    thread = started(checker)
    checker.check_now()
    assert updater.called.wait(WAIT)
    checker.check_now()  # and again, during the hour-long interval
    assert recorder.done.wait(WAIT)
    stop(checker, thread)
    assert updater.calls == 2
