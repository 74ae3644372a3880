"""How the hot-path commands (status, task add|list|show|...) check the configuration: cheaply.

Every command reads the configuration first, so an unusable PILOT_HOME or a broken config.yaml
is one line with exit status 4. The full reading (pilot.config) costs ~25 ms of imports alone
(yaml ~12 ms, dataclasses and inspect ~7 ms), more than these commands' whole budget. So a
successful reading leaves a record in $PILOT_HOME/CACHE_NAME: the BLAKE2 digest of the exact
config.yaml bytes it validated, and what decides validity besides those bytes (this Pilot's
version and the files holding the rules). A later command whose config.yaml hashes the same, under
the same rules, needs no second reading; any other byte, or other code, is read and validated in full.
The digest, not the file's size and mtime: an edit within the clock's granularity keeps both.
"""

from __future__ import annotations

import contextlib
import os

from pilot.buildinfo import current_version
from pilot.launcher import home_problem, pilot_home, read_json, write_json

try:
    from _blake2 import blake2b  # hashlib's own BLAKE2, without hashlib's import of OpenSSL (~3 ms)
except ImportError:  # pragma: no cover - an interpreter built without it
    from hashlib import blake2b

CACHE_NAME = "config.checked.json"
CONFIG_NAME = "config.yaml"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULE_FILES = ("config.py", "launcher.py")  # pilot.config's checks, and the duration grammar they use


def checked_home() -> str:
    """PILOT_HOME, once it and its config.yaml are known to be usable (else ConfigError: exit 4)."""
    home = pilot_home()
    if home_problem(home) is None:
        try:
            with open(os.path.join(home, CONFIG_NAME), "rb") as stream:
                data = stream.read()
        except FileNotFoundError:
            return home  # no file: the defaults, which are valid
        except OSError:
            data = None  # a directory, unreadable...: the full reading says what is wrong
        record = record_for(data) if data is not None else None
        if record is not None and read_json(os.path.join(home, CACHE_NAME)) == record:
            return home
    return validate(home)


def validate(home: str) -> str:
    """The full reading (raises ConfigError); on success, the record that spares the next command one."""
    from pilot.config import read_config

    reading = read_config()
    record = record_for(reading.file_bytes) if reading.file_bytes is not None else None
    if record is not None:
        with contextlib.suppress(OSError):  # only a cache: a full disk costs the next command a reading
            write_json(os.path.join(home, CACHE_NAME), record, mode=0o600)
    return home


def record_for(data: bytes) -> dict | None:
    """What a reading of these config.yaml bytes by this Pilot concludes: that they are valid.
    None when the rules cannot be told apart (no source file to stat): then there is no cache."""
    found = rules()
    if found is None:
        return None
    return {"config_yaml_blake2b": blake2b(data, digest_size=32).hexdigest(), "rules": found}


def rules() -> list | None:
    """This Pilot's version and the files its checks live in (path, size, mtime_ns): a rebuild, reinstall
    or edit of the checks (the unpacked copy's path names its build) makes different rules."""
    found: list = [current_version()]
    for name in RULE_FILES:
        path = os.path.join(_PACKAGE, name)
        try:
            status = os.stat(path)
        except OSError:
            return None
        found.append([path, status.st_size, status.st_mtime_ns])
    return found
