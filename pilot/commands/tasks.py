"""`pilot task add|list` and `pilot status`: read and write the daemon's SQLite state directly.

Each reads the configuration first, so a broken config.yaml or an unusable PILOT_HOME is one
line with exit status 4 here too, not only when the daemon starts. These are the commands people
run all day: tests/test_import_sets.py holds each to its list of imports.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from pilot.buildinfo import current_version
from pilot.commands.config_cache import checked_home


def open_store():
    from pilot.state.store import open_store

    home = checked_home()  # the one check of PILOT_HOME and config.yaml every command shares
    return open_store(home, app_version=current_version())


def add(args: argparse.Namespace) -> int:
    store = open_store()
    try:
        task = store.add_task(args.title.strip(), tuple(args.command) if args.command else None)
    finally:
        store.close()
    if args.json:
        print(json.dumps(task_json(task)))
    else:
        print(f"queued task {task.id}: {task.title}")
    return 0


def list_tasks(args: argparse.Namespace) -> int:
    store = open_store()
    try:
        tasks = store.tasks(limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps([task_json(t) for t in tasks], indent=2))
        return 0
    if not tasks:
        print("no tasks yet: add one with `pilot task add TITLE [-- COMMAND ...]`")
        return 0
    print(f"{'id':>4}  {'status':11}  {'in':>8}  {'out':>8}  {'cost':>8}  title")
    for task in tasks:
        usage = task.usage
        reason = task.failure_reason
        print(f"{task.id:>4}  {task.status:11}  {usage.input_tokens:>8}  {usage.output_tokens:>8}  "
              f"${usage.cost_usd:>7.4f}  {task.title}" + (f"  ({reason})" if reason else ""))
    return 0


def status(args: argparse.Namespace) -> int:
    from pilot.daemon.lock import running_daemon
    from pilot.launcher import pilot_home, status_report

    store = open_store()
    try:
        totals = store.totals()
        running = store.running_tasks()
    finally:
        store.close()
    version = current_version()
    # What pilot.update.update_status() answers (the entry module's own report), without importing the
    # update engine (dataclasses and typing: ~10 ms); open_store() has checked PILOT_HOME already.
    last = status_report(version)
    daemon = running_daemon(pilot_home())
    info = {
        "version": version,
        "daemon_pid": daemon[0] if daemon else None,
        "daemon_version": daemon[1] if daemon else None,
        "tokens": {"input": totals.usage.input_tokens, "output": totals.usage.output_tokens,
                   "cache_read": totals.usage.cache_read_tokens, "cache_write": totals.usage.cache_write_tokens},
        "cost_usd": round(totals.usage.cost_usd, 6),
        "tasks": {"done": totals.done, "failed": totals.failed, "cancelled": totals.cancelled, "queued": totals.queued,
                  "running": totals.running, "interrupted": totals.interrupted},
        "running": [task_json(t) for t in running],
        "last_update": last if last["state"] != "none" else None,
        # The last verified check's word on this version (below the minimum, yanked or halted), which the entry
        # module's report reads from update/state.json's "standing" (pilot.update.state.remember_standing).
        "standing": last.get("standing"),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"pilot {version}, daemon {daemon_line(info)}")
    tokens = info["tokens"]
    print(f"tokens: {tokens['input']} in, {tokens['output']} out, {tokens['cache_read']} cache read, "
          f"{tokens['cache_write']} cache write; cost ${info['cost_usd']:.4f}")
    tasks = info["tasks"]
    print(f"tasks: {tasks['done']} done, {tasks['failed']} failed, {tasks['cancelled']} cancelled, "
          f"{tasks['running']} running, {tasks['queued']} queued, {tasks['interrupted']} interrupted")
    if info["last_update"]:
        print(f"last update: {last['state']} {last['from_version']} -> {last['to_version']} at {last['at'] or 'now'}")
    if info["standing"]:
        print(f"update: {info['standing']}")
    return 0


def daemon_line(info: dict) -> str:
    if not info["daemon_pid"]:
        return "not running (start it: pilot start)"
    line = f"running (pid {info['daemon_pid']})"
    running, installed = info["daemon_version"], info["version"]
    if running and running != installed:
        line += (f", still on {running}: pilot {installed} is installed and the daemon runs it after its next "
                 "upgrade or restart")
    return line


def task_json(task) -> dict:
    data = task.as_dict()
    data["command"] = list(task.command) if task.command else None
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    return data
