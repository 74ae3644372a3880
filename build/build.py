"""Build Pilot as one reproducible shiv archive.

    python build/build.py --version 1.2.3 --out dist/ [--trusted-key keys/release.pub ...]

Prints the archive's path as the last line of stdout. Two builds of the same commit
with the same inputs are byte-identical: dependencies come from the hash-pinned
build/requirements.lock, every timestamp is SOURCE_DATE_EPOCH (default: the commit
time), permissions are normalised, nothing names the build machine, and .pyc files are
compiled with unchecked hashes (no mtimes inside).

The archive is a shiv archive (shiv's bootstrap and environment.json, site-packages/)
whose __main__.py is pilot/launcher.py behind one generated `PILOT_BUILD = {...}` line,
with its bytecode beside it (__main__.pyc, for the interpreter it is built for); the same
metadata is stored as pilot-build.json for readers that use zipfile.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolenv

REPO = toolenv.REPO
RUNTIME_LOCK = toolenv.BUILD_DIR / "requirements.lock"
FALLBACK_EPOCH = 315532800  # 1980-01-01, the earliest time a zip member can carry
ENTRY_POINT = "pilot.cli:main"
SCHEMA = REPO / "manifest.schema.json"  # the one published schema; the package's copy is made from it
PACKAGED_SCHEMA = Path("pilot", "update", "manifest.schema.json")
SKIP_NAMES = {"__pycache__", ".DS_Store"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build Pilot as one reproducible .pyz archive.")
    parser.add_argument("--version", required=True, help="the release version (canonical PEP 440, e.g. 1.2.3)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the archive into")
    parser.add_argument(
        "--trusted-key", action="append", default=[], type=Path, metavar="PUB",
        help="Ed25519 public key (PEM) to embed as the update trust anchor; repeat for several",
    )
    parser.add_argument("--threshold", type=int, default=1, help="signatures required on a manifest (default 1)")
    parser.add_argument("--manifest-url", help="the default manifest URL the archive checks for updates")
    parser.add_argument("--overlay", type=Path, help=argparse.SUPPRESS)  # tests: files laid over site-packages
    return parser.parse_args()


def source_date_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    commit_time = git("log", "-1", "--format=%ct")
    return int(commit_time) if commit_time else FALLBACK_EPOCH


def git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def install_dependencies(site_packages: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "--only-binary=:all:",
         "--no-compile", "--target", str(site_packages), "-r", str(RUNTIME_LOCK)],
        check=True, env=toolenv.pip_environment(),
    )
    strip_machine_details(site_packages)


def strip_machine_details(site_packages: Path) -> None:
    """Remove what names the build machine: console scripts carry the build venv's shebang."""
    shutil.rmtree(site_packages / "bin", ignore_errors=True)
    for record in site_packages.glob("*.dist-info/RECORD"):
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(line for line in lines if not line.startswith(("../", "bin/"))))
    for direct_url in site_packages.glob("*.dist-info/direct_url.json"):
        direct_url.unlink()


def copy_pilot_sources(site_packages: Path) -> None:
    def ignore(_directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP_NAMES or n.endswith((".pyc", ".pyo"))}

    shutil.copytree(REPO / "pilot", site_packages / "pilot", ignore=ignore)
    # Not in git: whatever a checkout has there (a copy, a link), the archive gets the top-level file's bytes.
    packaged = site_packages / PACKAGED_SCHEMA
    packaged.unlink(missing_ok=True)
    packaged.write_bytes(SCHEMA.read_bytes())


def compile_bytecode(site_packages: Path) -> None:
    # Unchecked-hash pycs hold no source mtime (reproducible) and skip the source check at import (fast).
    ok = compileall.compile_dir(
        site_packages, quiet=2, stripdir=str(site_packages), prependdir="site-packages",
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH, workers=0,
    )
    if not ok:
        sys.exit("build: some modules do not compile")


def files_in(root: Path) -> list[Path]:
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def content_id(root: Path) -> str:
    """A hash of every path and byte under root: shiv's build id, so identical code shares one extraction."""
    digest = hashlib.sha256()
    for path in files_in(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def trusted_keys(paths: list[Path]) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from pilot.update.verify import load_public_key

    keys = [load_public_key(path.read_bytes()) for path in paths]
    return [{"keyid": key.keyid, "public": key.raw.hex()} for key in keys]


class ArchiveWriter:
    """Writes zip members with fixed timestamps and normalised permissions."""

    def __init__(self, zf: zipfile.ZipFile, epoch: int) -> None:
        self.zf = zf
        self.date_time = time.gmtime(max(epoch, FALLBACK_EPOCH))[:6]

    def add(self, name: str, data: bytes, executable: bool = False) -> None:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # unix, whatever the build machine
        info.external_attr = (0o100755 if executable else 0o100644) << 16
        self.zf.writestr(info, data, compresslevel=6)  # 9 costs twice the time for 1% smaller


def shiv_environment(build_id: str, epoch: int) -> bytes:
    import shiv
    from shiv.bootstrap.environment import Environment
    from shiv.constants import BUILD_AT_TIMESTAMP_FORMAT

    built_at = time.strftime(BUILD_AT_TIMESTAMP_FORMAT, time.gmtime(epoch))
    env = Environment(
        built_at=built_at, shiv_version=shiv.__version__, build_id=build_id, entry_point=ENTRY_POINT,
        compile_pyc=False, reproducible=True,
    )
    return env.to_json().encode()


def shiv_bootstrap_files() -> list[Path]:
    import shiv.bootstrap

    return sorted(p for p in Path(shiv.bootstrap.__file__).parent.iterdir() if p.suffix == ".py")


def write_archive(target: Path, site_packages: Path, metadata: dict, epoch: int) -> None:
    from pilot.launcher import METADATA_MEMBER

    launcher = (REPO / "pilot" / "launcher.py").read_text()
    # A Python literal, not JSON: JSON's null/true/false would be NameErrors in __main__.py.
    main_py = f"PILOT_BUILD = {dict(sorted(metadata.items()))!r}\n{launcher}"
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("wb") as out:
        out.write(f"#!/usr/bin/env python{sys.version_info[0]}.{sys.version_info[1]}\n".encode())
        with zipfile.ZipFile(out, "w") as zf:
            writer = ArchiveWriter(zf, epoch)
            for path in files_in(site_packages):
                relative = path.relative_to(site_packages).as_posix()
                writer.add(f"site-packages/{relative}", path.read_bytes(), os.access(path, os.X_OK))
            for path in shiv_bootstrap_files():
                writer.add(f"_bootstrap/{path.name}", path.read_bytes())
            writer.add("environment.json", shiv_environment(metadata["build_id"], epoch))
            writer.add(METADATA_MEMBER, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
            writer.add("__main__.py", main_py.encode())
            writer.add("__main__.pyc", entry_module_bytecode(main_py))
    partial.chmod(0o755)
    os.replace(partial, target)


def entry_module_bytecode(source: str) -> bytes:
    """__main__.pyc for the interpreter the archive is built for, which zipimport loads instead of compiling
    __main__.py on every start (~5 ms). Unchecked-hash: no mtime inside, so the build stays reproducible.
    Another interpreter refuses its magic number and compiles __main__.py: that is how it can still say
    "wrong interpreter"."""
    with tempfile.TemporaryDirectory(prefix="pilot-main-") as scratch:
        source_path, pyc = Path(scratch) / "__main__.py", Path(scratch) / "__main__.pyc"
        source_path.write_text(source)
        py_compile.compile(str(source_path), cfile=str(pyc), dfile="__main__.py", doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return pyc.read_bytes()


def build(args: argparse.Namespace) -> Path:
    sys.path.insert(0, str(REPO))
    from pilot.launcher import BOOT_PROTOCOL, artifact_name, platform_tag, python_tag
    from pilot.update.manifest import parse_version

    version = str(parse_version(args.version, "--version"))
    if args.trusted_key and not 1 <= args.threshold <= len(args.trusted_key):
        raise ValueError(f"--threshold {args.threshold} cannot be met by {len(args.trusted_key)} trusted key(s)")
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="pilot-build-") as stage:
        site_packages = Path(stage) / "site-packages"
        install_dependencies(site_packages)
        copy_pilot_sources(site_packages)
        if args.overlay:
            shutil.copytree(args.overlay, site_packages, dirs_exist_ok=True)
        compile_bytecode(site_packages)
        metadata = {
            "product": "pilot",
            "version": version,
            "python_tag": python_tag(),
            "platform_tag": platform_tag(),
            "build_id": content_id(site_packages),
            "source_commit": git("rev-parse", "HEAD"),
            "trusted_keys": trusted_keys(args.trusted_key),
            "threshold": args.threshold,
            "manifest_url": args.manifest_url,
            "entry_point": ENTRY_POINT,  # the entry module imports this, not a name of its own
            "boot_protocol": BOOT_PROTOCOL,  # what the entry module understands (see pilot.launcher)
        }
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / artifact_name(version, metadata["python_tag"], metadata["platform_tag"])
        write_archive(target, site_packages, metadata, epoch)
    return target.resolve()


def main() -> None:
    toolenv.reexec_in_tools_env(__file__)
    args = parse_args()
    try:
        target = build(args)
    except Exception as error:  # the build is a tool for people: one line, not a traceback
        if os.environ.get("PILOT_BUILD_DEBUG"):
            raise
        sys.exit(f"build: {getattr(error, 'message', None) or error}")
    print(target)


if __name__ == "__main__":
    main()
