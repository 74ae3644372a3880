"""`pilot` from the source tree in subprocesses, with PILOT_HOME in tmp: the daemon, stop and the task commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def pilot(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pilot", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)


def pilot_json(*args: str) -> object:
    result = pilot(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def task_command(source: str) -> list[str]:
    return ["--", sys.executable, "-c", textwrap.dedent(source)]


def add_task(title: str, source: str) -> int:
    return pilot_json("task", "add", "--json", title, *task_command(source))["id"]


def task(task_id: int) -> dict:
    return pilot_json("task", "show", str(task_id), "--json")


def wait_until(condition: Callable[[], object], timeout: float = 20.0, what: str = "the condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


def pid_gone(pid: int, timeout: float = 5.0) -> bool:
    from tests.daemon.test_process import gone

    return gone(pid, timeout)


# A task that says it runs (its pid and a child's, on its first output line), then sleeps.
def sleeper(seconds: float, *, with_child: bool = False) -> str:
    child = ("child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             "print(os.getpid(), child.pid, flush=True)" if with_child else "print(os.getpid(), flush=True)")
    return f"import os, subprocess, sys, time\n{child}\ntime.sleep({seconds})\nprint('finished', flush=True)\n"


@dataclass
class Daemon:
    """A headless `pilot start` from the source tree; its stderr goes to a file."""

    home: Path
    stderr_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> Daemon:
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen([sys.executable, "-m", "pilot", "start"], cwd=REPO, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self.stderr,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        wait_until(lambda: "daemon started" in self.output() or self.process.poll() is not None, what="the start")
        assert self.process.poll() is None, self.output()
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def log(self) -> str:
        path = self.home / "logs" / "pilot.log"
        return path.read_text() if path.exists() else ""

    def running(self, task_id: int) -> dict:
        """Wait for the task to run and print its first line; the task as `task show --json` has it."""
        return wait_until(lambda: (t := task(task_id))["status"] == "running" and t["log_tail"] and t,
                          what=f"task {task_id} running")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        if self.process is not None:
            self.stderr.close()


@pytest.fixture
def configure(isolated_home) -> Callable[..., Path]:
    """Write config.yaml: no update checks, one task at a time, the given drain timeout."""

    def write(drain_timeout: str = "30s", concurrency: int = 1) -> Path:
        isolated_home.mkdir(parents=True, exist_ok=True)
        (isolated_home / "config.yaml").write_text(
            f"upgrade:\n  auto_check: false\ndaemon:\n  concurrency: {concurrency}\n  drain_timeout: {drain_timeout}\n")
        return isolated_home

    return write


@pytest.fixture
def daemon(isolated_home, tmp_path) -> Iterator[Callable[[], Daemon]]:
    started: list[Daemon] = []

    def start() -> Daemon:
        started.append(Daemon(isolated_home, tmp_path / f"daemon-{len(started)}.stderr").start())
        return started[-1]

    yield start
    for running in started:
        running.close()
