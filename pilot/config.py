"""config.yaml plus environment overrides -> a frozen Config.

    upgrade:
      manifest_url: https://.../stable/manifest.json
      channel: stable
      auto_check: true
      check_interval: 30m
      auto_upgrade_on_idle: false
      notify_channel: none   # telegram, webhook

Precedence: command-line flags (applied by the caller) > environment (PILOT_MANIFEST_URL)
> $PILOT_HOME/config.yaml > the manifest URL embedded at build time > defaults.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pilot.buildinfo import current_build
from pilot.errors import ConfigError
from pilot.launcher import pilot_home

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
NOTIFY_CHANNELS = ("none", "telegram", "webhook")
CHANNEL = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


@dataclass(frozen=True)
class UpgradeConfig:
    manifest_url: str | None = None
    channel: str = "stable"
    auto_check: bool = True
    check_interval: float = 1800.0
    auto_upgrade_on_idle: bool = False
    notify_channel: str = "none"


@dataclass(frozen=True)
class Config:
    home: Path
    upgrade: UpgradeConfig = field(default_factory=UpgradeConfig)

    @property
    def config_file(self) -> Path:
        return self.home / "config.yaml"

    def with_upgrade(self, **changes: Any) -> Config:
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, upgrade=replace(self.upgrade, **changes))


def parse_duration(value: Any, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = DURATION.match(str(value)) if isinstance(value, str) else None
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"{what}: {value!r} is not a duration like 30m, 2h or 90s")
    return float(match[1]) * UNITS[match[2]]


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{what}: expected true or false, got {value!r}")


def _string(value: Any, what: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError(f"{what}: expected text, got {value!r}")


def parse_upgrade(section: Any, base: UpgradeConfig, where: str) -> UpgradeConfig:
    if section is None:
        return base
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: 'upgrade' must be a mapping")
    known = {f for f in UpgradeConfig.__dataclass_fields__}
    unknown = sorted(str(k) for k in section if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key upgrade.{unknown[0]} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in section.items():
        what = f"{where}: upgrade.{key}"
        if key == "check_interval":
            values[key] = parse_duration(value, what)
        elif key in ("auto_check", "auto_upgrade_on_idle"):
            values[key] = _bool(value, what)
        elif key == "manifest_url":
            values[key] = None if value is None else _string(value, what)
        else:
            values[key] = _string(value, what)
    if "channel" in values and not CHANNEL.match(values["channel"]):
        raise ConfigError(f"{where}: upgrade.channel {values['channel']!r} is not a channel name")
    if values.get("notify_channel", "none") not in NOTIFY_CHANNELS:
        raise ConfigError(f"{where}: upgrade.notify_channel must be one of {', '.join(NOTIFY_CHANNELS)}")
    return replace(base, **values)


def load_config(env: dict[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    home = Path(pilot_home())
    build = current_build()
    upgrade = UpgradeConfig(manifest_url=build.manifest_url if build else None)
    path = home / "config.yaml"
    if path.exists():
        upgrade = parse_upgrade(_read_yaml(path).get("upgrade"), upgrade, str(path))
    if env.get("PILOT_MANIFEST_URL"):
        upgrade = replace(upgrade, manifest_url=env["PILOT_MANIFEST_URL"])
    return Config(home=home, upgrade=upgrade)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return document
