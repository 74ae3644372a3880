"""What this running Pilot is: its version, build, archive and how it was installed.

Stdlib only and cheap: `pilot --version` and every other command import it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pilot.launcher import platform_tag, python_tag

SOURCE_VERSION = "0.1.0.dev0"

__all__ = ["BuildInfo", "current_build", "current_version", "install_method", "platform_tag", "python_tag"]


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    public: bytes  # raw 32-byte Ed25519 public key


@dataclass(frozen=True)
class BuildInfo:
    """The metadata the build stamped into the archive's entry module."""

    version: str
    python_tag: str
    platform_tag: str
    build_id: str
    archive: Path
    trusted_keys: tuple[TrustedKey, ...]
    threshold: int
    source_commit: str | None
    manifest_url: str | None

    @classmethod
    def from_dict(cls, data: dict, archive: Path) -> BuildInfo:
        keys = tuple(TrustedKey(k["keyid"], bytes.fromhex(k["public"])) for k in data.get("trusted_keys", ()))
        return cls(
            version=data["version"],
            python_tag=data["python_tag"],
            platform_tag=data["platform_tag"],
            build_id=data["build_id"],
            archive=archive,
            trusted_keys=keys,
            threshold=int(data.get("threshold", 1)),
            source_commit=data.get("source_commit"),
            manifest_url=data.get("manifest_url"),
        )


def current_build() -> BuildInfo | None:
    """The running archive's build, read from memory (the launcher module), or None outside an archive."""
    main = sys.modules.get("__main__")
    data = getattr(main, "PILOT_BUILD", None)
    if not isinstance(data, dict):
        return None
    # The launcher names the archive when it runs from the unpacked copy (the sh preamble's fast path);
    # run from the archive itself, __main__ is the archive's __main__.py.
    archive = Path(getattr(main, "PILOT_ARCHIVE", None) or os.path.dirname(os.path.abspath(main.__file__)))
    return BuildInfo.from_dict(data, archive)


def current_version() -> str:
    build = current_build()
    return build.version if build else SOURCE_VERSION


def install_method() -> str:
    """pyz, pipx, uv, homebrew, source or pip: decides whether `self-update` may touch the install."""
    if current_build() is not None:
        return "pyz"
    package_dir = Path(__file__).resolve().parent
    if (package_dir.parent / "pyproject.toml").is_file():
        return "source"
    prefix = Path(sys.prefix).as_posix()
    if "/pipx/venvs/" in prefix:
        return "pipx"
    if "/uv/tools/" in prefix:
        return "uv"
    if "/Cellar/" in prefix or "/homebrew/" in prefix.lower():
        return "homebrew"
    return "pip"
