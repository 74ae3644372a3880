"""Pilot's release tool: keys, signed manifests and the static release tree.

    python release-tools/release.py keygen  --out DIR [--name NAME] [--encrypt]
    python release-tools/release.py publish --root SITE --channel stable --base-url URL --key KEY [--key KEY ...]
                                            [--expires-in 30d] [--notes FILE] [--version V] ARTIFACT...
                                            [--rollout PERCENT]
    python release-tools/release.py yank    --root SITE --channel stable --key KEY ... --reason TEXT VERSION
    python release-tools/release.py rollout --root SITE --channel stable --key KEY ... --percent N VERSION
    python release-tools/release.py halt    --root SITE --channel stable --key KEY ... VERSION
    python release-tools/release.py resume  --root SITE --channel stable --key KEY ... [--percent N] VERSION
    python release-tools/release.py min-supported --root SITE --channel stable --key KEY ... (VERSION | --clear)
    python release-tools/release.py prune   --root SITE --channel stable --key KEY ... --keep N [--delete-files]
    python release-tools/release.py resign  --root SITE --channel stable --key KEY ... [--expires-in 30d]
    python release-tools/release.py verify  --root SITE --channel stable --trusted-key PUB [...] [--threshold N]
                                            [--min-days N]
    python release-tools/release.py rotate-keys --root SITE --old-key KEY ... --new-key KEY ... --threshold N
                                            [--root-key ROOTKEY ...]
    python release-tools/release.py revoke  --root SITE --root-key ROOTKEY ... --release-key PUB ... [--threshold N]

The tree it writes can be served by any static server, object store or GitHub Releases:

    SITE/<channel>/manifest.json        the signed bytes
    SITE/<channel>/manifest.json.sig    {"signatures": [{"keyid", "sig"}]}: Ed25519 over those exact bytes
    SITE/<channel>/manifests/<serial>.json(.sig)  the same bytes and signatures under names that never change,
                                        the last SNAPSHOTS_KEPT signings: what a client verifies manifest.json with
    SITE/releases/<version>/pilot-<version>-<python tag>-<platform tag>.pyz
    SITE/keys/<n>.json(.sig)            key set n (n >= 2): the release keys that sign manifests, signed by
                                        the root threshold (archives built with --root-key) or by set
                                        n-1's threshold and its own (archives without root keys)
    SITE/<channel>/halted.json          publisher-side only, unsigned, read by no client: the rollout
                                        percentage each halted release had, for `resume`

Staged rollouts use only what every client's schema already has: `rollout_percent` (absent: 100)
stages a release, 0 halts it (no new install takes it; an install that runs it is told, and moved
to the newest good release when its daemon may), and `min_supported_version` makes the update of
every older install required. A manifest is at most pilot.update.manifest.MANIFEST_CAP bytes, the
cap every client reads it under: `publish` refuses more and warns past 75 % of it (`prune` then).

Every command prints one line per problem and exits non-zero when anything fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "build"))
import toolenv  # noqa: E402

PRODUCT = "pilot"
DEFAULT_LIFETIME = "30d"
EXPIRY_WARNING = timedelta(days=7)  # verify warns when a manifest expires sooner than this
HALTED_FILE = "halted.json"
LONGEST_LIFETIME = timedelta(days=3650)  # beyond this, expiry no longer defends against a frozen mirror
SNAPSHOTS_KEPT = 10  # immutable manifests kept per channel (SITE/<channel>/manifests/<serial>.json and .sig)


class ReleaseError(Exception):
    """A refusal: printed as one line, exit status 1."""


@dataclass(frozen=True)
class SignedFile:
    data: bytes
    signatures: bytes


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line too (exit status 2, as argparse has it), naming the command."""

    def error(self, message: str) -> None:
        command = self.prog.partition(" ")[2]
        self.exit(2, f"release: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def manifest_lifetime(text: str) -> timedelta:
    """--expires-in: Pilot's one duration syntax (pilot.config.parse_duration: 30d, 12h, 90m, 90s, 2m)."""
    from pilot.config import parse_duration
    from pilot.errors import ConfigError

    try:
        lifetime = timedelta(seconds=parse_duration(text, "manifest lifetime"))
    except ConfigError as error:
        raise argparse.ArgumentTypeError(error.one_line()) from None
    except OverflowError:
        lifetime = timedelta.max
    if lifetime > LONGEST_LIFETIME:
        raise argparse.ArgumentTypeError(f"manifest lifetime: {text!r} is longer than {LONGEST_LIFETIME.days} days")
    return lifetime


def now() -> datetime:
    override = os.environ.get("PILOT_RELEASE_NOW")  # tests: publish manifests issued in the past
    moment = datetime.fromtimestamp(int(override), UTC) if override else datetime.now(UTC)
    return moment.replace(microsecond=0)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """pilot.launcher.atomic_write (temp file beside, fsync, rename, fsync of the directory), refusals in one line."""
    from pilot.launcher import atomic_write

    try:
        atomic_write(path, data, mode)
    except OSError as error:
        raise ReleaseError(f"cannot write {path}: {error.strerror}") from None


def write_newer(path: Path, data: bytes) -> None:
    """write_atomically, the file dated at least a whole second after the one it replaces. nginx (and any server
    that derives them from the file) makes Last-Modified and the ETag from the mtime in whole seconds and the
    size: two signings within one second, or after the clock stepped back, would share them, and a client
    holding the first would be told 304 and keep it."""
    try:
        before = int(path.stat().st_mtime)
    except FileNotFoundError:
        before = None
    write_atomically(path, data)
    if before is not None and int(path.stat().st_mtime) <= before:
        os.utime(path, (before + 1, before + 1))


# --- keys -------------------------------------------------------------------------------------


def keygen(args: argparse.Namespace) -> None:
    import keys as key_roles

    from pilot.update.signing import generate_key, private_key_pem, public_key_of, public_key_pem

    private = generate_key()
    private_path = args.out / f"{args.name}.key"
    public_path = args.out / f"{args.name}.pub"
    if private_path.exists():
        raise ReleaseError(f"{private_path} exists already; refusing to overwrite a signing key")
    secret = key_roles.passphrase(private_path, new=True) if args.encrypt else None
    write_atomically(private_path, private_key_pem(private, secret), mode=0o600)
    write_atomically(public_path, public_key_pem(private))
    print(f"keyid {public_key_of(private).keyid}")
    print(f"private key {private_path} (mode 0600{', encrypted' if secret else ''}: keep it secret, e.g. in a CI "
          "secret, or offline for a root key)")
    print(f"public key  {public_path} (give it to build.py --trusted-key, or --root-key for a root key)")


def load_keys(paths: list[Path], load) -> list:
    """Each key file read with `load` (a private or public PEM loader); one line for the first that fails."""
    from keys import KeyRefusal

    keys = []
    for path in paths:
        try:
            keys.append(load(path.read_bytes()))
        except OSError as error:
            raise ReleaseError(f"cannot read key {path}: {error.strerror}") from None
        except KeyRefusal as error:  # its line names the key already
            raise ReleaseError(error.one_line()) from None
        except Exception as error:
            raise ReleaseError(f"{path}: {getattr(error, 'message', None) or error}") from None
    return keys


def load_signing_keys(paths: list[Path]):
    """Private keys; an encrypted one opened with PILOT_KEY_PASSPHRASE or a passphrase asked on the terminal."""
    import keys as key_roles

    return [load_keys([path], lambda pem, path=path: key_roles.read_private_key(pem, path))[0] for path in paths]


# --- the manifest -----------------------------------------------------------------------------


def manifest_path(root: Path, channel: str) -> Path:
    return root / channel / "manifest.json"


def read_manifest_document(root: Path, channel: str) -> dict | None:
    path = manifest_path(root, channel)
    if not path.exists():
        return None
    from pilot.update.manifest import parse_manifest

    data = path.read_bytes()
    parse_manifest(data)  # a broken tree is refused before anything is added to it
    return json.loads(data)


def check_against_schema(document: dict, what: str = "the new manifest") -> None:
    """The published schema (jsonschema) and the client's own parser must both accept it."""
    import jsonschema

    from pilot.update.manifest import parse_manifest

    schema = json.loads((REPO / "manifest.schema.json").read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(document), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(top)"
        raise ReleaseError(f"{what} fails manifest.schema.json at {where}: {errors[0].message}")
    data = encode_manifest(document)
    parse_manifest(data)
    check_size(data, what)


def check_size(data: bytes, what: str) -> None:
    """The one cap, the client's (pilot.update.manifest.MANIFEST_CAP): a manifest past it would never be read."""
    from pilot.update.manifest import MANIFEST_CAP

    if len(data) > MANIFEST_CAP:
        raise ReleaseError(f"{what} would be {len(data)} bytes, more than the {MANIFEST_CAP} bytes (1 MiB) a client "
                           "reads: remove old releases first (release.py prune --keep N)")


def warn_about_size(data: bytes, channel: str) -> None:
    from pilot.update.manifest import MANIFEST_CAP, MANIFEST_WARN_FRACTION

    if len(data) > MANIFEST_WARN_FRACTION * MANIFEST_CAP:
        print(f"warning: the {channel} manifest is {len(data)} bytes, {len(data) * 100 // MANIFEST_CAP}% of the "
              f"{MANIFEST_CAP} bytes a client reads: prune old releases soon (release.py prune --keep N)",
              file=sys.stderr)


def encode_manifest(document: dict) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def sign_and_write(root: Path, channel: str, document: dict, signing_keys: list) -> SignedFile:
    """Sign the document with these private keys (loaded once by the caller: an encrypted one asks once) and write
    it into the tree."""
    from pilot.update.signing import encode_signatures, sign
    from pilot.update.verify import parse_signatures, verify_threshold

    document["keyset_version"] = current_keyset_version(root)
    # An immutable name is never written twice: past a signing that died before its manifest.json, go on above it.
    document["serial"] = max(document["serial"], max(snapshot_serials(root, channel), default=0) + 1)
    check_against_schema(document)
    data = encode_manifest(document)
    signatures = encode_signatures([sign(key, data) for key in signing_keys])
    if document["keyset_version"] > 1:  # set 1 lives only inside the archives; later ones are published
        keyset = read_keyset(root, document["keyset_version"])
        verify_threshold(data, parse_signatures(signatures, "manifest.json.sig"), keyset, "the new manifest")
    path = manifest_path(root, channel)
    # First the immutable copy (manifests/<serial>.json and .sig, the signatures a current client fetches for the
    # serial it reads in manifest.json), then the mutable pair, signatures first, for installs from before: one
    # reading between the two writes sees old bytes under new signatures, refuses them and keeps what it has.
    snapshot = snapshot_file(root, channel, document["serial"])
    write_atomically(snapshot.with_name(snapshot.name + ".sig"), signatures)
    write_atomically(snapshot, data)
    write_newer(path.with_name(path.name + ".sig"), signatures)
    write_newer(path, data)
    prune_snapshots(root, channel)  # only now: the manifest.json that names the newest is in place
    warn_about_size(data, channel)
    return SignedFile(data, signatures)


def snapshot_file(root: Path, channel: str, serial: int) -> Path:
    """SITE/<channel>/manifests/<serial>.json: the manifest of that serial, never rewritten (its .sig beside it)."""
    from pilot.update.manifest import snapshot_path

    return root / channel / snapshot_path(serial)


def snapshot_serials(root: Path, channel: str) -> list[int]:
    """The serials whose immutable copy (or its signatures) lies in SITE/<channel>/manifests/."""
    from pilot.update.manifest import SNAPSHOTS

    names = (p.name.removesuffix(".sig") for p in (root / channel / SNAPSHOTS).glob("*.json*"))
    return sorted({int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit()})


def prune_snapshots(root: Path, channel: str, keep: int = SNAPSHOTS_KEPT) -> None:
    """Delete all but the `keep` newest immutable copies: a cache's manifest.json up to that many signings old
    still finds its signatures (docs/SCALE.md: its max-age must be shorter than that many signings apart)."""
    for serial in snapshot_serials(root, channel)[:-keep]:
        snapshot = snapshot_file(root, channel, serial)
        for path in (snapshot, snapshot.with_name(snapshot.name + ".sig")):
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise ReleaseError(f"cannot remove {path}: {error.strerror}") from None


def new_document(previous: dict | None, channel: str, expires_in: timedelta) -> dict:
    issued = now()
    document = dict(previous) if previous else {
        "schema_version": 1, "product": PRODUCT, "channel": channel, "serial": 0, "keyset_version": 1, "releases": [],
    }
    from pilot.update.manifest import format_timestamp

    document["serial"] = document["serial"] + 1
    document["issued_at"] = format_timestamp(issued)
    document["expires_at"] = format_timestamp(issued + expires_in)
    return document


# --- artifacts --------------------------------------------------------------------------------


def read_artifact_metadata(path: Path) -> dict:
    """The archive's build metadata through the client's own reader (pilot.update.install.read_metadata)."""
    from pilot.errors import VerificationError
    from pilot.update.install import read_metadata

    try:
        return read_metadata(path)
    except VerificationError as error:
        raise ReleaseError(error.one_line()) from None


def artifact_relpath(version: str, platform_tag: str) -> str:
    from pilot.launcher import artifact_name

    return f"releases/{version}/{artifact_name(version, platform_tag)}"


def delta_index_files(artifact: Path, relpath: str) -> list[tuple[str, bytes]]:
    """[(the listing's relpath, bytes), (the index's relpath, bytes)] for delta updates (pilot.update.delta)."""
    from pilot.update.delta import INDEX_SUFFIX, LISTING_SUFFIX, build_index
    from pilot.update.pieces import NotAZip

    try:
        index, listing = build_index(artifact, Path(relpath).name + LISTING_SUFFIX)
    except NotAZip as error:
        raise ReleaseError(f"{artifact}: cannot index it for delta updates ({error})") from None
    return [(relpath + LISTING_SUFFIX, listing), (relpath + INDEX_SUFFIX, index)]


def publish(args: argparse.Namespace) -> None:
    import installer
    from packaging.version import Version

    from pilot.launcher import build_pythons
    from pilot.update.delta import COALESCE_GAP, INDEX_SUFFIX
    from pilot.update.install import sha256_of
    from pilot.update.manifest import parse_version

    metas = [(path, read_artifact_metadata(path)) for path in args.artifacts]
    version = args.version or metas[0][1]["version"]
    parse_version(version, "release version")
    for path, meta in metas:
        if meta.get("version") != version:
            raise ReleaseError(f"{path}: the archive says version {meta.get('version')!r}, the release is {version}")
    platforms = [meta["platform_tag"] for _, meta in metas]
    if len(set(platforms)) != len(platforms):
        raise ReleaseError("two artifacts for the same platform")

    previous = read_manifest_document(args.root, args.channel)
    if previous:
        latest = max((Version(r["version"]) for r in previous["releases"]), default=None)
        if latest is not None and Version(version) <= latest:
            raise ReleaseError(f"version {version} is not higher than {latest}, the {args.channel} channel's latest")
    document = new_document(previous, args.channel, args.expires_in)
    base_url = args.base_url.rstrip("/")
    artifacts, indexes = [], {}
    for path, meta in metas:
        relpath = artifact_relpath(version, meta["platform_tag"])
        indexes[relpath] = delta_index_files(path, relpath)
        index = indexes[relpath][-1][1]  # the index (the listing comes first)
        entry = {
            "platform_tag": meta["platform_tag"], "url": f"{base_url}/{relpath}",
            "size": path.stat().st_size, "sha256": sha256_of(path), "build_id": meta["build_id"],
            "delta_index": {"url": f"{base_url}/{relpath}{INDEX_SUFFIX}", "size": len(index),
                            "sha256": hashlib.sha256(index).hexdigest(), "chunk_size": COALESCE_GAP},
        }
        # One archive serves every interpreter it names: listed once under each, the shape every client
        # already reads (a client's schema allows no new property), all entries naming the same bytes.
        artifacts += [{"python_tag": tag, **entry} for tag in build_pythons(meta)]
    release = {"version": version, "released_at": document["issued_at"], "artifacts": artifacts}
    if args.rollout != 100:
        release["rollout_percent"] = args.rollout
    if args.notes:
        release["notes"] = args.notes.read_text(encoding="utf-8")
    document["releases"] = [release, *document["releases"]]
    check_against_schema(document)  # before any file of the tree changes
    signing_keys = load_signing_keys(args.key)  # so is a key that cannot sign (loaded once: one passphrase prompt)
    script = installer_for(args.root, base_url, args.channel, metas)  # and an install.sh that cannot be written
    for path, meta in metas:
        relpath = artifact_relpath(version, meta["platform_tag"])
        write_atomically(args.root / relpath, path.read_bytes())
        for name, data in indexes[relpath]:  # beside it, before the manifest that signs them
            write_atomically(args.root / name, data)
    sign_and_write(args.root, args.channel, document, signing_keys)
    if script is not None:
        write_atomically(args.root / installer.INSTALLER, script, mode=0o644)
    staged = f", rolled out to {args.rollout}%" if args.rollout != 100 else ""
    print(f"published {version} to {args.channel} (serial {document['serial']}, {len(metas)} artifact(s){staged}, "
          f"expires {document['expires_at']})")
    print(manifest_path(args.root, args.channel))


def installer_for(root: Path, base_url: str, channel: str, metas: list[tuple[Path, dict]]) -> bytes | None:
    """install.sh for the site's root, trusting what a fresh client would: the key set that signs the manifest.
    None (and a line saying so) for archives that trust no key."""
    import installer
    import keys as key_roles

    from pilot.launcher import build_pythons

    version = current_keyset_version(root)
    # Set 1 is the one built into the archives; later ones are published under SITE/keys/.
    keyset = key_roles.embedded_keys(metas[0][1], metas[0][0]) if version == 1 else read_keyset(root, version)
    if keyset is None:  # such archives cannot verify an update either: nothing to install from here
        print("install.sh not written: the archives trust no signing key (built without --trusted-key)")
        return None
    keys, threshold = [(key.keyid, key.raw) for key in keyset.keys], keyset.threshold
    # Oldest first, the order install.sh is rendered from: sorted once here, where the archives' lists are merged.
    pythons = sorted({tag for _, meta in metas for tag in build_pythons(meta)}, key=lambda tag: int(tag[3:]))
    try:
        return installer.render(site=base_url, channel=channel, keys=keys, threshold=threshold, pythons=pythons)
    except ValueError as error:
        raise ReleaseError(f"--base-url {base_url}: {error}") from None


def next_document(args: argparse.Namespace) -> dict:
    """The channel's manifest, to be changed and signed again: serial raised, a fresh expiry."""
    previous = read_manifest_document(args.root, args.channel)
    if not previous:
        raise ReleaseError(f"no {args.channel} manifest under {args.root}")
    return new_document(previous, args.channel, args.expires_in)


def listed_release(document: dict, version: str, channel: str) -> dict:
    """The release entry of `version` (1.1 and 1.1.0 are one version), refused in one line when it is absent."""
    from packaging.version import InvalidVersion, Version

    try:
        wanted = Version(version)
    except InvalidVersion:
        raise ReleaseError(f"{version!r} is not a version") from None
    matches = [r for r in document["releases"] if Version(r["version"]) == wanted]
    if not matches:
        raise ReleaseError(f"version {version} is not in the {channel} manifest")
    return matches[0]


def yank(args: argparse.Namespace) -> None:
    document = next_document(args)
    listed_release(document, args.version, args.channel).update(yanked=True, yanked_reason=args.reason)
    sign_and_write(args.root, args.channel, document, load_signing_keys(args.key))
    print(f"yanked {args.version} from {args.channel} (serial {document['serial']})")


# --- rollout control --------------------------------------------------------------------------


def rollout_of(release: dict) -> int:
    return release.get("rollout_percent", 100)


def set_rollout(release: dict, percent: int) -> None:
    if percent == 100:
        release.pop("rollout_percent", None)  # absent means 100: the manifest stays as small as it can
    else:
        release["rollout_percent"] = percent


def halted_path(root: Path, channel: str) -> Path:
    return root / channel / HALTED_FILE


def read_halted(root: Path, channel: str) -> dict[str, int]:
    """{version: the percentage it had when halted}: publisher-side, unsigned; a damaged file reads as empty."""
    try:
        data = json.loads(halted_path(root, channel).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and type(v) is int and 1 <= v <= 100}


def write_halted(root: Path, channel: str, halted: dict[str, int]) -> None:
    path = halted_path(root, channel)
    if not halted:
        path.unlink(missing_ok=True)
        return
    write_atomically(path, (json.dumps(halted, indent=2, sort_keys=True) + "\n").encode())


def movable_release(args: argparse.Namespace, document: dict) -> dict:
    release = listed_release(document, args.version, args.channel)
    if release.get("yanked"):
        raise ReleaseError(f"{release['version']} is yanked: no client is offered it, whatever its rollout")
    return release


def rollout(args: argparse.Namespace) -> None:
    document = next_document(args)
    release = movable_release(args, document)
    before = rollout_of(release)
    set_rollout(release, args.percent)
    halted = read_halted(args.root, args.channel)
    halted.pop(release["version"], None)  # rolling a halted release out again resumes it
    sign_and_write(args.root, args.channel, document, load_signing_keys(args.key))
    write_halted(args.root, args.channel, halted)
    print(f"{release['version']} on {args.channel}: rolled out to {args.percent}% (was {before}%; "
          f"serial {document['serial']})")


def halt(args: argparse.Namespace) -> None:
    document = next_document(args)
    release = movable_release(args, document)
    if rollout_of(release) == 0:
        raise ReleaseError(f"{release['version']} is halted already (resume it: release.py resume {args.version})")
    halted = read_halted(args.root, args.channel)
    halted[release["version"]] = rollout_of(release)
    write_halted(args.root, args.channel, halted)  # first: resume can always find the percentage again
    set_rollout(release, 0)
    sign_and_write(args.root, args.channel, document, load_signing_keys(args.key))
    print(f"halted {release['version']} on {args.channel} (serial {document['serial']}): no new installs; "
          f"installs that run it are told so (it was at {halted[release['version']]}%: "
          f"release.py resume {release['version']})")


def resume(args: argparse.Namespace) -> None:
    document = next_document(args)
    release = movable_release(args, document)
    if rollout_of(release) != 0:
        raise ReleaseError(f"{release['version']} is not halted (it is rolled out to {rollout_of(release)}%)")
    halted = read_halted(args.root, args.channel)
    percent = args.percent or halted.get(release["version"], 100)
    set_rollout(release, percent)
    halted.pop(release["version"], None)
    sign_and_write(args.root, args.channel, document, load_signing_keys(args.key))
    write_halted(args.root, args.channel, halted)
    print(f"resumed {release['version']} on {args.channel}: rolled out to {percent}% (serial {document['serial']})")


def min_supported(args: argparse.Namespace) -> None:
    """Every install below VERSION must update before anything else; so a good release at or above it must exist."""
    from packaging.version import Version

    document = next_document(args)
    if args.clear:
        document.pop("min_supported_version", None)
        sign_and_write(args.root, args.channel, document, load_signing_keys(args.key))
        print(f"{args.channel}: no minimum supported version any more (serial {document['serial']})")
        return
    if args.version is None:
        raise ReleaseError("give the minimum supported VERSION, or --clear")
    from pilot.errors import PilotError
    from pilot.update.manifest import parse_version

    try:
        minimum = parse_version(args.version, "the minimum supported version")
    except PilotError as error:
        raise ReleaseError(error.one_line()) from None
    if not any(Version(r["version"]) >= minimum and good(r) for r in document["releases"]):
        raise ReleaseError(f"no release at or above {minimum} is on offer in {args.channel} (neither yanked nor "
                           "halted): installs below it would be told to update with nothing to update to")
    document["min_supported_version"] = str(minimum)
    sign_and_write(args.root, args.channel, document, load_signing_keys(args.key))
    print(f"{args.channel}: installs below {minimum} must update (serial {document['serial']})")


def good(release: dict) -> bool:
    return not release.get("yanked") and rollout_of(release) != 0


# --- prune ------------------------------------------------------------------------------------


def protected_versions(document: dict) -> set[str]:
    """What prune never removes: the latest release, the newest good one and the rollback target (the newest
    good release below it, where a client goes back to), and everything at or above min_supported_version."""
    from packaging.version import Version

    releases = sorted(document["releases"], key=lambda r: Version(r["version"]), reverse=True)
    kept = {releases[0]["version"]} if releases else set()
    good_ones = [r["version"] for r in releases if good(r)]
    kept.update(good_ones[:2])
    if "min_supported_version" in document:
        minimum = Version(document["min_supported_version"])
        kept.update(r["version"] for r in releases if Version(r["version"]) >= minimum)
    return kept


def prune(args: argparse.Namespace) -> None:
    from packaging.version import Version

    document = next_document(args)
    newest = sorted(document["releases"], key=lambda r: Version(r["version"]), reverse=True)
    kept = {r["version"] for r in newest[:args.keep]} | protected_versions(document)
    removed = [r for r in newest if r["version"] not in kept]
    if not removed:
        print(f"nothing to prune: {args.channel} lists {len(newest)} release(s), all kept")
        return
    document["releases"] = [r for r in document["releases"] if r["version"] in kept]
    # Before anything is signed: a channel whose manifest cannot be read is refused while the tree is untouched.
    listed = other_channels_listing(args.root, args.channel, removed) if args.delete_files else {}
    signed = sign_and_write(args.root, args.channel, document, load_signing_keys(args.key))
    print(f"pruned {len(removed)} release(s) from {args.channel}: {', '.join(r['version'] for r in removed)} "
          f"(serial {document['serial']}, {len(document['releases'])} kept, {len(signed.data)} bytes)")
    if args.delete_files:  # only now: no signed manifest points at a file that is gone
        for release in removed:
            delete_release_files(args.root, release, listed[release["version"]])


def other_channels_listing(root: Path, channel: str, releases: list[dict]) -> dict[str, list[str]]:
    """{version: the other channels whose manifest still lists it} for these releases, each channel's manifest
    read as every command reads its own (read_manifest_document): a broken one is refused in one line."""
    from pilot.errors import PilotError

    listed: dict[str, list[str]] = {release["version"]: [] for release in releases}
    for name in sorted(p.parent.name for p in root.glob("*/manifest.json") if p.parent.name != channel):
        try:
            document = read_manifest_document(root, name)
        except PilotError as error:
            raise ReleaseError(f"the {name} channel: {error.one_line()} (prune --delete-files reads every "
                               "channel's manifest; nothing was pruned)") from None
        for release in (document or {}).get("releases", []):
            if release["version"] in listed:
                listed[release["version"]].append(name)
    return listed


def delete_release_files(root: Path, release: dict, others: list[str]) -> None:
    """A pruned release's archives, delta indexes and listings, unless another channel (`others`) still lists it."""
    from pilot.update.delta import INDEX_SUFFIX, LISTING_SUFFIX

    version = release["version"]
    if others:
        print(f"kept the files of {version}: the {', '.join(sorted(others))} channel(s) still list it")
        return
    count = 0
    for platform in sorted({a["platform_tag"] for a in release["artifacts"]}):
        relpath = artifact_relpath(version, platform)
        for name in (relpath, relpath + INDEX_SUFFIX, relpath + LISTING_SUFFIX):
            path = root / name
            if path.is_file():
                path.unlink()
                count += 1
    directory = root / "releases" / version
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    print(f"deleted {count} file(s) of {version} from {root / 'releases'}")


def resign(args: argparse.Namespace) -> None:
    document = next_document(args)
    sign_and_write(args.root, args.channel, document, load_signing_keys(args.key))
    print(f"re-signed {args.channel} (serial {document['serial']}, expires {document['expires_at']})")


# --- key rotation -----------------------------------------------------------------------------


def current_keyset_version(root: Path) -> int:
    """The newest key set published under SITE/keys/ (1, the set built into the archives, when none is)."""
    versions = [int(p.stem) for p in (root / "keys").glob("*.json") if p.stem.isdigit()]
    return max(versions, default=1)


def read_keyset_files(root: Path, version: int) -> tuple[bytes, bytes]:
    from pilot.update.verify import keyset_path

    path = root / keyset_path(version)
    try:
        return path.read_bytes(), path.with_name(path.name + ".sig").read_bytes()
    except OSError as error:
        raise ReleaseError(f"cannot read {error.filename}: {error.strerror}") from None


def read_keyset(root: Path, version: int):
    from pilot.update.verify import keyset_path, parse_keyset

    return parse_keyset(read_keyset_files(root, version)[0], keyset_path(version))


def rotate_keys(args: argparse.Namespace) -> None:
    """Publish key set n+1, signed by the old keys (set n's threshold) and the new ones (its own), and with
    --root-key by the root keys too, so that archives with and without root keys both follow it."""
    import keys as key_roles

    from pilot.update.signing import public_key_of
    from pilot.update.verify import KeySet

    old, new = key_roles.unique(load_signing_keys(args.old_key)), key_roles.unique(load_signing_keys(args.new_key))
    root_private = load_signing_keys(args.root_key or [])
    roots, _ = key_roles.roots_to_check(args.root, root_private)
    if roots and not root_private:
        raise ReleaseError(f"archives under {args.root / 'releases'} were built with root keys: they accept a key set "
                           "only under the root threshold (give --root-key, or use revoke)")
    current = current_keyset_version(args.root)
    if current > 1:
        previous = read_keyset(args.root, current)
    else:  # set 1 is inside the archives: every old key given must be one of it, and they must meet its threshold
        previous = KeySet(version=1, threshold=len(old), keys=tuple(public_key_of(k) for k in old))
    successor = KeySet(version=current + 1, threshold=args.threshold, keys=tuple(public_key_of(k) for k in new))
    key_roles.check_roles(successor.keys, roots)
    data = key_roles.keyset_bytes(successor, PRODUCT)
    signatures = key_roles.sign_keyset(data, old + new + root_private)
    key_roles.check_link(previous, data, signatures, roots=roots, legacy=True)  # what every client checks
    path = write_keyset(args.root, successor, data, signatures)
    removed = key_roles.removed_keys(previous, successor)
    print(f"published key set {successor.version}: {len(successor.keys)} key(s), threshold {successor.threshold}"
          + (f", {len(removed)} key(s) revoked" if removed else "")
          + (f", signed by {len(key_roles.unique(root_private))} root key(s) too" if root_private else ""))
    print("sign from now on with the new keys, and re-sign every channel now (resign) so clients move to this set")
    print(path)


def revoke(args: argparse.Namespace) -> None:
    """Publish key set n+1 with new release keys, signed by the root keys alone: the answer to a stolen release key
    (none of the old release keys signs it). Archives with root keys follow it on their next check."""
    import keys as key_roles

    from pilot.update.verify import load_public_key

    root_private = key_roles.unique(load_signing_keys(args.root_key))
    release = tuple(load_keys(args.release_key, load_public_key))
    current = current_keyset_version(args.root)
    previous = read_keyset(args.root, current) if current > 1 else None
    successor, data, signatures, without = key_roles.revocation(args.root, current, previous, release, args.threshold,
                                                                 root_private, PRODUCT)
    path = write_keyset(args.root, successor, data, signatures)
    if without:
        print(f"warning: {without} archive(s) under {args.root / 'releases'} have no root keys: their installs cannot "
              "follow this set until they update to a build with --root-key", file=sys.stderr)
    removed = key_roles.removed_keys(previous, successor)
    gone = (f"revoked {', '.join(k[:16] + '...' for k in removed)}" if removed else
            "key set 1, the release keys inside the archives, is replaced" if previous is None else "no key revoked")
    print(f"published key set {successor.version}: {len(successor.keys)} release key(s), threshold "
          f"{successor.threshold}, signed by {len(root_private)} root key(s); {gone}")
    print("re-sign every channel now with the new release keys (resign --key ...): clients follow this set on their "
          "next check and refuse manifests signed by any other key")
    print(path)


def write_keyset(root: Path, keyset, data: bytes, signatures: bytes) -> Path:
    """keys/<n>.json and its .sig (the signatures first: a client reading between the two sees no set n yet),
    then install.sh's release keys, which must be the ones that sign the manifests from now on."""
    import installer

    from pilot.update.verify import keyset_path

    path = root / keyset_path(keyset.version)
    write_atomically(path.with_name(path.name + ".sig"), signatures)
    write_atomically(path, data)
    script = root / installer.INSTALLER
    if script.is_file():
        try:
            rewritten = installer.with_keys(script.read_bytes(), [(k.keyid, k.raw) for k in keyset.keys],
                                            keyset.threshold)
        except ValueError as error:
            raise ReleaseError(str(error)) from None
        write_atomically(script, rewritten, mode=0o644)
    return path


# --- verify -----------------------------------------------------------------------------------


def verify(args: argparse.Namespace) -> None:
    """What a fresh client trusting these keys would accept (pilot.update.verify.verify_manifest), then more:
    the published schema judged by jsonschema, and every artifact in the tree against its signed entry."""
    from pilot.errors import PilotError
    from pilot.update.verify import KeySet, load_public_key, verify_manifest

    path = manifest_path(args.root, args.channel)
    try:
        data = path.read_bytes()
        signatures = (path.with_name(path.name + ".sig")).read_bytes()
    except OSError as error:
        raise ReleaseError(f"cannot read {error.filename}: {error.strerror}") from None
    keys = load_keys(args.trusted_key, load_public_key)
    roots = tuple(load_keys(args.root_key, load_public_key))  # a client built with root keys trusts these too
    root = KeySet(version=1, threshold=args.root_threshold, keys=roots) if roots else None
    try:
        anchor = KeySet(version=1, threshold=args.threshold, keys=tuple(keys), root=root)
        manifest = verify_manifest(
            data, signatures, anchor=anchor, fetch_keyset=lambda n: read_keyset_files(args.root, n),
            product=PRODUCT, channel=args.channel, now=now()).manifest
    except PilotError as error:
        raise ReleaseError(error.one_line()) from None
    check_against_schema(json.loads(data), f"{args.channel}/manifest.json")
    check_expiry(manifest.expires_at, args.channel, args.min_days)
    archives: dict[str, list] = {}  # one archive is listed under every interpreter it serves: its entries by URL
    for release in manifest.releases:
        for artifact in release.artifacts:
            archives.setdefault(artifact.url, []).append((str(release.version), artifact))
    for entries in archives.values():
        check_archive(args.root, entries)
    print(f"ok: {args.channel} serial {manifest.serial}, {len(manifest.releases)} release(s), "
          f"{len(archives)} artifact(s) match their signed size and sha256")


def check_expiry(expires_at: datetime, channel: str, min_days: float) -> None:
    """Past --min-days a refusal, within EXPIRY_WARNING a warning: an expiry must never lapse unnoticed."""
    from pilot.update.manifest import format_timestamp

    left = expires_at - now()
    days = left.total_seconds() / 86400
    when = f"{channel}/manifest.json expires at {format_timestamp(expires_at)}, in {days:.1f} days"
    if left < timedelta(days=min_days):
        raise ReleaseError(f"{when}, fewer than --min-days {min_days:g}: re-sign it now (release.py resign)")
    if left < EXPIRY_WARNING:
        print(f"warning: {when}: re-sign it before then (release.py resign)", file=sys.stderr)


def check_archive(root: Path, entries: list) -> None:
    """One archive and each (version, artifact) entry that lists it: the file's size and sha256 are read once and
    each delta index it is signed with checked once, while every entry's own signed values and the cheap metadata
    check (version, interpreter and platform, build id) are judged entry by entry."""
    from pilot.errors import VerificationError
    from pilot.update.install import check_metadata, sha256_of

    measured: dict[Path, tuple[int, str]] = {}
    indexes: set = set()
    for version, artifact in entries:
        relpath = artifact_relpath(version, artifact.platform_tag)
        if not artifact.url.endswith("/" + relpath):
            raise ReleaseError(f"{version}: artifact URL {artifact.url} does not point at {relpath}")
        path = root / relpath
        if path not in measured:
            if not path.is_file():
                raise ReleaseError(f"{relpath}: missing from the release tree")
            measured[path] = path.stat().st_size, sha256_of(path)
        size, digest = measured[path]
        if size != artifact.size:
            raise ReleaseError(f"{relpath}: {size} bytes, the manifest signs {artifact.size}")
        if digest != artifact.sha256:
            raise ReleaseError(f"{relpath}: sha256 {digest[:16]}... differs from the signed {artifact.sha256[:16]}...")
        try:  # the client's own check: version, interpreter and platform, build id
            check_metadata(path, version=version, artifact=artifact)
        except VerificationError as error:
            raise ReleaseError(f"{relpath}: {error.one_line()}") from None
        index = (relpath, artifact.url, artifact.size, artifact.sha256, artifact.delta_index)
        if artifact.delta_index is not None and index not in indexes:
            check_delta_index(root, relpath, artifact)
            indexes.add(index)


def check_delta_index(root: Path, relpath: str, artifact) -> None:
    """The index a client would fetch: as signed, about this artifact, and with the listing it names."""
    from pilot.update.delta import INDEX_SUFFIX, Unavailable, parse_index

    spec = artifact.delta_index
    if spec.url != artifact.url + INDEX_SUFFIX:
        raise ReleaseError(f"{relpath}: its delta index URL {spec.url} is not beside it")
    try:
        data = (root / (relpath + INDEX_SUFFIX)).read_bytes()
        if (len(data), hashlib.sha256(data).hexdigest()) != (spec.size, spec.sha256):
            raise ReleaseError(f"{relpath}{INDEX_SUFFIX}: differs from the signed size and sha256")
        index = parse_index(data, size=artifact.size, sha256=artifact.sha256,
                            resolve=lambda name: str(root / Path(relpath).parent / name))
        listing = Path(index.listing_url).stat().st_size
    except OSError as error:
        raise ReleaseError(f"{relpath}: its delta index: {error.strerror}: {error.filename}") from None
    except Unavailable as error:
        raise ReleaseError(f"{relpath}{INDEX_SUFFIX}: {error.message}") from None
    if listing != index.listing_size:
        raise ReleaseError(f"{relpath}: its delta listing has {listing} bytes, the index says {index.listing_size}")


# --- command line -----------------------------------------------------------------------------


def whole_number(lowest: int, highest: int | None = 100):
    """An argparse type: a whole number from lowest to highest (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lowest - 1
        if value < lowest or (highest is not None and value > highest):
            span = f"{lowest}-{highest}" if highest is not None else f"{lowest} or more"
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {span}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="release.py", description="Pilot release tool: keys, signed manifests.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("keygen", help="write a new Ed25519 signing key (NAME.key, mode 0600) and NAME.pub")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="release")
    p.add_argument("--encrypt", action="store_true", help="encrypt the private key at rest; the passphrase comes "
                   "from PILOT_KEY_PASSPHRASE or is asked on the terminal (never an argument)")
    p.set_defaults(run=keygen)

    def tree_options(p: argparse.ArgumentParser, signing: bool = True) -> None:
        p.add_argument("--root", type=Path, required=True, help="the release tree (SITE)")
        p.add_argument("--channel", default="stable")
        if signing:
            p.add_argument("--key", type=Path, action="append", required=True, help="private key; repeat for several")
            p.add_argument("--expires-in", type=manifest_lifetime, default=DEFAULT_LIFETIME,
                           help=f"manifest lifetime, e.g. 30d, 12h, 90m or 90s (default {DEFAULT_LIFETIME})")

    p = commands.add_parser("publish", help="add a release to a channel and re-sign its manifest")
    tree_options(p)
    p.add_argument("--base-url", required=True, help="the URL at which SITE is served")
    p.add_argument("--notes", type=Path, help="release notes file")
    p.add_argument("--version", help="the release version (default: the version inside the artifacts)")
    p.add_argument("--rollout", type=whole_number(1), default=100, metavar="PERCENT",
                   help="stage it: only installs whose bucket (0-99) is below PERCENT see it (default 100)")
    p.add_argument("artifacts", type=Path, nargs="+", metavar="ARTIFACT")
    p.set_defaults(run=publish)

    p = commands.add_parser("yank", help="mark a release yanked so clients never choose it")
    tree_options(p)
    p.add_argument("--reason", required=True)
    p.add_argument("version")
    p.set_defaults(run=yank)

    p = commands.add_parser("rollout", help="set a release's staged rollout percentage (resumes a halted one)")
    tree_options(p)
    p.add_argument("--percent", type=whole_number(1), required=True, help="1-100: installs whose bucket is below it")
    p.add_argument("version")
    p.set_defaults(run=rollout)

    p = commands.add_parser("halt", help="stop a release's rollout: no new installs; installs on it are told")
    tree_options(p)
    p.add_argument("version")
    p.set_defaults(run=halt)

    p = commands.add_parser("resume", help="resume a halted release at the percentage it had (or --percent)")
    tree_options(p)
    p.add_argument("--percent", type=whole_number(1), help="1-100 (default: what it had when halted, else 100)")
    p.add_argument("version")
    p.set_defaults(run=resume)

    p = commands.add_parser("min-supported", help="make every install below VERSION update before anything else")
    tree_options(p)
    p.add_argument("--clear", action="store_true", help="remove the minimum instead")
    p.add_argument("version", nargs="?")
    p.set_defaults(run=min_supported)

    p = commands.add_parser("prune", help="remove old releases from the manifest (never the latest, the rollback "
                            "target, or any at or above the minimum supported version)")
    tree_options(p)
    p.add_argument("--keep", type=whole_number(1, None), required=True, metavar="N", help="the N newest releases stay")
    p.add_argument("--delete-files", action="store_true",
                   help="also delete the removed releases' files from the tree (unless another channel lists them)")
    p.set_defaults(run=prune)

    p = commands.add_parser("resign", help="re-sign a channel with a fresh expiry (run before it expires)")
    tree_options(p)
    p.set_defaults(run=resign)

    p = commands.add_parser("rotate-keys", help="publish the next key set, signed by the old and the new keys")
    p.add_argument("--root", type=Path, required=True, help="the release tree (SITE)")
    p.add_argument("--old-key", type=Path, action="append", required=True,
                   help="private key of the current set; repeat until its threshold is met")
    p.add_argument("--new-key", type=Path, action="append", required=True,
                   help="private key of the new set (all of them sign it); repeat for several")
    p.add_argument("--threshold", type=int, default=1, help="signatures the new set requires (default 1)")
    p.add_argument("--root-key", type=Path, action="append",
                   help="private root key: signs the new set too, for archives built with --root-key; repeat")
    p.set_defaults(run=rotate_keys)

    p = commands.add_parser("revoke", help="publish the next key set with new release keys, signed by the root keys "
                            "alone (a stolen release key)")
    p.add_argument("--root", type=Path, required=True, help="the release tree (SITE)")
    p.add_argument("--root-key", type=Path, action="append", required=True,
                   help="private root key; repeat until the archives' root threshold is met")
    p.add_argument("--release-key", type=Path, action="append", required=True,
                   help="public key (PEM) of a new release key; repeat for several. Every key not given is revoked")
    p.add_argument("--threshold", type=int, default=1, help="signatures a manifest needs from them (default 1)")
    p.set_defaults(run=revoke)

    p = commands.add_parser("verify", help="check signatures, schema, expiry and every artifact")
    tree_options(p, signing=False)
    p.add_argument("--trusted-key", type=Path, action="append", required=True)
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--root-key", type=Path, action="append", default=[], metavar="PUB",
                   help="a root key the archives embed (build.py --root-key): key sets are checked under these")
    p.add_argument("--root-threshold", type=int, default=1)
    p.add_argument("--min-days", type=float, default=0.0, metavar="DAYS",
                   help="fail when the manifest expires sooner than this (it warns within 7 days whatever this is)")
    p.set_defaults(run=verify)
    return parser


def main() -> int:
    return toolenv.run_cli(__file__, build_parser, ReleaseError, lambda args: "release")

if __name__ == "__main__":
    sys.exit(main())
