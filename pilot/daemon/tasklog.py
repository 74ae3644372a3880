"""A task's full output, one file set per task under `$PILOT_HOME/logs/tasks/`, with a size cap.

Every line the task prints (stdout and stderr merged, stream-json events included) is appended
as it comes. The cap keeps the two ends, which say the most (what the agent was asked and how
it started; how it ended and why):

    <id>.log            the head: the first HEAD_BYTES of output
    <id>.tail-<n>.log   after that, parts of up to PART_BYTES each; only the last KEEP_PARTS are
                        kept, so the tail holds the last PART_BYTES to KEEP_PARTS * PART_BYTES

A part is only ever started on a line boundary, so a part can exceed its size by its last line.
With the defaults a task keeps its first 1 MiB and its last 4 to 8 MiB, at most ~9 MiB on disk.
`read_log` puts the pieces back together with one marker line where output was dropped; the
SQLite `log_tail` stays the short tail that `pilot task list` and the dashboard show.

`follow` is `pilot task log --follow`: everything so far, then new output as it is written,
across new parts, until the task has ended and nothing more is coming.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["HEAD_BYTES", "KEEP_PARTS", "PART_BYTES", "TaskLog", "follow", "log_files", "read_log", "task_log_dir"]

log = logging.getLogger(__name__)

HEAD_BYTES = 1024 * 1024
PART_BYTES = 4 * 1024 * 1024
KEEP_PARTS = 2
FOLLOW_POLL_SECONDS = 0.2
_PART = re.compile(r"^(\d+)\.tail-(\d+)\.log$")


def task_log_dir(home: Path) -> Path:
    return Path(home) / "logs" / "tasks"


def skipped_marker() -> bytes:
    """The line `read_log` and `follow` put where output was dropped."""
    tail = _amount(PART_BYTES * (KEEP_PARTS - 1), PART_BYTES * KEEP_PARTS)
    return f"[... output skipped: the log keeps the first {_amount(HEAD_BYTES)} and the last {tail} ...]\n".encode()


def _amount(*sizes: int) -> str:
    """Pure: "1 MiB", "4 to 8 MiB", "1000 to 2000 bytes"."""
    mib = 1024 * 1024
    unit, scale = ("MiB", mib) if all(size % mib == 0 for size in sizes) else ("bytes", 1)
    return " to ".join(str(size // scale) for size in sizes) + f" {unit}"


class TaskLog:
    """The writer: the daemon's side, one per running task. A failing disk disables it, never the task."""

    def __init__(self, directory: Path, task_id: int, *, head_bytes: int | None = None,
                 part_bytes: int | None = None, keep_parts: int | None = None) -> None:
        self.directory = Path(directory)
        self.task_id = task_id
        self.head_bytes = HEAD_BYTES if head_bytes is None else head_bytes
        self.part_bytes = PART_BYTES if part_bytes is None else part_bytes
        self.keep_parts = KEEP_PARTS if keep_parts is None else keep_parts
        self.part = 0  # 0: the head
        self.size = 0  # bytes in the current file
        self._file = None
        self.failed = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open(self.directory / f"{task_id}.log")
        except OSError as error:
            self._fail(error)

    def write_line(self, line: str) -> None:
        if self.failed:
            return
        data = (line + "\n").encode("utf-8", "replace")
        try:
            limit = self.head_bytes if self.part == 0 else self.part_bytes
            if self.size and self.size + len(data) > limit:
                self._next_part()
            self._file.write(data)
            self.size += len(data)
        except OSError as error:
            self._fail(error)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _open(self, path: Path) -> None:
        self.close()
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - held for the task's life; a follower reads it live
        self.size = self._file.tell()

    def _next_part(self) -> None:
        self.part += 1
        self._open(self.directory / f"{self.task_id}.tail-{self.part}.log")
        old = self.part - self.keep_parts
        if old >= 1:
            (self.directory / f"{self.task_id}.tail-{old}.log").unlink(missing_ok=True)

    def _fail(self, error: OSError) -> None:
        self.failed = True
        self.close()
        log.warning("task %s: its log file cannot be written (%s); its output is kept only as the short tail",
                    self.task_id, error.strerror or error)


def log_files(directory: Path, task_id: int) -> tuple[Path | None, list[tuple[int, Path]]]:
    """(the head if there is one, the kept tail parts in order)."""
    directory = Path(directory)
    head = directory / f"{task_id}.log"
    parts = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in directory.iterdir():
            match = _PART.match(path.name)
            if match and int(match.group(1)) == task_id:
                parts.append((int(match.group(2)), path))
    return (head if head.exists() else None), sorted(parts)


def read_log(directory: Path, task_id: int) -> bytes | None:
    """The task's kept output with a marker where some was dropped; None when it has no log file."""
    head, parts = log_files(directory, task_id)
    if head is None:
        return None
    return b"".join(_pieces(head, parts))


def _pieces(head: Path, parts: list[tuple[int, Path]]) -> list[bytes]:
    chunks = [_read(head)]
    if parts and parts[0][0] > 1:
        chunks.append(skipped_marker())
    return chunks + [_read(path) for _, path in parts]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # rotated away between the listing and the read
        return b""


def follow(directory: Path, task_id: int, *, finished: Callable[[], bool],
           poll: float = FOLLOW_POLL_SECONDS, sleep: Callable[[float], None] = time.sleep) -> Iterator[bytes]:
    """What `read_log` gives, then every new piece of output, until `finished()` and nothing more comes.

    Before the task starts there is no file: wait for it (or for `finished()`, e.g. a cancel)."""
    reader = _Follower(Path(directory), task_id)
    try:
        while True:
            done = finished()  # asked before reading: output written before the end is never missed
            chunk = reader.read()
            if chunk:
                yield chunk
            elif done:
                return
            else:
                sleep(poll)
    finally:
        reader.close()


class _Follower:
    """Reads the files a TaskLog writes, in order. It holds the current file open, so that a part rotated
    away while it is being read is still read to its end."""

    def __init__(self, directory: Path, task_id: int) -> None:
        self.directory = directory
        self.task_id = task_id
        self.part = -1  # -1: nothing read yet; 0: the head; n: tail part n
        self.stream = None

    def read(self) -> bytes:
        chunks = []
        while True:
            if self.stream is not None:
                chunks.append(self.stream.read())
            following = self._next()
            if following is None:
                return b"".join(chunks)
            if self.stream is not None:
                chunks.append(self.stream.read())  # what was written to this file before the next one began
                self.stream.close()
            part, path, skipped = following
            if skipped:
                chunks.append(skipped_marker())
            self.part, self.stream = part, _open(path)
            if self.stream is None:
                chunks.append(skipped_marker())

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def _next(self) -> tuple[int, Path, bool] | None:
        """The file after the current one, once it exists: (part, path, whether parts between were dropped)."""
        head, parts = log_files(self.directory, self.task_id)
        if self.part < 0:
            return None if head is None else (0, head, False)
        later = [(n, path) for n, path in parts if n > self.part]
        if not later:
            return None
        return later[0][0], later[0][1], later[0][0] != self.part + 1


def _open(path: Path):
    try:
        return open(path, "rb")  # kept open across reads, closed by _Follower
    except FileNotFoundError:  # dropped before we got to it: the next one says so
        return None
