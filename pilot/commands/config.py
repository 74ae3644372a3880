"""`pilot config show [--json]` and `pilot config check [--json]`."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from pilot.config import SECTIONS, read_config

SECRET_KEYS = frozenset({"notify.telegram_token", "notify.webhook_url"})  # a webhook's path is its password


def effective_values(reading) -> dict[str, dict]:
    """key -> {"value", "source"}, secrets shown only as set or not."""
    values = {}
    for name, section in SECTIONS.items():
        current = getattr(reading.config, name)
        for spec in fields(section):
            key = f"{name}.{spec.name}"
            value = getattr(current, spec.name)
            if isinstance(value, tuple):
                value = list(value)
            if key in SECRET_KEYS and value:
                value = "(set, hidden)"
            values[key] = {"value": value, "source": reading.sources[key]}
    return values


def show(args: argparse.Namespace) -> int:
    reading = read_config()
    values = effective_values(reading)
    if args.json:
        print(json.dumps({"home": str(reading.config.home), "config_file": str(reading.config.config_file),
                          "values": values}, indent=2))
        return 0
    file_note = "" if reading.config.config_file.exists() else " (not there: every value is a default)"
    print(f"home: {reading.config.home}\nconfig file: {reading.config.config_file}{file_note}")
    width = max(len(key) for key in values)
    for key, item in values.items():
        print(f"{key:{width}}  {shown(item['value'])}  [{item['source']}]")
    return 0


def shown(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(value)
    if isinstance(value, float) and value.is_integer():
        return f"{int(value)}s"
    return str(value)


def check(args: argparse.Namespace) -> int:
    """Everything the daemon and the updater would refuse, refused now: config.yaml, PILOT_* variables, notify."""
    import os

    from pilot.notify import Notifier
    from pilot.update import Settings

    reading = read_config()
    Settings.read(reading.config, os.environ)
    Notifier(reading.config)
    where = reading.config.config_file if reading.config.config_file.exists() else "the defaults"
    if args.json:
        print(json.dumps({"ok": True, "config_file": str(reading.config.config_file)}))
    else:
        print(f"ok: {where} and the PILOT_* environment are valid")
    return 0
