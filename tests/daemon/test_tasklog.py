"""A task's log file: the head and the last parts are kept, read back in order, and followed live."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from pilot.daemon import tasklog
from pilot.daemon.tasklog import TaskLog, follow, log_files, read_log


def lines(first: int, last: int) -> list[str]:
    return [f"line {i:04d}" for i in range(first, last)]  # 10 bytes with the newline


def write(log: TaskLog, texts: list[str]) -> None:
    for text in texts:
        log.write_line(text)


def test_output_under_the_head_size_is_one_file_kept_whole(tmp_path):
    log = TaskLog(tmp_path / "tasks", 7, head_bytes=1000)
    write(log, ["café ☕", *lines(0, 10)])
    log.close()
    assert (tmp_path / "tasks" / "7.log").read_text(encoding="utf-8").splitlines() == ["café ☕", *lines(0, 10)]
    assert read_log(tmp_path / "tasks", 7) == (tmp_path / "tasks" / "7.log").read_bytes()
    assert log_files(tmp_path / "tasks", 7)[1] == []


def test_past_the_cap_the_head_and_the_last_parts_are_kept_with_a_marker_between(tmp_path):
    log = TaskLog(tmp_path, 3, head_bytes=100, part_bytes=200, keep_parts=2)
    write(log, lines(0, 100))  # 1000 bytes: a 100-byte head, then parts of 20 lines
    log.close()
    head, parts = log_files(tmp_path, 3)
    assert head.read_text().splitlines() == lines(0, 10)
    assert [(n, path.read_text().splitlines()) for n, path in parts] == [(4, lines(70, 90)), (5, lines(90, 100))]
    kept = read_log(tmp_path, 3).decode().splitlines()
    assert kept == [*lines(0, 10), tasklog.skipped_marker().decode().rstrip("\n"), *lines(70, 100)]
    total = sum(path.stat().st_size for path in tmp_path.iterdir())
    assert total <= 100 + 2 * 200


def test_a_part_starts_only_on_a_line_boundary_so_a_long_line_is_never_split(tmp_path):
    log = TaskLog(tmp_path, 1, head_bytes=50, part_bytes=50)
    write(log, ["short", "x" * 500, "after"])
    log.close()
    head, parts = log_files(tmp_path, 1)
    assert head.read_text() == "short\n"
    assert [path.read_text() for _, path in parts] == ["x" * 500 + "\n", "after\n"]


def test_the_default_cap_is_a_mebibyte_of_head_and_four_to_eight_of_tail():
    assert (tasklog.HEAD_BYTES, tasklog.PART_BYTES, tasklog.KEEP_PARTS) == (1 << 20, 4 << 20, 2)
    assert tasklog.skipped_marker() == (
        b"[... output skipped: the log keeps the first 1 MiB and the last 4 to 8 MiB ...]\n")


def test_a_log_that_cannot_be_written_is_given_up_with_one_warning_and_the_task_goes_on(tmp_path, caplog):
    blocker = tmp_path / "tasks"
    blocker.write_text("a file where the directory should be")
    log = TaskLog(blocker, 5)
    write(log, ["one", "two"])
    log.close()
    assert log.failed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("task 5: its log file cannot be written")
    assert read_log(blocker, 5) is None


def test_no_log_file_reads_as_none(tmp_path):
    assert read_log(tmp_path, 99) is None
    assert read_log(tmp_path / "missing", 99) is None


def test_follow_waits_for_the_start_then_streams_across_parts_until_the_task_ends(tmp_path):
    ended = threading.Event()
    written = lines(0, 300)

    def task() -> None:
        time.sleep(0.3)  # queued for a while: no file yet
        log = TaskLog(tmp_path, 9, head_bytes=200, part_bytes=400, keep_parts=3)
        for index, text in enumerate(written):
            log.write_line(text)
            if index % 25 == 0:
                time.sleep(0.02)
        log.close()
        ended.set()

    writer = threading.Thread(target=task)
    writer.start()
    got = b"".join(follow(tmp_path, 9, finished=ended.is_set, poll=0.01))
    writer.join()
    assert got.decode().splitlines() == written  # a follower that keeps up misses nothing, and sees no marker


def test_follow_of_a_finished_task_prints_what_is_kept_and_returns(tmp_path):
    log = TaskLog(tmp_path, 4, head_bytes=110, part_bytes=110, keep_parts=1)
    write(log, lines(0, 50))
    log.close()
    assert b"".join(follow(tmp_path, 4, finished=lambda: True)) == read_log(tmp_path, 4)
    assert b"".join(follow(tmp_path, 5, finished=lambda: True)) == b""  # never started (cancelled while queued)


def test_a_follower_that_falls_behind_says_where_output_was_dropped(tmp_path):
    log = TaskLog(tmp_path, 2, head_bytes=110, part_bytes=110, keep_parts=1)
    write(log, lines(0, 15))  # the head and part 1
    stream = follow(tmp_path, 2, finished=lambda: False, poll=0.01, sleep=lambda _: None)
    first = next(stream)
    assert first.decode().splitlines() == lines(0, 15)
    write(log, lines(15, 60))  # parts 2..5 while the follower sleeps; only 5 is kept
    log.close()
    rest = next(stream).decode().splitlines()
    assert tasklog.skipped_marker().decode().rstrip("\n") in rest
    assert rest[-1] == "line 0059"
    stream.close()


@pytest.mark.parametrize("task_id", [1, 12])
def test_parts_of_other_tasks_are_not_mixed_in(tmp_path, task_id):
    for other in (1, 12, 123):
        log = TaskLog(tmp_path, other, head_bytes=11, part_bytes=11)
        write(log, [f"task {other:03d}", f"more {other:03d}"])
        log.close()
    assert read_log(tmp_path, task_id).decode().splitlines() == [f"task {task_id:03d}", f"more {task_id:03d}"]
