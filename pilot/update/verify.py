"""Ed25519 keys, key sets with a threshold, detached signatures and key rotation.

Pure: bytes in, verdicts out. The trust anchor is what the archive embedded at build time
(`KeySet.embedded`): key set 1, the release keys that sign manifests, and, in an archive
built with root keys, the root keys that alone may sign a later key set. A later key set is
trusted only through the chain of rotations from the anchor, re-walked on every check, so
nothing cached on disk is ever trusted on its own. Each link is signed by the root threshold
(an archive with root keys: a release key cannot sign a key set) or, in an archive without
them, by the threshold of the set before it and its own (the one role of before).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pilot.errors import ManifestError, VerificationError
from pilot.update.manifest import Manifest, check_manifest, load_json, parse_manifest
from pilot.update.schema import validate


@dataclass(frozen=True)
class PublicKey:
    keyid: str
    raw: bytes

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        return cls(keyid_for(raw), raw)

    def to_json(self) -> dict:
        return {"keyid": self.keyid, "scheme": "ed25519", "public": self.raw.hex()}


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class KeySet:
    """Release keys and their threshold (what signs a manifest), version n of the chain.

    `root`: the root keys and threshold that sign every later key set, carried along the walk
    from the archive that embedded them; None in an archive built without root keys, whose
    key sets are signed by the set before them and their own instead."""

    version: int
    threshold: int
    keys: tuple[PublicKey, ...]
    root: KeySet | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= len({k.keyid for k in self.keys}):
            raise VerificationError(
                f"key set {self.version}: threshold {self.threshold} cannot be met by {len(self.keys)} key(s)"
            )

    @classmethod
    def embedded(cls, build) -> KeySet:
        """Key set 1: the keys and threshold the build stamped into this archive."""
        if not build.trusted_keys:
            raise VerificationError("this build has no trusted keys embedded, so it cannot verify updates")
        keys = tuple(PublicKey.from_raw(k.public) for k in build.trusted_keys)
        root_keys = tuple(PublicKey.from_raw(k.public) for k in build.root_keys)
        root = cls(version=1, threshold=build.root_threshold, keys=root_keys) if root_keys else None
        return cls(version=1, threshold=build.threshold, keys=keys, root=root)

    def to_json(self, product: str = "pilot") -> dict:
        return {
            "schema_version": 1, "product": product, "type": "keyset", "version": self.version,
            "threshold": self.threshold, "keys": [k.to_json() for k in self.keys],
        }


def keyid_for(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()


def load_public_key(pem: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise VerificationError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise VerificationError("not an Ed25519 public key")
    return PublicKey.from_raw(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def parse_signatures(data: bytes, what: str) -> list[Signature]:
    try:
        document = load_json(data, what)
        validate(document, "signature_envelope", what=what)
    except ManifestError as error:
        raise VerificationError(error.message) from None
    return [Signature(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in document["signatures"]]


def valid_signers(data: bytes, signatures: list[Signature], keys: tuple[PublicKey, ...]) -> set[str]:
    """The ids of the keys among `keys` whose signature over `data` holds (each counted once)."""
    trusted = {k.keyid: k for k in keys}
    valid: set[str] = set()
    for signature in signatures:
        key = trusted.get(signature.keyid)
        if key is None or key.keyid in valid:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key.raw).verify(signature.sig, data)
        except InvalidSignature:
            continue
        valid.add(key.keyid)
    return valid


def verify_threshold(data: bytes, signatures: list[Signature], keyset: KeySet, what: str) -> set[str]:
    """Return the ids of the trusted keys whose signature over `data` holds; raise below the threshold.

    A key counts once however many signatures name it, and a signature by an unknown key counts for nothing.
    """
    valid = valid_signers(data, signatures, keyset.keys)
    if len(valid) < keyset.threshold:
        named = "no signature" if not signatures else f"{len(valid)} valid signature(s)"
        raise VerificationError(
            f"{what}: {named} from key set {keyset.version}, {keyset.threshold} required "
            "(the file was altered or signed by a key this build does not trust)"
        )
    return valid


def parse_keyset(data: bytes, what: str) -> KeySet:
    try:
        document = load_json(data, what)
        validate(document, "keyset", what=what)
    except ManifestError as error:
        raise VerificationError(error.message) from None
    keys = []
    for item in document["keys"]:
        key = PublicKey.from_raw(bytes.fromhex(item["public"]))
        if key.keyid != item["keyid"]:
            raise VerificationError(f"{what}: keyid {item['keyid'][:16]}... does not match its public key")
        keys.append(key)
    if len({k.keyid for k in keys}) != len(keys):
        raise VerificationError(f"{what}: a key is listed twice")
    return KeySet(version=document["version"], threshold=document["threshold"], keys=tuple(keys))


def verify_root_signatures(data: bytes, signatures: list[Signature], root: KeySet, what: str) -> set[str]:
    """The root threshold over `data`, or one line: only root keys sign a key set."""
    valid = valid_signers(data, signatures, root.keys)
    if len(valid) < root.threshold:
        raise VerificationError(
            f"{what} is not signed by the root keys: {len(valid)} valid root signature(s), {root.threshold} required "
            "(a release key cannot sign a key set)")
    return valid


def verify_rotation(current: KeySet, data: bytes, signatures: list[Signature], what: str) -> KeySet:
    """Accept key set N+1 only when the root threshold signed it (`current.root`, the archive's root keys), or,
    for an archive without root keys, when the threshold of set N and its own threshold both signed it."""
    successor = parse_keyset(data, what)
    if successor.version != current.version + 1:
        raise VerificationError(f"{what}: version {successor.version} does not follow key set {current.version}")
    if current.root is None:
        verify_threshold(data, signatures, current, what)
        verify_threshold(data, signatures, successor, what)
        return successor
    verify_root_signatures(data, signatures, current.root, what)
    if {k.keyid for k in successor.keys} & {k.keyid for k in current.root.keys}:
        raise VerificationError(f"{what}: lists a root key as a release key (root keys sign only key sets)")
    return replace(successor, root=current.root)


KeysetFetch = Callable[[int], tuple[bytes, bytes]]  # n -> the bytes of keys/<n>.json and of its .sig
MAX_ROTATIONS = 1000  # a bound on one walk; each step needs the previous set's threshold anyway


def keyset_path(version: int) -> str:
    """Where key set `version` is published, relative to the release root."""
    return f"keys/{version}.json"


def walk_keysets(anchor: KeySet, target: int, fetch: KeysetFetch) -> KeySet:
    """Key set `target`, reached from the anchor through every rotation in between.

    `fetch(n)` returns the bytes of keys/<n>.json and of its .sig. Each set must be signed as
    `verify_rotation` says (the root threshold, or without root keys the set before it and its
    own); nothing is taken from a cache, so a key that a rotation removed can never sign again
    for a client that walks past it."""
    if target < anchor.version:
        raise VerificationError(f"key set {target} is older than key set {anchor.version}, which this install trusts")
    if target - anchor.version > MAX_ROTATIONS:
        raise VerificationError(f"key set {target} is more than {MAX_ROTATIONS} rotations away")
    current = anchor
    for version in range(anchor.version + 1, target + 1):
        what = keyset_path(version)
        data, signatures = fetch(version)
        current = verify_rotation(current, data, parse_signatures(signatures, what + ".sig"), what)
    return current


def declared_keyset_version(data: bytes) -> int:
    """The key set an (unverified) manifest says signed it: only a hint of how far to walk, 1 when unclear."""
    try:
        value = load_json(data, "manifest").get("keyset_version", 1)
    except (ManifestError, AttributeError):
        return 1
    return value if type(value) is int and 1 <= value <= 2**53 else 1


def check_digest(data_size: int, data_sha256: str, *, size: int, sha256: str, what: str) -> None:
    if data_size != size:
        raise VerificationError(f"{what}: {data_size} bytes where the manifest signs {size}")
    if data_sha256 != sha256:
        raise VerificationError(f"{what}: sha256 {data_sha256[:16]}... is not the signed {sha256[:16]}...")



@dataclass(frozen=True)
class VerifiedManifest:
    manifest: Manifest
    keyset: KeySet  # the key set that signed it, reached from the anchor



def verify_manifest(data: bytes, signatures: bytes, *, anchor: KeySet, fetch_keyset: KeysetFetch, product: str,
                    channel: str, now: datetime | None, highest_serial: int = 0,
                    accepted_keyset: int = 1) -> VerifiedManifest:
    """The one check of a signed manifest, for the client and the release tools alike.

    Walk the key rotations from the anchor (to the set the manifest names, never below one this
    install has accepted), verify the threshold of signatures over the exact bytes, then the
    schema, that the manifest names the set that signed it, product, channel, expiry (skipped
    when `now` is None: a publisher re-signing a lapsed manifest) and the serial high-water mark."""
    keyset = walk_keysets(anchor, max(declared_keyset_version(data), accepted_keyset), fetch_keyset)
    verify_threshold(data, parse_signatures(signatures, "manifest.json.sig"), keyset, "manifest.json")
    manifest = parse_manifest(data)
    if manifest.keyset_version != keyset.version:
        raise VerificationError(
            f"manifest.json is signed under key set {manifest.keyset_version}, but this install has accepted "
            f"key set {keyset.version} (a replay signed with keys that were rotated out)")
    check_manifest(manifest, product=product, channel=channel, now=now, highest_serial=highest_serial)
    return VerifiedManifest(manifest, keyset)
