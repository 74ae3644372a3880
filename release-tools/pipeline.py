"""The release pipeline: every step .github/workflows/release.yml runs, as one script.

The workflow's `run:` steps are calls of this script and nothing else, and
tests/release_tools/test_pipeline.py runs those very lines locally (a throwaway key, a
bare git repository for the gh-pages branch, a loopback HTTP server for Pages), so what
CI does on a tag is what the test suite checks on every change.

    pipeline.py tag-version --ref refs/tags/v1.2.3 [--github-output]
    pipeline.py pages-url   --repository OWNER/NAME [--override URL] [--github-output]
    pipeline.py write-key   --from-env VAR --kind public|private --out FILE
    pipeline.py pubkey      --key KEY --out PUB
    pipeline.py build       --version V --out DIR --public-key PUB [--public-key PUB ...] [--threshold N]
    pipeline.py restore     --site SITE --branch gh-pages [--remote origin]
    pipeline.py publish     --site SITE --channel stable --base-url URL (--private-key KEY | --private-key-env VAR) ...
                            [--expires-in 30d] [--version V] [--notes FILE] --artifacts DIR
    pipeline.py resign      --site SITE (--private-key KEY | --private-key-env VAR) ... [--expires-in 30d]
                            [--min-days 21]
    pipeline.py save        --site SITE --branch gh-pages [--remote origin] --message TEXT

`resign` is .github/workflows/resign.yml's: every channel of SITE signed again with a fresh expiry, each
checked first as `publish` checks the restored manifest, then verified with `release.py verify --min-days`.

`restore` and `save` keep the release tree (SITE, see release.py) on a git branch of the
repository the current directory belongs to: `restore` copies the branch's files into an
empty SITE (or starts an empty tree when the branch does not exist yet), `save` commits
SITE on top of what `restore` fetched and pushes without force, so two publishes racing
each other fail instead of one silently dropping the other's release.

Every command prints one line per problem to stderr and exits non-zero when anything fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "build"))
import toolenv  # noqa: E402

BUILD_SCRIPT = REPO / "build" / "build.py"
RELEASE_SCRIPT = REPO / "release-tools" / "release.py"
PRODUCT = "pilot"
TAG_PREFIX = "refs/tags/v"
SITE_REF = "refs/pilot/site-base/"  # where `restore` keeps the branch commit that `save` builds on
BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"


class PipelineError(Exception):
    """A refusal: printed as one line, exit status 1."""


# --- tag-version ------------------------------------------------------------------------------


def tag_version(args: argparse.Namespace) -> None:
    from pilot.errors import PilotError
    from pilot.update.manifest import parse_version

    ref = args.ref
    if not ref.startswith(TAG_PREFIX):
        raise PipelineError(f"{ref!r} is not a release tag (refs/tags/v<version>, e.g. refs/tags/v1.2.3)")
    text = ref[len(TAG_PREFIX):]
    try:
        version = parse_version(text, f"tag {ref}")
    except PilotError:
        raise PipelineError(f"tag {ref}: {text!r} is not a canonical PEP 440 version "
                            "(tag releases like v1.2.3, v2.0.0rc1 or v1.2.3.post1)") from None
    if str(version) != text:
        raise PipelineError(f"tag {ref}: {text!r} is not canonical; tag it v{version}")
    if args.github_output:
        github_output("version", str(version))
    print(version)


def github_output(name: str, value: str) -> None:
    output = os.environ.get("GITHUB_OUTPUT")
    if not output:
        raise PipelineError("--github-output: GITHUB_OUTPUT is not set (this flag is for GitHub Actions)")
    with open(output, "a", encoding="utf-8") as stream:
        stream.write(f"{name}={value}\n")


# --- pages-url --------------------------------------------------------------------------------


def pages_url(args: argparse.Namespace) -> None:
    """The URL GitHub Pages serves a repository's site at (https://OWNER.github.io/NAME, or the root for the
    repository OWNER.github.io), or the override (a custom domain) when one is set. Derived here rather than
    asked of an action: one third-party action and one permission fewer in the job that holds the key."""
    if args.override:
        url = args.override.rstrip("/")
        if not url.startswith(("https://", "http://")):
            raise PipelineError(f"--override {url!r}: give the site's URL, https://...")
    else:
        owner, _, name = args.repository.partition("/")
        if not owner or not name or "/" in name:
            raise PipelineError(f"--repository {args.repository!r}: expected OWNER/NAME (e.g. $GITHUB_REPOSITORY)")
        host = f"{owner.lower()}.github.io"
        url = f"https://{host}" if name.lower() == host else f"https://{host}/{name}"
    if args.github_output:
        github_output("base_url", url)
    print(url)


# --- keys -------------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """pilot.launcher.atomic_write (temp file beside, fsync, rename, fsync of the directory), refusals in one line."""
    from pilot.launcher import atomic_write

    try:
        atomic_write(path, data, mode)
    except OSError as error:
        raise PipelineError(f"cannot write {path}: {error.strerror}") from None


def write_key(args: argparse.Namespace) -> None:
    """Write a key held in an environment variable (a CI secret) to a file, checking what it is."""
    keyid = key_from_env(args.from_env, args.kind, args.out)
    print(f"{args.kind} key {keyid[:16]}... written to {args.out}")


def key_from_env(name: str, kind: str, out: Path) -> str:
    """The key PEM in environment variable `name` (a CI secret), checked to be an Ed25519 key of this kind and
    written to `out` (a private key 0600, never over an existing file); its keyid."""
    from pilot.update.signing import public_key_of
    from pilot.update.verify import load_public_key

    text = os.environ.get(name, "").strip()
    if not text:
        raise PipelineError(f"{name} is unset or empty (store the {kind} key PEM in that secret)")
    data = (text.replace("\r\n", "\n") + "\n").encode()
    try:  # never echo the value: it may be a private key in the wrong secret
        key = public_key_of(open_private_key(data, name)) if kind == "private" else load_public_key(data)
    except PipelineError:
        raise
    except Exception as error:
        raise PipelineError(f"{name} does not hold an Ed25519 {kind} key in PEM form "
                            f"({getattr(error, 'message', type(error).__name__)})") from None
    if kind == "private" and out.exists():
        raise PipelineError(f"{out} exists already; refusing to overwrite a signing key")
    write_file(out, data, mode=0o600 if kind == "private" else 0o644)
    return key.keyid


def open_private_key(data: bytes, name: str | Path):
    """The key in a PEM (name: the file or variable that holds it), read as release.py reads it (keys.py); an
    encrypted one (keygen --encrypt) with the passphrase in PILOT_KEY_PASSPHRASE, never asked: the pipeline runs
    where no one answers, and release.py, run by publish and resign, reads the same environment."""
    import keys

    try:
        return keys.read_private_key(data, name, prompt=False)
    except keys.KeyRefusal as error:  # no passphrase: its line names the key already
        raise PipelineError(error.one_line()) from None


def derive_public_key(private_path: Path, out: Path) -> str:
    from pilot.update.signing import public_key_of, public_key_pem

    try:
        private = open_private_key(private_path.read_bytes(), private_path)
    except OSError as error:
        raise PipelineError(f"cannot read key {private_path}: {error.strerror}") from None
    except PipelineError:
        raise
    except Exception as error:
        raise PipelineError(f"{private_path}: {getattr(error, 'message', error)}") from None
    write_file(out, public_key_pem(private))
    return public_key_of(private).keyid


def pubkey(args: argparse.Namespace) -> None:
    keyid = derive_public_key(args.key, args.out)
    print(f"keyid {keyid}")
    print(args.out)


# --- build ------------------------------------------------------------------------------------


def build(args: argparse.Namespace) -> None:
    command = [sys.executable, str(BUILD_SCRIPT), "--version", args.version, "--out", str(args.out),
               "--threshold", str(args.threshold)]
    for key in args.public_key:
        command += ["--trusted-key", str(key)]
    with tempfile.TemporaryDirectory(prefix="pilot-roots-") as scratch:
        roots = root_keys_from_env(args.root_keys_env, Path(scratch)) if args.root_keys_env else []
        if roots:
            command += [arg for root in roots for arg in ("--root-key", str(root))]
            command += ["--root-threshold", str(args.root_threshold)]
        elif args.root_keys_env:
            print(f"pipeline: {args.root_keys_env} is empty: the archive is built without root keys, so its release "
                  "keys also sign key sets (a stolen one could rotate the keys)", file=sys.stderr)
        result = run_tool(command, "build.py", capture=True)
    lines = result.stdout.strip().splitlines()
    archive = Path(lines[-1]) if lines else None
    if archive is None or not archive.is_file() or archive.parent.resolve() != args.out.resolve():
        raise PipelineError(f"build.py did not report an archive in {args.out}")
    smoke_test(archive, args.version)
    print(archive)


PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL)


def root_keys_from_env(name: str, scratch: Path) -> list[Path]:
    """The root public keys (PEM blocks, one after another) in an environment variable (a repository variable:
    public keys are no secret), each written to a file for build.py --root-key."""
    blocks = PEM_BLOCK.findall(os.environ.get(name, ""))
    paths = []
    for index, block in enumerate(blocks):
        path = scratch / f"root-{index}.pub"
        write_file(path, (block.replace("\r\n", "\n") + "\n").encode())
        paths.append(path)
    return paths


def smoke_test(archive: Path, version: str) -> None:
    """Run the archive's own self-test (it unpacks itself and loads every native library) under each interpreter
    it supports, found on PATH as python3.11, python3.12, ...: one archive serves them all, so each must run it."""
    from pilot.launcher import PUBLISHED_PYTHONS, dotted

    for tag in PUBLISHED_PYTHONS:
        name = f"python{dotted(tag)}"
        python = shutil.which(name)
        if python is None:
            raise PipelineError(f"{name} is not on PATH: the archive must be smoke-tested under every interpreter "
                                f"it supports ({', '.join(PUBLISHED_PYTHONS)})")
        with tempfile.TemporaryDirectory(prefix="pilot-smoke-") as scratch:
            env = {**os.environ, "PILOT_HOME": f"{scratch}/home", "SHIV_ROOT": f"{scratch}/shiv"}
            result = subprocess.run([python, str(archive), "debug", "self-test"], capture_output=True, text=True,
                                    timeout=300, env=env)
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()
        answer = result.stdout.strip().splitlines()[-1:] or [""]
        if result.returncode != 0 or f'"version": "{version}"' not in answer[0]:
            raise PipelineError(f"{archive.name} under {name}: the self-test exited {result.returncode}: "
                                f"{said[-1] if said else 'no output'} (expected version {version})")
        print(f"{archive.name}: self-test passed under {name}")


# --- publish ----------------------------------------------------------------------------------


def collect_artifacts(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise PipelineError(f"--artifacts {directory}: no such directory")
    found = sorted(p for p in directory.rglob("*.pyz") if p.is_file() and not p.name.startswith("."))
    if not found:
        raise PipelineError(f"no .pyz archives under {directory}")
    names = [p.name for p in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PipelineError(f"{duplicates[0]} appears more than once under {directory}")
    return found


def embedded_trust(archive: Path) -> tuple[set[str], int]:
    """The key ids and threshold an archive trusts, read with the client's own reader of its build metadata."""
    from pilot.errors import VerificationError
    from pilot.update.install import read_metadata

    try:
        meta = read_metadata(archive)
    except VerificationError as error:
        raise PipelineError(error.one_line()) from None
    try:
        return {k["keyid"] for k in meta.get("trusted_keys") or []}, int(meta.get("threshold", 1))
    except (KeyError, ValueError, TypeError):
        raise PipelineError(f"{archive.name}: not a Pilot archive (its trusted keys are unreadable)") from None


def check_signing_keys_trusted(archives: list[Path], keyids: list[str]) -> None:
    """An archive that does not trust the signing keys could never update again: refuse to ship it."""
    for archive in archives:
        trusted, threshold = embedded_trust(archive)
        usable = trusted & set(keyids)
        if len(usable) < threshold:
            raise PipelineError(
                f"{archive.name} trusts {len(usable)} of the signing key(s) and needs {threshold}: the public key "
                "it was built with does not match the private key (check the PILOT_RELEASE_PUBLIC_KEY and "
                "PILOT_RELEASE_SIGNING_KEY secrets)"
            )


def check_existing_manifest(site: Path, channel: str, public_paths: list[Path]) -> None:
    """The restored tree is input to signing: re-sign only a manifest these release keys signed before.

    Otherwise whoever can push to the branch could slip an entry into the next signed manifest. The
    check is the client's own (pilot.update.verify.verify_manifest) with the signing keys as the trust
    anchor, at the key set the manifest declares, every one of them required: so a manifest for another
    product or channel is refused too, and one key alone cannot get a manifest re-signed by all of them.
    Expiry is not checked: a manifest that lapsed since the last release is still ours.
    """
    from pilot.errors import PilotError
    from pilot.update.verify import KeySet, declared_keyset_version, load_public_key, verify_manifest

    path = site / channel / "manifest.json"
    if not path.exists():
        return
    try:
        data = path.read_bytes()
        signatures = path.with_name(path.name + ".sig").read_bytes()
    except OSError as error:
        raise PipelineError(f"cannot read {error.filename}: {error.strerror}") from None
    keys = tuple(load_public_key(p.read_bytes()) for p in public_paths)

    def no_rotation(version: int) -> tuple[bytes, bytes]:  # never called: the anchor is the set the manifest names
        raise PipelineError(f"the restored {channel} manifest: no key set {version} to walk to")

    try:
        anchor = KeySet(version=declared_keyset_version(data), threshold=len({k.keyid for k in keys}), keys=keys)
        verify_manifest(data, signatures, anchor=anchor, fetch_keyset=no_rotation, product=PRODUCT, channel=channel,
                        now=None)
    except PilotError as error:
        raise PipelineError(f"the restored {channel} manifest is not one these release keys signed for "
                            f"{PRODUCT} {channel}, refusing to sign over it ({error.one_line()})") from None


def lifetime(text: str) -> str:
    """--expires-in goes to release.py as given; checked here first (pilot.config.parse_duration), before any step."""
    from pilot.config import parse_duration
    from pilot.errors import ConfigError

    try:
        parse_duration(text, "manifest lifetime")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(error.one_line()) from None
    return text


def signing_keys(args: argparse.Namespace, scratch: str) -> tuple[list[Path], list[Path], list[str]]:
    """The signing keys of --private-key and --private-key-env (written 0600 into `scratch`, which the caller
    removes), their public halves beside them, and their key ids."""
    if not args.private_key and not args.private_key_env:
        raise PipelineError("give the signing key(s): --private-key FILE or --private-key-env VAR")
    private_keys = list(args.private_key)
    for index, name in enumerate(args.private_key_env):
        # Written into publish's own scratch directory for release.py: it is removed when publish ends.
        private_keys.append(Path(scratch) / f"signing-env-{index}.key")
        key_from_env(name, "private", private_keys[-1])
    public_paths, keyids = [], []
    for index, private_path in enumerate(private_keys):
        public_path = Path(scratch) / f"signing-{index}.pub"
        keyids.append(derive_public_key(private_path, public_path))
        public_paths.append(public_path)
    return private_keys, public_paths, keyids


def verify_command(site: Path, channel: str, public_paths: list[Path]) -> list[str]:
    command = [sys.executable, str(RELEASE_SCRIPT), "verify", "--root", str(site), "--channel", channel,
               "--threshold", str(len(public_paths))]
    for public_path in public_paths:
        command += ["--trusted-key", str(public_path)]
    return command


def publish(args: argparse.Namespace) -> None:
    archives = collect_artifacts(args.artifacts)
    with tempfile.TemporaryDirectory(prefix="pilot-pipeline-") as scratch:
        private_keys, public_paths, keyids = signing_keys(args, scratch)
        check_signing_keys_trusted(archives, keyids)
        check_existing_manifest(args.site, args.channel, public_paths)

        command = [sys.executable, str(RELEASE_SCRIPT), "publish", "--root", str(args.site),
                   "--channel", args.channel, "--base-url", args.base_url, "--expires-in", args.expires_in]
        for private_path in private_keys:
            command += ["--key", str(private_path)]
        if args.version:
            command += ["--version", args.version]
        if args.notes:
            command += ["--notes", str(args.notes)]
        run_tool([*command, *map(str, archives)], "release.py publish")
        run_tool(verify_command(args.site, args.channel, public_paths), "release.py verify")


def channels_of(site: Path) -> list[str]:
    found = sorted(p.parent.name for p in site.glob("*/manifest.json") if p.is_file())
    if not found:
        raise PipelineError(f"{site}: no channel to re-sign (no <channel>/manifest.json)")
    return found


def resign(args: argparse.Namespace) -> None:
    """Every channel signed again with a fresh expiry, so that none can lapse while no release comes."""
    with tempfile.TemporaryDirectory(prefix="pilot-pipeline-") as scratch:
        private_keys, public_paths, _ = signing_keys(args, scratch)
        channels = channels_of(args.site)
        for channel in channels:  # all of them checked before any is signed
            check_existing_manifest(args.site, channel, public_paths)
        for channel in channels:
            command = [sys.executable, str(RELEASE_SCRIPT), "resign", "--root", str(args.site), "--channel", channel,
                       "--expires-in", args.expires_in]
            for private_path in private_keys:
                command += ["--key", str(private_path)]
            run_tool(command, "release.py resign")
            run_tool([*verify_command(args.site, channel, public_paths), "--min-days", str(args.min_days)],
                     "release.py verify")
    print(f"re-signed {len(channels)} channel(s): {', '.join(channels)}")


# --- the release tree on a git branch ---------------------------------------------------------


def git(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True,
        capture: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, env=env, text=True, timeout=600,
                                capture_output=capture)
    except OSError as error:
        raise PipelineError(f"cannot run git: {error.strerror}") from None
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()
        raise PipelineError(f"git {args[0]} failed: {detail[-1] if detail else f'exit {result.returncode}'}")
    return result


def git_dir() -> Path:
    result = git("rev-parse", "--absolute-git-dir", check=False)
    if result.returncode != 0:
        raise PipelineError(f"{Path.cwd()} is not inside a git repository (run from the checkout)")
    return Path(result.stdout.strip())


def with_temporary_index(scratch: str) -> dict:
    return {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index")}


def restore(args: argparse.Namespace) -> None:
    repo = git_dir()
    site = args.site.resolve()
    if site.exists() and any(site.iterdir()):
        raise PipelineError(f"{args.site} is not empty; restore needs an empty directory")
    site.mkdir(parents=True, exist_ok=True)
    local_ref = SITE_REF + args.branch
    probe = git("ls-remote", "--exit-code", "--heads", args.remote, f"refs/heads/{args.branch}", check=False)
    if probe.returncode == 2:
        git("update-ref", "-d", local_ref, check=False)
        print(f"no {args.branch} branch on {args.remote} yet: starting an empty release tree in {args.site}")
        return
    if probe.returncode != 0:
        raise PipelineError(f"cannot list {args.remote}: {(probe.stderr or '').strip() or probe.returncode}")
    git("fetch", "--quiet", "--no-tags", "--depth", "1", args.remote, f"+refs/heads/{args.branch}:{local_ref}")
    with tempfile.TemporaryDirectory(prefix="pilot-pipeline-") as scratch:
        env = with_temporary_index(scratch)
        git(f"--git-dir={repo}", f"--work-tree={site}", "read-tree", local_ref, cwd=site, env=env)
        git(f"--git-dir={repo}", f"--work-tree={site}", "checkout-index", "--all", "--force", cwd=site, env=env)
    commit = git("rev-parse", local_ref).stdout.strip()
    count = sum(1 for p in site.rglob("*") if p.is_file())
    print(f"restored {count} file(s) from {args.remote} {args.branch} ({commit[:12]}) into {args.site}")


def save(args: argparse.Namespace) -> None:
    repo = git_dir()
    site = args.site.resolve()
    if not site.is_dir():
        raise PipelineError(f"{args.site}: no such directory")
    local_ref = SITE_REF + args.branch
    base = git("rev-parse", "--verify", "--quiet", local_ref + "^{commit}", check=False).stdout.strip() or None
    with tempfile.TemporaryDirectory(prefix="pilot-pipeline-") as scratch:
        env = with_temporary_index(scratch)
        # Dot files are partial writes or local litter, never part of the published tree.
        git(f"--git-dir={repo}", f"--work-tree={site}", "add", "--all", "--force", "--", ".",
            ":(exclude,glob)**/.*", ":(exclude,glob)**/.*/**", cwd=site, env=env)
        tree = git(f"--git-dir={repo}", "write-tree", env=env).stdout.strip()
    if base and git("rev-parse", base + "^{tree}").stdout.strip() == tree:
        print(f"{args.site} is unchanged since {base[:12]}: nothing to push")
        return
    env = dict(os.environ)
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", BOT_NAME)
        env.setdefault(f"GIT_{role}_EMAIL", BOT_EMAIL)
    parents = ["-p", base] if base else []
    commit = git("commit-tree", tree, *parents, "-m", args.message, env=env).stdout.strip()
    # No force: if the branch moved since `restore`, this fails and nothing is lost.
    git("push", "--quiet", args.remote, f"{commit}:refs/heads/{args.branch}")
    git("update-ref", local_ref, commit)
    print(f"pushed {args.site} to {args.remote} {args.branch} ({commit[:12]})")


# --- command line -----------------------------------------------------------------------------


def run_tool(command: list[str], name: str, capture: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(command, stdout=subprocess.PIPE if capture else None, text=True)
    if result.returncode != 0:
        raise PipelineError(f"{name} failed (exit {result.returncode})")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline.py", description="Pilot's release pipeline, step by step.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("tag-version", help="print the version a release tag names (refs/tags/v1.2.3 -> 1.2.3)")
    p.add_argument("--ref", required=True, help="the git ref, e.g. $GITHUB_REF")
    p.add_argument("--github-output", action="store_true", help="also append version=V to $GITHUB_OUTPUT")
    p.set_defaults(run=tag_version)

    p = commands.add_parser("pages-url", help="print the URL GitHub Pages serves the repository's site at")
    p.add_argument("--repository", required=True, help="OWNER/NAME, e.g. $GITHUB_REPOSITORY")
    p.add_argument("--override", default="", help="the site's URL when it has a custom domain (empty: derive it)")
    p.add_argument("--github-output", action="store_true", help="also append base_url=URL to $GITHUB_OUTPUT")
    p.set_defaults(run=pages_url)

    p = commands.add_parser("write-key", help="write a key from an environment variable (a CI secret) to a file")
    p.add_argument("--from-env", required=True, metavar="VAR")
    p.add_argument("--kind", choices=["public", "private"], required=True)
    p.add_argument("--out", type=Path, required=True, help="the file (a private key gets mode 0600)")
    p.set_defaults(run=write_key)

    p = commands.add_parser("pubkey", help="write the public key (PEM) of a private key")
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=pubkey)

    p = commands.add_parser("build", help="build this interpreter's archive into DIR and run it once")
    p.add_argument("--version", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--public-key", type=Path, action="append", required=True,
                   help="the release public key to embed; repeat for several")
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--root-keys-env", metavar="VAR",
                   help="an environment variable holding the root public keys (PEM blocks) to embed")
    p.add_argument("--root-threshold", type=lambda text: int(text) if text.strip() else 1, default=1,
                   help="root signatures a key set needs (default 1; empty: 1)")
    p.set_defaults(run=build)

    def tree_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--site", type=Path, required=True, help="the release tree directory")
        p.add_argument("--branch", default="gh-pages")
        p.add_argument("--remote", default="origin")

    p = commands.add_parser("restore", help="copy the release tree from a git branch into an empty SITE")
    tree_options(p)
    p.set_defaults(run=restore)

    p = commands.add_parser("publish", help="add every archive in DIR to SITE, sign, and verify the result")
    p.add_argument("--site", type=Path, required=True)
    p.add_argument("--channel", default="stable")
    p.add_argument("--base-url", required=True, help="the URL at which SITE is served")
    p.add_argument("--private-key", type=Path, action="append", default=[], help="signing key; repeat for several")
    p.add_argument("--private-key-env", metavar="VAR", action="append", default=[],
                   help="an environment variable holding a signing key PEM (a CI secret); repeat for several")
    p.add_argument("--expires-in", type=lifetime, default="30d",
                   help="manifest lifetime, e.g. 30d, 12h, 90m or 90s (default 30d)")
    p.add_argument("--version", help="the version every archive must carry (e.g. from tag-version)")
    p.add_argument("--notes", type=Path, help="release notes file")
    p.add_argument("--artifacts", type=Path, required=True, help="directory searched for .pyz archives")
    p.set_defaults(run=publish)

    p = commands.add_parser("resign", help="re-sign every channel of SITE with a fresh expiry, and verify each")
    p.add_argument("--site", type=Path, required=True)
    p.add_argument("--private-key", type=Path, action="append", default=[], help="signing key; repeat for several")
    p.add_argument("--private-key-env", metavar="VAR", action="append", default=[],
                   help="an environment variable holding a signing key PEM (a CI secret); repeat for several")
    p.add_argument("--expires-in", type=lifetime, default="30d", help="the new lifetime (default 30d)")
    p.add_argument("--min-days", type=float, default=21.0,
                   help="fail unless each channel then expires at least this many days ahead (default 21)")
    p.set_defaults(run=resign)

    p = commands.add_parser("save", help="commit SITE onto the branch restore fetched and push it")
    tree_options(p)
    p.add_argument("--message", required=True)
    p.set_defaults(run=save)
    return parser


def main() -> int:
    return toolenv.run_cli(__file__, build_parser, PipelineError, lambda args: f"pipeline: {args.command}")

if __name__ == "__main__":
    sys.exit(main())
