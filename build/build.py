"""Build Pilot as one reproducible shiv archive for every supported CPython on this platform.

    python build/build.py --version 1.2.3 --out dist/ [--trusted-key keys/release.pub ...]
                          [--root-key keys/root-a.pub ... --root-threshold N]

Prints the archive's path (dist/pilot-1.2.3-linux_x86_64.pyz) as the last line of stdout.
One archive serves CPython 3.11, 3.12 and 3.13 (pilot.launcher.PUBLISHED_PYTHONS): the
pure-Python code as sources and cryptography's abi3 library once, the extension modules of
cffi and PyYAML once per minor version, and Pilot's own bytecode for each interpreter the
build finds (the file names say whose: pilot.launcher.interpreter_of). Each interpreter
unpacks only the shared files and its own, and compiles what the archive lacks for it when it
unpacks it (pilot.launcher.compile_for_interpreter); the dependencies compile as they are
first imported.

Two builds of the same commit with the same inputs are byte-identical: dependencies come
from the hash-pinned build/requirements.lock, every zip member carries the zip epoch
(1980-01-01) and the build time in shiv's environment.json is SOURCE_DATE_EPOCH (default:
the commit time), permissions are normalised, nothing names the build machine, and the one
.pyc (the entry module's) has an unchecked hash (no mtime inside). Between two releases,
another commit, a member that did not change is then byte-identical too, which is what a
delta update reuses.

The archive keeps its zip central directory tiny, because CPython reads all of it before
the first line of __main__ runs (2,286 entries cost 8-9 ms): it holds

    __main__.py(c)      pilot/launcher.py, verbatim, and its bytecode for the interpreter that builds it
                        (zipimport loads it in 0.4 ms instead of compiling 50 KiB of source; another
                        interpreter compiles the source)
    pilot_build.py(c)   the build's metadata as `PILOT_BUILD = {...}`, which the launcher imports
    pilot-build.json    the same metadata, for zip tools and readers that use zipfile
    environment.json    shiv's description of the build (build id, entry point)
    site-packages.zip   stored, not compressed: an inner zip of site-packages/ plus the two modules
                        again, which the launcher unpacks through a window on the file
                        (pilot.launcher.open_payload)

and begins with a POSIX sh preamble (pilot.launcher.PREAMBLE) that answers --version and
starts a warm unpacked copy without reading the zip at all; zip readers find the archive
from its end, so `python3 pilot.pyz` and `unzip` still work.
"""

from __future__ import annotations

import argparse
import hashlib
import io
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
    parser.add_argument(
        "--root-key", action="append", default=[], type=Path, metavar="PUB",
        help="Ed25519 public key (PEM) of a root key: only the root threshold may sign a later key set "
             "(keys/<n>.json), the trusted keys then sign only manifests; repeat for several",
    )
    parser.add_argument("--root-threshold", type=int, default=1,
                        help="root signatures required on a key set (default 1; with --root-key only)")
    parser.add_argument("--manifest-url", help="the default manifest URL the archive checks for updates")
    parser.add_argument("--overlay", type=Path, help=argparse.SUPPRESS)  # tests: files laid over site-packages
    # tests and benchmarks: another deflate level changes every member's bytes (a release sharing nothing)
    parser.add_argument("--compresslevel", type=int, default=6, choices=range(1, 10), help=argparse.SUPPRESS)
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


def install_dependencies(site_packages: Path, pythons: tuple[str, ...]) -> None:
    """The locked wheels for every interpreter in pythons (cp311, ...), merged into site_packages.

    pip fetches each minor version's wheels without that interpreter (--python-version); all but the
    extension modules of cffi and PyYAML are the same files, which the merge keeps once. A file that
    differs between versions and is not an extension module named for its version fails the build:
    the archive could not serve both."""
    from pilot.launcher import dotted

    stage = site_packages.with_name("per-python")
    installs = {tag: subprocess.Popen(  # at once: mostly waiting on the index and on the disk
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "--only-binary=:all:",
         "--no-compile", "--python-version", dotted(tag), "--target", str(stage / tag), "-r", str(RUNTIME_LOCK)],
        env=toolenv.pip_environment()) for tag in pythons}
    failed = [tag for tag, install in installs.items() if install.wait() != 0]
    if failed:
        raise RuntimeError(f"pip could not install the locked wheels for {', '.join(failed)}")
    for tag in pythons:
        strip_machine_details(stage / tag)
        drop_what_no_start_reads(stage / tag)
    merge_installs(stage, pythons, site_packages)
    shutil.rmtree(stage)


def merge_installs(stage: Path, pythons: tuple[str, ...], site_packages: Path) -> None:
    from pilot.launcher import interpreter_of

    placed: dict[str, bytes] = {}
    for tag in pythons:
        for path in files_in(stage / tag):
            relative = path.relative_to(stage / tag).as_posix()
            data = path.read_bytes()
            owner = interpreter_of(relative)
            if owner not in (None, tag):
                raise RuntimeError(f"the {tag} wheels hold {relative}, named for {owner}")
            if relative in placed:
                if placed[relative] != data:
                    raise RuntimeError(f"{relative} differs between interpreters: one archive cannot serve them")
                continue
            if owner is None and tag != pythons[0]:
                raise RuntimeError(f"{relative} is in the {tag} wheels only, and not named for {tag}")
            placed[relative] = data
            target = site_packages / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


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


# What no start reads: pip's bookkeeping and typing stubs. METADATA (importlib.metadata.version),
# entry_points.txt (plugins) and the licences stay. Every file costs 0.5-1 ms to create when a
# build is unpacked, on the first start or in an update's pre-flight.
PIP_ONLY = ("RECORD", "INSTALLER", "REQUESTED", "WHEEL", "top_level.txt")


def drop_what_no_start_reads(site_packages: Path) -> None:
    for dist_info in site_packages.glob("*.dist-info"):
        for name in PIP_ONLY:
            (dist_info / name).unlink(missing_ok=True)
    for path in list(site_packages.rglob("*")):
        if path.suffix == ".pyi" or path.name == "py.typed":
            path.unlink()


# Run by each interpreter: the launcher's own compile_for_interpreter, so the bytecode shipped is exactly what
# an interpreter would write when it unpacks the archive.
COMPILE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("pilot_launcher_for_build", sys.argv[1])
launcher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launcher)
launcher.compile_for_interpreter(sys.argv[2])
"""


def interpreters_for(tags: tuple[str, ...]) -> dict[str, str]:
    """tag -> an interpreter of that version (this one, or python3.X on PATH) that compiles Pilot's bytecode
    for the archive; an interpreter with none here compiles Pilot when it first unpacks the archive instead."""
    from pilot.launcher import dotted, python_tag

    found = {}
    for tag in tags:
        if python_tag() == tag and sys.executable:  # this very interpreter: no process to ask its version
            found[tag] = sys.executable
        elif (python := shutil.which(f"python{dotted(tag)}")) and _runs_as(python, tag):
            found[tag] = python
    return found


def _runs_as(python: str, tag: str) -> bool:
    try:  # a version manager's shim may exist on PATH and refuse a version that is not selected
        result = subprocess.run([python, "-c", "import sys; print('cp%d%d' % sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return result.returncode == 0 and result.stdout.strip() == tag


def compile_pilot(site_packages: Path, pythons: tuple[str, ...]) -> None:
    """Pilot's bytecode for each interpreter found (interpreters_for), beside its sources: the first start and
    an update's pre-flight then need not compile it (~0.2 s). Each interpreter unpacks only its own .pyc files
    (the cache tag in their names says whose: pilot.launcher.interpreter_of)."""
    from pilot.launcher import dotted

    found = interpreters_for(pythons)
    for tag in pythons:
        if tag not in found:
            print(f"build: no python{dotted(tag)} here: CPython {dotted(tag)} compiles Pilot when it first unpacks "
                  "the archive", file=sys.stderr)
            continue
        subprocess.run([found[tag], "-c", COMPILE, str(site_packages / "pilot" / "launcher.py"),
                        str(site_packages.parent)], check=True, timeout=600)


def check_sources_compile(site_packages: Path) -> None:
    """Pilot's own modules must compile, under the building interpreter at least (compile_pilot compiles them for
    the others it finds; an interpreter it lacked compiles them when it unpacks the archive)."""
    for source in sorted((site_packages / "pilot").rglob("*.py")):
        try:
            compile(source.read_bytes(), str(source.relative_to(site_packages)), "exec", dont_inherit=True)
        except SyntaxError as error:
            raise RuntimeError(f"{error.filename}:{error.lineno}: {error.msg}") from None


def files_in(root: Path) -> list[Path]:
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def content_id(root: Path, metadata: dict) -> str:
    """The build id: a hash of every path and byte under root and of the stamped metadata.

    The unpacked copy is shared by build id and holds the entry module with its PILOT_BUILD,
    so two archives that differ only in version or keys must not share one."""
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode() + b"\0")
    for path in files_in(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def trusted_keys(paths: list[Path]) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from pilot.update.verify import load_public_key

    keys = [load_public_key(path.read_bytes()) for path in paths]
    return [{"keyid": key.keyid, "public": key.raw.hex()} for key in keys]


def key_roles(args: argparse.Namespace) -> dict:
    """{"root_keys", "root_threshold"} for a build with --root-key, {} without (then key set 1 signs key sets too)."""
    if not args.root_key:
        if args.root_threshold != 1:
            raise ValueError("--root-threshold needs --root-key")
        return {}
    if not args.trusted_key:
        raise ValueError("--root-key needs --trusted-key: the release keys that sign the manifests")
    root = trusted_keys(args.root_key)
    if len({k["keyid"] for k in root}) != len(root):
        raise ValueError("a --root-key is given twice")
    if not 1 <= args.root_threshold <= len(root):
        raise ValueError(f"--root-threshold {args.root_threshold} cannot be met by {len(root)} root key(s)")
    if {k["keyid"] for k in root} & {k["keyid"] for k in trusted_keys(args.trusted_key)}:
        raise ValueError("a key is both a --root-key and a --trusted-key: root keys sign only key sets, "
                         "release keys only manifests")
    return {"root_keys": root, "root_threshold": args.root_threshold}


class ArchiveWriter:
    """Writes zip members with fixed timestamps and normalised permissions."""

    def __init__(self, zf: zipfile.ZipFile, level: int = 6) -> None:
        self.zf = zf
        self.level = level  # 6: 9 costs twice the time for 1% smaller
        # Every member carries the zip epoch, whatever the commit's time: a member's bytes then depend
        # on its content alone, so the next release, another commit, can reuse them (delta updates).
        self.date_time = time.gmtime(FALLBACK_EPOCH)[:6]

    def add(self, name: str, data: bytes, executable: bool = False, stored: bool = False) -> None:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        info.create_system = 3  # unix, whatever the build machine
        info.external_attr = (0o100755 if executable else 0o100644) << 16
        self.zf.writestr(info, data, compresslevel=None if stored else self.level)


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


def entry_modules(metadata: dict) -> list[tuple[str, str, bytes]]:
    """(name, source, bytecode) of the modules that run before site-packages is on the path: the launcher,
    verbatim, and the build's metadata as a module of its own. Kept apart, the launcher and its bytecode
    are byte-identical between releases that do not change it, which a delta update does not fetch."""
    from pilot.launcher import BUILD_MODULE

    launcher = (REPO / "pilot" / "launcher.py").read_text()
    # A Python literal, not JSON: JSON's null/true/false would be NameErrors.
    build_module = f"PILOT_BUILD = {dict(sorted(metadata.items()))!r}\n"
    return [(name, source, bytecode(source, name)) for name, source in
            (("__main__", launcher), (BUILD_MODULE, build_module))]


def payload(site_packages: Path, modules: list[tuple[str, str, bytes]], level: int) -> bytes:
    """The inner zip: what the launcher unpacks, a directory `python` can run (the sh preamble's fast path).

    Members that change least come first: a release moves the offsets of everything after a changed
    member, and so the central directory entries a delta update must fetch."""
    files = files_in(site_packages)
    own = [p for p in files if p.relative_to(site_packages).parts[0] == "pilot"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        writer = ArchiveWriter(zf, level)
        for path in [p for p in files if p not in own] + own:
            relative = path.relative_to(site_packages).as_posix()
            writer.add(f"site-packages/{relative}", path.read_bytes(), os.access(path, os.X_OK))
        for name, source, _code in modules:
            writer.add(f"{name}.py", source.encode())
    return buffer.getvalue()


def write_archive(target: Path, site_packages: Path, metadata: dict, epoch: int, level: int = 6) -> None:
    from pilot.launcher import METADATA_MEMBER, PAYLOAD_MEMBER, preamble

    modules = entry_modules(metadata)
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("wb") as out:
        out.write(preamble(metadata).encode())
        with zipfile.ZipFile(out, "w") as zf:
            writer = ArchiveWriter(zf, level)
            for name, source, code in modules:  # zipimport loads NAME.pyc from the archive's root,
                writer.add(f"{name}.py", source.encode())  # stored: inflating it would import zlib first
                writer.add(f"{name}.pyc", code, stored=True)
            writer.add(METADATA_MEMBER, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
            writer.add("environment.json", shiv_environment(metadata["build_id"], epoch))
            writer.add(PAYLOAD_MEMBER, payload(site_packages, modules, level), stored=True)
    partial.chmod(0o755)
    os.replace(partial, target)


def bytecode(source: str, name: str) -> bytes:
    """NAME.pyc for the interpreter the archive is built for, which zipimport loads instead of compiling the
    source on every start (the launcher: ~5 ms). Unchecked-hash: no mtime inside, so the build stays
    reproducible. Another interpreter refuses its magic number and compiles the source: that is how it
    can still say "wrong interpreter"."""
    with tempfile.TemporaryDirectory(prefix="pilot-main-") as scratch:
        source_path, pyc = Path(scratch) / f"{name}.py", Path(scratch) / f"{name}.pyc"
        source_path.write_text(source)
        py_compile.compile(str(source_path), cfile=str(pyc), dfile=f"{name}.py", doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return pyc.read_bytes()


def build(args: argparse.Namespace) -> Path:
    sys.path.insert(0, str(REPO))
    from pilot.launcher import BOOT_PROTOCOL, PUBLISHED_PYTHONS, artifact_name, platform_tag
    from pilot.update.manifest import parse_version

    version = str(parse_version(args.version, "--version"))
    if args.trusted_key and not 1 <= args.threshold <= len(args.trusted_key):
        raise ValueError(f"--threshold {args.threshold} cannot be met by {len(args.trusted_key)} trusted key(s)")
    roles = key_roles(args)
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="pilot-build-") as stage:
        site_packages = Path(stage) / "site-packages"
        install_dependencies(site_packages, PUBLISHED_PYTHONS)
        copy_pilot_sources(site_packages)
        if args.overlay:
            shutil.copytree(args.overlay, site_packages, dirs_exist_ok=True)
        drop_what_no_start_reads(site_packages)
        check_sources_compile(site_packages)
        compile_pilot(site_packages, PUBLISHED_PYTHONS)
        metadata = {
            "product": "pilot",
            "version": version,
            "python_tags": list(PUBLISHED_PYTHONS),  # every interpreter the archive runs under
            "python_tag": PUBLISHED_PYTHONS[0],  # the oldest: for readers from before python_tags
            "platform_tag": platform_tag(),
            "source_commit": git("rev-parse", "HEAD"),
            "trusted_keys": trusted_keys(args.trusted_key),
            "threshold": args.threshold,
            "manifest_url": args.manifest_url,
            "entry_point": ENTRY_POINT,  # the entry module imports this, not a name of its own
            "boot_protocol": BOOT_PROTOCOL,  # what the entry module understands (see pilot.launcher)
            **roles,  # only in a build with root keys: one without is stamped exactly as before they existed
        }
        metadata["build_id"] = content_id(site_packages, metadata)
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / artifact_name(version, metadata["platform_tag"])
        write_archive(target, site_packages, metadata, epoch, args.compresslevel)
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
