"""Download progress: a rich bar on a terminal, a plain line every 10% otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pilot.update.install import Progress


@contextmanager
def download_progress(label: str, stream=None) -> Iterator[Progress]:
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), transient=True) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    shown = [-1]

    def plain(done: int, total: int) -> None:
        decile = done * 10 // total if total else 0
        if decile != shown[0]:
            shown[0] = decile
            print(f"{label}: {decile * 10}% of {total / 1e6:.1f} MB", file=stream, flush=True)

    yield plain
