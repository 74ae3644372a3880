"""config.yaml plus environment overrides -> a frozen Config.

    upgrade:
      manifest_url: https://.../stable/manifest.json
      channel: stable
      auto_check: true
      check_interval: 30m
      auto_upgrade_on_idle: false
      notify_channel: none          # none, telegram, webhook
      token_file: /etc/pilot/token  # a private release host's token, in a file of mode 600
      auth_header: Authorization    # sent as "Authorization: Bearer <token>"; another name gets the bare token
    daemon:
      concurrency: 1
      executor: claude -p --output-format stream-json --verbose
      drain_timeout: 10m            # how long a stop, or an upgrade, waits for running tasks
      idle_upgrade_after: 5m
    notify:
      telegram_token: "123:abc"
      telegram_chat_id: "42"
      telegram_api: https://api.telegram.org
      webhook_url: https://hooks.example.org/pilot

Precedence: command-line flags (applied by the caller) > environment (ENVIRONMENT: PILOT_MANIFEST_URL,
PILOT_UPDATE_TOKEN_FILE, PILOT_UPDATE_AUTH_HEADER) > $PILOT_HOME/config.yaml > the manifest URL embedded
at build time > defaults. `read_config` also says where each value came from (`pilot config show`).

The release host's token itself is never part of Config: it comes from PILOT_UPDATE_TOKEN (which wins
over upgrade.token_file) or from the token file, read by `release_auth` when the updater is made, never
from config.yaml or the manifest. Config holds only HIDDEN, so nothing that shows a Config shows it.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pilot.buildinfo import current_build
from pilot.errors import ConfigError
from pilot.launcher import HOME_HINT, home_problem, parse_seconds, pilot_home
from pilot.net import (
    AUTH_HEADER,
    AUTH_HEADER_ENV,
    MAX_TOKEN,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TOKEN_HINT,
    ReleaseAuth,
    header_name_problem,
    one_line,
    token_problem,
)

NOTIFY_CHANNELS = ("none", "telegram", "webhook")
CHANNEL = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
DEFAULT_EXECUTOR = ("claude", "-p", "--output-format", "stream-json", "--verbose")
HIDDEN = "(set, hidden)"  # a secret's only trace in Config, and what `pilot config show` says of it
# key -> the variable that overrides config.yaml's value
ENVIRONMENT = {"upgrade.manifest_url": "PILOT_MANIFEST_URL", "upgrade.token_file": TOKEN_FILE_ENV,
               "upgrade.auth_header": AUTH_HEADER_ENV}
TOKEN_FILE_CAP = 2 * MAX_TOKEN  # room for the longest token and blank lines around it; more is not a token file


def duration(default: float) -> Any:
    return field(default=default, metadata={"kind": "duration"})


@dataclass(frozen=True)
class UpgradeConfig:
    manifest_url: str | None = None
    channel: str = "stable"
    auto_check: bool = True
    check_interval: float = duration(1800.0)
    auto_upgrade_on_idle: bool = False
    notify_channel: str = "none"
    token_file: str | None = None  # absolute path of a file of mode 600 holding the release host's token
    auth_header: str = AUTH_HEADER  # the header that carries it
    token: str | None = field(default=None, metadata={"kind": "environment only"})  # HIDDEN or None


@dataclass(frozen=True)
class DaemonConfig:
    concurrency: int = 1
    executor: tuple[str, ...] = DEFAULT_EXECUTOR
    drain_timeout: float = duration(600.0)
    idle_upgrade_after: float = duration(300.0)


@dataclass(frozen=True)
class NotifyConfig:
    telegram_token: str | None = None
    telegram_chat_id: str | None = None
    telegram_api: str = "https://api.telegram.org"
    webhook_url: str | None = None


SECTIONS = {"upgrade": UpgradeConfig, "daemon": DaemonConfig, "notify": NotifyConfig}


@dataclass(frozen=True)
class Config:
    home: Path
    upgrade: UpgradeConfig = field(default_factory=UpgradeConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)

    @property
    def config_file(self) -> Path:
        return self.home / "config.yaml"

    def with_upgrade(self, **changes: Any) -> Config:
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, upgrade=replace(self.upgrade, **changes))


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a duration like 90s, 2m, 1.5h, 30d (the one grammar: pilot.launcher.parse_seconds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf"):
        return float(value)
    seconds = parse_seconds(value) if isinstance(value, str) else None
    if seconds is None:
        raise ConfigError(f"{what}: {value!r} is not a duration like 30m, 2h or 90s")
    return seconds


def _convert(value: Any, spec, what: str) -> Any:
    kind = spec.metadata.get("kind") or str(spec.type)
    if kind == "environment only":  # the value is not repeated: it may be the very token
        raise ConfigError(f"{what}: a token is never read from config.yaml", hint=TOKEN_HINT)
    if kind == "duration":
        return parse_duration(value, what)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{what}: expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64:
            return value
        raise ConfigError(f"{what}: expected a whole number from 1 to 64, got {value!r}")
    if kind == "tuple[str, ...]":
        try:
            words = shlex.split(value) if isinstance(value, str) else value
        except ValueError as error:  # unbalanced quotes
            raise ConfigError(f"{what}: {error} in {value!r}") from None
        if isinstance(words, list) and words and all(isinstance(w, str) and w for w in words):
            return tuple(words)
        raise ConfigError(f"{what}: expected a command line, got {value!r}")
    if value is None and "None" in kind:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    raise ConfigError(f"{what}: expected text, got {value!r}")


def parse_section(name: str, section: Any, base: Any, where: str) -> Any:
    if section is None:
        return base
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: '{name}' must be a mapping")
    specs = {spec.name: spec for spec in fields(base)}
    unknown = sorted(str(key) for key in section if key not in specs)
    if unknown:
        raise ConfigError(f"{where}: unknown key {name}.{unknown[0]} (known: {', '.join(sorted(specs))})")
    values = {key: _convert(value, specs[key], f"{where}: {name}.{key}") for key, value in section.items()}
    if "channel" in values and not CHANNEL.match(values["channel"]):
        raise ConfigError(f"{where}: upgrade.channel {values['channel']!r} is not a channel name")
    if values.get("notify_channel", "none") not in NOTIFY_CHANNELS:
        raise ConfigError(f"{where}: upgrade.notify_channel must be one of {', '.join(NOTIFY_CHANNELS)}")
    if name == "upgrade":
        check_auth_settings(values, lambda key: f"{where}: upgrade.{key}")
    return replace(base, **values)


def check_auth_settings(values: dict[str, Any], label: Callable[[str], str]) -> None:
    """The token file must be named absolutely (the daemon's working directory is anyone's guess), and the
    header must be one a token can travel in. `label(key)` names the setting: in config.yaml or a variable."""
    path = values.get("token_file")
    if path is not None and not os.path.isabs(path):
        raise ConfigError(f"{label('token_file')}: {one_line(path)!r} is not an absolute path")
    problem = header_name_problem(values.get("auth_header", AUTH_HEADER))
    if problem is not None:
        raise ConfigError(f"{label('auth_header')}: {problem}")


def load_config(env: dict[str, str] | None = None) -> Config:
    return read_config(env).config


@dataclass(frozen=True)
class ConfigReading:
    config: Config
    sources: dict[str, str]  # "upgrade.channel" -> default, build, file or environment (NAME)
    file_bytes: bytes | None = None  # config.yaml exactly as read and validated; None: there was none


def read_config(env: dict[str, str] | None = None) -> ConfigReading:
    """The effective configuration, and where each value came from (`pilot config show`)."""
    env = os.environ if env is None else env
    home = Path(pilot_home())
    check_home(home)
    build = current_build()
    config = Config(home=home, upgrade=UpgradeConfig(manifest_url=build.manifest_url if build else None))
    sources = {f"{name}.{spec.name}": "default" for name, section in SECTIONS.items() for spec in fields(section)}
    if build is not None and build.manifest_url:
        sources["upgrade.manifest_url"] = "build"
    path = home / "config.yaml"
    file_bytes = path.read_bytes() if path.exists() else None
    if file_bytes is not None:
        document = _parse_yaml(file_bytes, path)
        unknown = sorted(str(key) for key in document if key not in SECTIONS)
        if unknown:
            raise ConfigError(f"{path}: unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
        sections = {name: parse_section(name, document.get(name), getattr(config, name), str(path))
                    for name in SECTIONS}
        config = replace(config, **sections)
        sources.update({f"{name}.{key}": "file" for name in SECTIONS for key in (document.get(name) or {})})
    config = replace(config, upgrade=_from_environment(config.upgrade, env, sources))
    return ConfigReading(config, sources, file_bytes)


def _from_environment(upgrade: UpgradeConfig, env: Mapping[str, str], sources: dict[str, str]) -> UpgradeConfig:
    """The upgrade section with the ENVIRONMENT overrides applied (an empty variable is not set), and
    HIDDEN for a token in PILOT_UPDATE_TOKEN; `sources` says so."""
    changes = {}
    for key, name in ENVIRONMENT.items():
        if value := env.get(name, "").strip():
            changes[key.partition(".")[2]] = value
            sources[key] = f"environment ({name})"
    check_auth_settings(changes, lambda key: ENVIRONMENT[f"upgrade.{key}"])
    if env.get(TOKEN_ENV, "").strip():
        if "token_file" in changes:
            raise ConfigError(f"{TOKEN_ENV} and {TOKEN_FILE_ENV} are both set", hint="keep one of them")
        changes["token"] = HIDDEN
        sources["upgrade.token"] = f"environment ({TOKEN_ENV})"
    return replace(upgrade, **changes)


def release_auth(config: Config, manifest_url: str | None, env: Mapping[str, str] | None = None) -> ReleaseAuth | None:
    """The private release host's header for `manifest_url`'s host, or None: no token, or an offline manifest.

    PILOT_UPDATE_TOKEN wins over upgrade.token_file. The token is read now, when the updater is made, so a
    missing or unsafe file, or a token that could not be sent, is refused (exit 4) before any request."""
    env = os.environ if env is None else env
    token, where = env.get(TOKEN_ENV, "").strip(), TOKEN_ENV
    if not token:
        if config.upgrade.token_file is None:
            return None
        where = f"the token file {one_line(config.upgrade.token_file)}"
        token = read_token_file(config.upgrade.token_file).strip()  # a trailing newline is no part of it
    problem = token_problem(token)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}", hint=TOKEN_HINT)
    if not manifest_url or not manifest_url.lower().startswith(("https://", "http://")):
        return None  # --from-file: nothing is fetched
    return ReleaseAuth(manifest_url, token, config.upgrade.auth_header)


def read_token_file(path: str) -> str:
    """The file's text, refused like ssh refuses a private key that group or others can use."""
    shown = one_line(path)
    try:  # O_NONBLOCK: a FIFO in its place must not hang the daemon's start
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ConfigError(f"cannot read the token file {shown}: {error.strerror}", hint=TOKEN_HINT) from None
    try:
        info = os.fstat(fd)  # of the file opened, not of whatever the name points to a moment later
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the token file {shown} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(f"permissions {stat.S_IMODE(info.st_mode):04o} for the token file {shown} are too open: "
                              "group and others must have none", hint=f"chmod 600 {shown}")
        data = _read_up_to(fd, TOKEN_FILE_CAP + 1)
    finally:
        os.close(fd)
    if len(data) > TOKEN_FILE_CAP:
        raise ConfigError(f"the token file {shown} is larger than {TOKEN_FILE_CAP} bytes: not a token")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the token file {shown} is not UTF-8 text") from None


def _read_up_to(fd: int, limit: int) -> bytes:
    data = b""
    while len(data) < limit and (chunk := os.read(fd, limit - len(data))):
        data += chunk
    return data


def check_home(home: Path) -> None:
    """PILOT_HOME must be a directory Pilot can use: made when missing, else refused in one line (exit 4)."""
    problem = home_problem(str(home))
    if problem is not None:
        raise ConfigError(problem, hint=HOME_HINT)


def _parse_yaml(data: bytes, path: Path) -> dict:
    import yaml

    try:
        document = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except (yaml.YAMLError, ValueError, RecursionError) as error:  # PyYAML constructors raise the latter two
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return document
