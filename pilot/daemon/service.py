"""The daemon's task loop: claim queued tasks up to the concurrency limit, run each in a thread, drain.

`poll()` is cheap (one SQLite query when there is room for a task) and is called from the
dashboard's timer or the headless loop. Draining stops new claims; running tasks finish
on their own, are recorded once, and `wait_idle` tells when none is left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pilot.config import DaemonConfig
from pilot.daemon.tasks import run_task


class Daemon:
    def __init__(self, store, config: DaemonConfig, *, session_id: int,
                 on_change: Callable[[], None] = lambda: None,
                 on_line: Callable[[int, str], None] | None = None) -> None:
        self.store = store
        self.config = config
        self.session_id = session_id
        self.on_change = on_change
        self.on_line = on_line
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._draining = threading.Event()
        self._cancel = threading.Event()
        self.idle_since = time.monotonic()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def running_count(self) -> int:
        with self._lock:
            return sum(1 for thread in self._threads.values() if thread.is_alive())

    def poll(self) -> None:
        """Start queued tasks while there is room and the daemon is not draining."""
        with self._lock:
            self._threads = {tid: t for tid, t in self._threads.items() if t.is_alive()}
            while not self.draining and len(self._threads) < self.config.concurrency:
                task = self.store.claim_next_task(self.session_id)
                if task is None:
                    break
                thread = threading.Thread(target=self._run, args=(task,), name=f"task-{task.id}", daemon=True)
                self._threads[task.id] = thread
                thread.start()
                self.on_change()

    def _run(self, task) -> None:
        try:
            run_task(task, self.store, self.config.executor, cancel=self._cancel, on_line=self.on_line)
        finally:
            self.idle_since = time.monotonic()
            self.on_change()

    def idle_for(self) -> float:
        """Seconds since the last task ended (or the daemon started) when nothing runs or waits; else 0."""
        if self.running_count() or self.store.queued_count():
            return 0.0
        return time.monotonic() - self.idle_since

    def drain(self) -> None:
        self._draining.set()

    def resume(self) -> None:
        self._draining.clear()

    def stop(self, timeout: float = 15.0) -> bool:
        """Quit: start nothing more and cancel running tasks (their process groups get SIGTERM, then
        SIGKILL), so each is recorded as ended before the store closes. True when all have ended."""
        self.drain()
        self._cancel.set()
        return self.wait_idle(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to timeout seconds for running tasks to end; True when none is left."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                alive = [t for t in self._threads.values() if t.is_alive()]
            if not alive:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            alive[0].join(min(remaining, 0.2))
