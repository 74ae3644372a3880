"""The background version check: shortly after start, then every check_interval with jitter.

It runs in a thread and reports each `CheckOutcome` through a callback, so it never blocks
the UI. Each check is `Updater.check()`, the very code `pilot self-update --check` runs
(signatures, schema, expiry, serial high-water mark), with a conditional request (ETag / 304).

Scheduling is the pure `next_delay`: after a success, the interval with ±10 % jitter; after
failures in a row, exponential backoff from MIN_RETRY capped at the interval, but never
sooner than the server's Retry-After (itself capped at MAX_RETRY_AFTER), and either stretched
by a random part of up to half of itself (at most half the interval): a fleet that failed
together, or that a server told the same instant (a Retry-After date at the end of an outage),
comes back spread over that time instead of in the same second (benchmarks/fleet.py measures
it: without the spread, a million clients told one date return within one second). A `PilotError` is
reported as a quiet error; any other `Exception` from the check or from the callback is
logged once with its traceback to the `pilot` logger, reported the same way, counted as a
failure, and the checker keeps running. `stop()` and `check_now()` end the wait at once.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pilot.errors import PilotError

FIRST_CHECK_DELAY = (5.0, 30.0)  # seconds after start, drawn at random so a fleet does not check in step
MIN_RETRY = 30.0  # first backoff after a failure
MAX_RETRY_AFTER = 24 * 3600.0  # a server's Retry-After beyond this is taken as this
JITTER = 0.1
RETRY_SPREAD = 0.5  # a failure's delay is stretched by up to this part of itself, at most of the interval

log = logging.getLogger("pilot")


@dataclass(frozen=True)
class CheckOutcome:
    at: float
    result: object | None = None  # pilot.update.updater.CheckResult
    error: str | None = None
    retry_after: float | None = None  # seconds the server asked to wait, within [0, MAX_RETRY_AFTER]


class Checkable(Protocol):
    def check(self) -> object: ...


def random_first_delay(rng: random.Random) -> float:
    """Pure: a delay drawn from FIRST_CHECK_DELAY."""
    return rng.uniform(*FIRST_CHECK_DELAY)


def bounded_retry_after(value: object) -> float | None:
    """Pure: a Retry-After in seconds within [0, MAX_RETRY_AFTER]; None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return min(max(float(value), 0.0), MAX_RETRY_AFTER)


def next_delay(outcome: CheckOutcome, failures: int, interval: float, rng: random.Random) -> float:
    """Pure: when to check again after this outcome and this many failures in a row."""
    if outcome.error is None:
        return interval * rng.uniform(1 - JITTER, 1 + JITTER)
    backoff = min(interval, MIN_RETRY * 2.0 ** min(max(failures - 1, 0), 32))
    wait = max(backoff, bounded_retry_after(outcome.retry_after) or 0.0)
    return wait + rng.uniform(0.0, RETRY_SPREAD * min(wait, interval))  # never sooner than asked, never in step


def describe_unexpected(error: BaseException) -> str:
    """Pure: the quiet one-line error for an exception that is not a PilotError."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    if len(line) > 200:
        line = line[:197] + "..."
    return f"update check failed unexpectedly: {line} (details in pilot.log)"


class UpdateChecker:
    def __init__(self, updater: Checkable, *, interval: float, on_outcome: Callable[[CheckOutcome], None],
                 first_delay: float | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`first_delay` None draws one from FIRST_CHECK_DELAY; `clock` stamps outcomes."""
        if first_delay is not None and not 0 <= first_delay < math.inf:
            raise ValueError(f"first_delay must be a finite number of seconds >= 0, got {first_delay!r}")
        self.updater = updater
        self.interval = interval
        self.on_outcome = on_outcome
        self.rng = rng or random.Random()
        self.clock = clock
        self.first_delay = random_first_delay(self.rng) if first_delay is None else first_delay
        self.failures = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()

    def check_once(self) -> CheckOutcome:
        """One check; never raises an `Exception`, only reports it."""
        try:
            return CheckOutcome(self.clock(), result=self.updater.check())
        except PilotError as error:
            retry_after = bounded_retry_after(getattr(error, "retry_after", None))
            return CheckOutcome(self.clock(), error=error.one_line(), retry_after=retry_after)
        except Exception as error:
            log.exception("update check failed unexpectedly")
            return CheckOutcome(self.clock(), error=describe_unexpected(error))

    def step(self) -> float:
        """One check, reported; returns the delay until the next one."""
        outcome = self._report(self.check_once())
        self.failures = self.failures + 1 if outcome.error else 0
        return next_delay(outcome, self.failures, self.interval, self.rng)

    def check_now(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def run(self) -> None:
        """Check after the first delay, then as `next_delay` says, until `stop()`."""
        delay = self.first_delay
        while self._wait(delay):
            delay = self.step()

    def _wait(self, delay: float) -> bool:
        """Sleep up to `delay`, less if woken; False once stopped."""
        self._wake.wait(delay)
        self._wake.clear()
        return not self._stopped.is_set()

    def _report(self, outcome: CheckOutcome) -> CheckOutcome:
        """Hand the outcome to the callback; if that raises, log it and report the failure instead."""
        try:
            self.on_outcome(outcome)
            return outcome
        except Exception as error:
            log.exception("reporting the update check outcome failed")
            failed = CheckOutcome(self.clock(), error=describe_unexpected(error))
        try:
            self.on_outcome(failed)
        except Exception as again:  # the traceback is in the log already
            log.error("reporting that failure failed too: %s", describe_unexpected(again))
        return failed
