"""Key rotation: walking keys/2.json..N from the embedded set, in the pure layer and through the Updater."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pilot.buildinfo import BuildInfo, TrustedKey
from pilot.config import load_config
from pilot.errors import DownloadError, VerificationError
from pilot.update.fetch import Response
from pilot.update.manifest import format_timestamp
from pilot.update.signing import encode_signatures, public_key_of, sign
from pilot.update.updater import Updater, open_updater
from pilot.update.verify import KeySet, declared_keyset_version, walk_keysets


def private(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"rotation-test:{name}".encode()).digest())


ROOT_KEY, K2, K3A, K3B, X = (private(n) for n in ("root", "k2", "k3a", "k3b", "x"))


def keyset(version: int, threshold: int, *keys: Ed25519PrivateKey) -> KeySet:
    return KeySet(version=version, threshold=threshold, keys=tuple(public_key_of(k) for k in keys))


ANCHOR = keyset(1, 1, ROOT_KEY)


def signed_keyset(version: int, threshold: int, keys, signers) -> tuple[bytes, bytes]:
    data = (json.dumps(keyset(version, threshold, *keys).to_json(), indent=2) + "\n").encode()
    return data, encode_signatures([sign(k, data) for k in signers])


# set 2 = {K2} (signed by ROOT_KEY and K2); set 3 = {K3A, K3B}, threshold 2 (signed by K2, K3A, K3B)
CHAIN = {
    2: signed_keyset(2, 1, [K2], [ROOT_KEY, K2]),
    3: signed_keyset(3, 2, [K3A, K3B], [K2, K3A, K3B]),
}


def test_two_rotations_are_walked_to_the_last_set():
    final = walk_keysets(ANCHOR, 3, CHAIN.__getitem__)
    assert final.version == 3 and final.threshold == 2
    assert {k.keyid for k in final.keys} == {public_key_of(K3A).keyid, public_key_of(K3B).keyid}


def test_walking_to_the_anchor_fetches_nothing():
    assert walk_keysets(ANCHOR, 1, lambda n: pytest.fail("fetched")) is ANCHOR


@pytest.mark.parametrize(("link", "message"), [
    (signed_keyset(2, 1, [K2], [K2]), "from key set 1"),                 # not signed by the old set
    (signed_keyset(2, 1, [K2], [ROOT_KEY]), "from key set 2"),           # not signed by the new set itself
    (signed_keyset(2, 1, [K2], [X, K2]), "from key set 1"),              # an untrusted key cannot vouch
    (signed_keyset(3, 1, [K2], [ROOT_KEY, K2]), "does not follow key set 1"),  # skips a version
])
def test_a_broken_link_is_refused(link, message):
    with pytest.raises(VerificationError, match=message):
        walk_keysets(ANCHOR, 2, lambda n: link)


def test_below_the_new_threshold_is_refused():
    chain = {2: CHAIN[2], 3: signed_keyset(3, 2, [K3A, K3B], [K2, K3A])}
    with pytest.raises(VerificationError, match=r"1 valid signature.*from key set 3, 2 required"):
        walk_keysets(ANCHOR, 3, chain.__getitem__)


def test_a_target_below_the_anchor_or_absurdly_far_is_refused():
    with pytest.raises(VerificationError, match="older"):
        walk_keysets(keyset(2, 1, K2), 1, CHAIN.__getitem__)
    with pytest.raises(VerificationError, match="rotations away"):
        walk_keysets(ANCHOR, 10**9, CHAIN.__getitem__)


@pytest.mark.parametrize(("data", "hint"), [
    (b'{"keyset_version": 3}', 3), (b'{}', 1), (b"not json", 1), (b"[3]", 1),
    (b'{"keyset_version": true}', 1), (b'{"keyset_version": "3"}', 1), (b'{"keyset_version": 0}', 1),
    (b'{"keyset_version": 1e400}', 1), (b'{"keyset_version": 99999999999999999999}', 1),
])
def test_the_declared_keyset_version_is_only_a_bounded_hint(data, hint):
    assert declared_keyset_version(data) == hint


# --- through the Updater, with an in-memory release tree --------------------------------------------

BASE = "https://releases.example.org/pilot/"


class TreeFetcher:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.fetched: list[str] = []

    def fetch(self, url: str, *, max_bytes: int, etag: str | None = None) -> Response:
        self.fetched.append(url)
        if url not in self.files:
            raise DownloadError(f"HTTP 404 for {url}")
        return Response(200, self.files[url], None, url)


def manifest(serial: int, keyset_version: int) -> bytes:
    now = datetime.now(UTC)
    document = {"schema_version": 1, "product": "pilot", "channel": "stable", "serial": serial,
                "keyset_version": keyset_version, "issued_at": format_timestamp(now - timedelta(hours=1)),
                "expires_at": format_timestamp(now + timedelta(days=1)), "releases": []}
    return (json.dumps(document, indent=2) + "\n").encode()


def tree(data: bytes, signers, chain=CHAIN) -> dict[str, bytes]:
    files = {BASE + "stable/manifest.json": data,
             BASE + "stable/manifest.json.sig": encode_signatures([sign(k, data) for k in signers])}
    for version, (keys, sigs) in chain.items():
        files[f"{BASE}keys/{version}.json"], files[f"{BASE}keys/{version}.json.sig"] = keys, sigs
    return files


def updater(fetcher, tmp_path: Path) -> Updater:
    key = public_key_of(ROOT_KEY)
    build = BuildInfo(version="1.0.0", python_tag="cp311", platform_tag="linux_x86_64", build_id="b" * 64,
                      archive=tmp_path / "pilot", trusted_keys=(TrustedKey(key.keyid, key.raw),), threshold=1,
                      source_commit=None, manifest_url=None)
    return open_updater(config=load_config(), build=build, fetcher=fetcher, manifest_url=BASE + "stable/manifest.json")


def test_the_updater_walks_two_rotations_in_one_check_and_remembers_the_set(tmp_path):
    from pilot.update import state

    fetcher = TreeFetcher(tree(manifest(5, 3), [K3A, K3B]))
    assert updater(fetcher, tmp_path).fetch_verified_manifest().keyset_version == 3
    assert [u.removeprefix(BASE) for u in fetcher.fetched if "/keys/" in u] == [
        "keys/2.json", "keys/2.json.sig", "keys/3.json", "keys/3.json.sig"]
    assert state.load().highest_keyset_version == 3

    again = TreeFetcher(tree(manifest(6, 3), [K3A, K3B]))
    updater(again, tmp_path).fetch_verified_manifest()  # no key is cached: the chain is walked again
    assert sum("/keys/" in u for u in again.fetched) == 4


def test_a_revoked_key_is_refused_whatever_set_the_manifest_names(tmp_path):
    updater(TreeFetcher(tree(manifest(5, 3), [K3A, K3B])), tmp_path).fetch_verified_manifest()

    claims_set_3 = TreeFetcher(tree(manifest(6, 3), [ROOT_KEY]))
    with pytest.raises(VerificationError, match=r"0 valid signature.*key set 3"):
        updater(claims_set_3, tmp_path).fetch_verified_manifest()

    claims_set_1 = TreeFetcher(tree(manifest(7, 1), [ROOT_KEY]))  # the embedded set: below the accepted one
    with pytest.raises(VerificationError, match="key set 3"):
        updater(claims_set_1, tmp_path).fetch_verified_manifest()


def test_a_manifest_that_names_a_lower_set_than_it_is_walked_to_is_refused(tmp_path):
    updater(TreeFetcher(tree(manifest(5, 3), [K3A, K3B])), tmp_path).fetch_verified_manifest()
    signed_by_3_says_2 = TreeFetcher(tree(manifest(6, 2), [K3A, K3B]))
    with pytest.raises(VerificationError, match="signed under key set 2, but this install has accepted key set 3"):
        updater(signed_by_3_says_2, tmp_path).fetch_verified_manifest()


def test_a_missing_rotation_is_refused(tmp_path):
    fetcher = TreeFetcher(tree(manifest(5, 3), [K3A, K3B], chain={2: CHAIN[2]}))
    with pytest.raises(DownloadError, match=r"keys/3\.json"):
        updater(fetcher, tmp_path).fetch_verified_manifest()
