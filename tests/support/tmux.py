"""Drive a real terminal: a program in a tmux pane, keys in, screen text out."""

from __future__ import annotations

import shlex
import subprocess
import time
import uuid


class Tmux:
    def __init__(self, width: int = 120, height: int = 40) -> None:
        self.socket = f"pilot-test-{uuid.uuid4().hex[:8]}"
        self.session = "pilot"
        self.width, self.height = width, height

    def _tmux(self, *args: str) -> str:
        command = ["tmux", "-L", self.socket, "-f", "/dev/null", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def start(self, command: list[str], env: dict[str, str]) -> None:
        exports = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
        self._tmux("new-session", "-d", "-s", self.session, "-x", str(self.width), "-y", str(self.height),
                   *exports, "exec " + shlex.join(command))
        self._tmux("set-option", "-t", self.session, "remain-on-exit", "on")
        self._tmux("set-window-option", "-t", self.session, "window-size", "manual")
        self._tmux("resize-window", "-t", self.session, "-x", str(self.width), "-y", str(self.height))

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.session)

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.session, *keys)

    def pane_pid(self) -> int:
        return int(self._tmux("display-message", "-p", "-t", self.session, "#{pane_pid}").strip())

    def pane_dead(self) -> bool:
        return self._tmux("display-message", "-p", "-t", self.session, "#{pane_dead}").strip() == "1"

    def wait_for(self, *texts: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(text in screen for text in texts):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{texts} did not appear within {timeout} s; the screen shows:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
