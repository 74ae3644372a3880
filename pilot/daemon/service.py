"""The daemon's task loop: claim queued tasks up to the concurrency limit, run each in a thread, drain.

`poll()` is cheap (one SQLite query when there is room for a task, one when tasks run) and is
called from the dashboard's timer or the headless loop. It also answers `pilot task cancel`
from other processes: the store's cancel requests for the tasks this daemon runs are turned into
a cancel of that task (its process group gets SIGTERM, then SIGKILL). Draining stops new claims;
running tasks finish on their own, are recorded once, and `wait_idle` tells when none is left;
`cancel_all` ends them sooner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pilot.config import DaemonConfig
from pilot.daemon.tasks import Cancel, finish, run_task
from pilot.net import one_line
from pilot.state.models import CANCELLED

log = logging.getLogger("pilot")


class Daemon:
    def __init__(self, store, config: DaemonConfig, *, session_id: int,
                 on_change: Callable[[], None] = lambda: None,
                 on_line: Callable[[int, str], None] | None = None, log_dir: Path | None = None) -> None:
        self.store = store
        self.config = config
        self.session_id = session_id
        self.on_change = on_change
        self.on_line = on_line
        self.log_dir = log_dir
        self._threads: dict[int, threading.Thread] = {}
        self._cancels: dict[int, Cancel] = {}
        self._lock = threading.Lock()
        self._draining = threading.Event()
        self.idle_since = time.monotonic()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def running_count(self) -> int:
        return len(self.running_ids())

    def running_ids(self) -> list[int]:
        with self._lock:
            return sorted(tid for tid, thread in self._threads.items() if thread.is_alive())

    def poll(self) -> None:
        """Start queued tasks while there is room and the daemon is not draining; act on cancel requests."""
        with self._lock:
            self._threads = {tid: t for tid, t in self._threads.items() if t.is_alive()}
            self._cancels = {tid: c for tid, c in self._cancels.items() if tid in self._threads}
            while not self.draining and len(self._threads) < self.config.concurrency:
                task = self.store.claim_next_task(self.session_id)
                if task is None:
                    break
                self._cancels[task.id] = Cancel()
                thread = threading.Thread(target=self._run, args=(task, self._cancels[task.id]),
                                          name=f"task-{task.id}", daemon=True)
                self._threads[task.id] = thread
                thread.start()
                self.on_change()
            running = bool(self._threads)
        if running:
            for task_id in self.store.cancel_requests(self.session_id):
                if self.cancel(task_id, CANCELLED):
                    log.info("task %s: cancel requested (pilot task cancel)", task_id)

    def _run(self, task, cancel: Cancel) -> None:
        try:
            run_task(task, self.store, self.config.executor, cancel=cancel, on_line=self.on_line,
                     log_dir=self.log_dir)
        except Exception as error:  # a store failure mid-task: the process is gone, record what we can
            log.exception("task %s: Pilot failed while running it", task.id)
            try:
                finish(self.store, task.id, exit_code=None, failed=True,
                       reason=one_line(f"Pilot failed while running it: {error}", 200))
            except Exception:
                log.error("task %s: could not record its end either; the next start marks it interrupted", task.id)
        finally:
            self.idle_since = time.monotonic()
            self.on_change()

    def cancel(self, task_id: int, reason: str = CANCELLED) -> bool:
        """Cancel one running task, recorded with this reason; False if it is not running here or was already."""
        with self._lock:
            cancel = self._cancels.get(task_id)
            thread = self._threads.get(task_id)
            return cancel is not None and thread is not None and thread.is_alive() and cancel.set(reason)

    def cancel_all(self, reason: str) -> int:
        """Cancel every running task with this reason; how many were told."""
        return sum(self.cancel(task_id, reason) for task_id in self.running_ids())

    def idle_for(self) -> float:
        """Seconds since the last task ended (or the daemon started) when nothing runs or waits; else 0."""
        if self.running_count() or self.store.queued_count():
            return 0.0
        return time.monotonic() - self.idle_since

    def drain(self) -> None:
        self._draining.set()

    def resume(self) -> None:
        self._draining.clear()

    def stop(self, timeout: float = 15.0, reason: str = "cancelled: the daemon quit") -> bool:
        """Quit: start nothing more and cancel running tasks (their process groups get SIGTERM, then
        SIGKILL), so each is recorded as ended before the store closes. True when all have ended."""
        self.drain()
        self.cancel_all(reason)
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
