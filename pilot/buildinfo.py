"""What this running Pilot is: its version, build, archive and how it was installed.

Stdlib only and cheap: `pilot --version` and every other command import it, so it imports
neither dataclasses (inspect with it, ~7 ms) nor pathlib (~3.5 ms) until a BuildInfo is made.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple

from pilot.launcher import build_pythons, platform_tag, python_tag

SOURCE_VERSION = "0.1.0.dev0"

__all__ = ["BuildInfo", "current_build", "current_build_id", "current_version", "install_method", "platform_tag",
           "python_tag"]


class TrustedKey(namedtuple("TrustedKey", "keyid public")):
    """keyid: str; public: the raw 32-byte Ed25519 public key (bytes)."""

    __slots__ = ()


class BuildInfo(namedtuple("BuildInfo", "version python_tag platform_tag build_id archive trusted_keys threshold "
                                        "source_commit manifest_url root_keys root_threshold", defaults=((), 1))):
    """The metadata the build stamped into the archive's entry module (immutable).

    version, python_tag, platform_tag, build_id: str; archive: Path; trusted_keys: tuple[TrustedKey, ...];
    threshold: int; source_commit, manifest_url: str | None. python_tag is the interpreter the build runs as
    here: this one's, when the build supports it (an archive serves several), the build's oldest otherwise.
    trusted_keys and threshold are key set 1, the release keys that sign manifests; root_keys (tuple[TrustedKey,
    ...], empty in a build without them) and root_threshold are the keys that alone sign a later key set.
    """

    __slots__ = ()

    @classmethod
    def from_dict(cls, data: dict, archive) -> BuildInfo:
        def keys(name: str) -> tuple[TrustedKey, ...]:
            return tuple(TrustedKey(k["keyid"], bytes.fromhex(k["public"])) for k in data.get(name, ()))

        pythons = build_pythons(data)
        return cls(
            version=data["version"],
            python_tag=python_tag() if python_tag() in pythons else pythons[0],
            platform_tag=data["platform_tag"],
            build_id=data["build_id"],
            archive=archive,
            trusted_keys=keys("trusted_keys"),
            threshold=int(data.get("threshold", 1)),
            source_commit=data.get("source_commit"),
            manifest_url=data.get("manifest_url"),
            root_keys=keys("root_keys"),
            root_threshold=int(data.get("root_threshold", 1)),
        )


def build_data() -> dict | None:
    """The build's stamped metadata (`PILOT_BUILD` in the launcher module), or None outside an archive."""
    data = getattr(sys.modules.get("__main__"), "PILOT_BUILD", None)
    return data if isinstance(data, dict) else None


def current_build() -> BuildInfo | None:
    """The running archive's build, read from memory (the launcher module), or None outside an archive."""
    data = build_data()
    if data is None:
        return None
    from pathlib import Path

    main = sys.modules["__main__"]
    # The launcher names the archive when it runs from the unpacked copy (the sh preamble's fast path);
    # run from the archive itself, __main__ is the archive's __main__.py.
    archive = Path(getattr(main, "PILOT_ARCHIVE", None) or os.path.dirname(os.path.abspath(main.__file__)))
    return BuildInfo.from_dict(data, archive)


def current_build_id() -> str | None:
    """The running archive's build id, or None outside an archive: what the boot sentinel compares, without
    making a BuildInfo (pathlib) on the first start after an update."""
    data = build_data()
    return data["build_id"] if data is not None else None


def current_version() -> str:
    data = build_data()
    return data["version"] if data is not None else SOURCE_VERSION


def install_method() -> str:
    """pyz, pipx, uv, homebrew, source or pip: decides whether `self-update` may touch the install."""
    if build_data() is not None:
        return "pyz"
    package_dir = os.path.dirname(os.path.realpath(__file__))
    if os.path.isfile(os.path.join(os.path.dirname(package_dir), "pyproject.toml")):
        return "source"
    prefix = sys.prefix.replace(os.sep, "/")
    if "/pipx/venvs/" in prefix:
        return "pipx"
    if "/uv/tools/" in prefix:
        return "uv"
    if "/Cellar/" in prefix or "/homebrew/" in prefix.lower():
        return "homebrew"
    return "pip"
