"""The background version check: shortly after start, then every check_interval with jitter.

It runs in a thread and reports through a callback, so it never blocks the UI. Each check
is `Updater.check()`, the very code `pilot self-update --check` runs (signatures, schema,
expiry, serial high-water mark), with a conditional request (ETag / 304). Errors are
reported as a quiet status and retried with backoff, honouring the server's Retry-After.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pilot.errors import PilotError

FIRST_CHECK_DELAY = (5.0, 30.0)
MIN_RETRY = 30.0


@dataclass(frozen=True)
class CheckOutcome:
    at: float
    result: object | None = None  # pilot.update.updater.CheckResult
    error: str | None = None
    retry_after: float | None = None


def first_delay(rng: random.Random) -> float:
    override = os.environ.get("PILOT_FIRST_CHECK_DELAY")  # tests and impatient users
    return float(override) if override else rng.uniform(*FIRST_CHECK_DELAY)


def next_delay(outcome: CheckOutcome, failures: int, interval: float, rng: random.Random) -> float:
    """Pure: when to check again after this outcome and this many failures in a row."""
    if outcome.error is None:
        return interval * rng.uniform(0.9, 1.1)
    backoff = min(interval, MIN_RETRY * 2 ** max(failures - 1, 0))
    return max(backoff, outcome.retry_after or 0.0)


class UpdateChecker:
    def __init__(self, updater, *, interval: float, on_outcome: Callable[[CheckOutcome], None],
                 rng: random.Random | None = None) -> None:
        self.updater = updater
        self.interval = interval
        self.on_outcome = on_outcome
        self.rng = rng or random.Random()
        self.failures = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()

    def check_once(self) -> CheckOutcome:
        try:
            return CheckOutcome(time.time(), result=self.updater.check())
        except PilotError as error:
            return CheckOutcome(time.time(), error=error.one_line(), retry_after=getattr(error, "retry_after", None))

    def check_now(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def run(self) -> None:
        delay = first_delay(self.rng)
        while not self._stopped.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stopped.is_set():
                return
            outcome = self.check_once()
            self.failures = self.failures + 1 if outcome.error else 0
            self.on_outcome(outcome)
            delay = next_delay(outcome, self.failures, self.interval, self.rng)
