"""Key rotation in one place: the pure walk of key sets, the Updater walking an in-memory tree,
`release.py rotate-keys` writing SITE/keys/, and a real v1 walking keys/2..3 over loopback."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pilot.buildinfo import BuildInfo, TrustedKey
from pilot.config import load_config
from pilot.errors import DownloadError, VerificationError
from pilot.update.fetch import Response
from pilot.update.manifest import format_timestamp
from pilot.update.signing import encode_signatures, public_key_of, sign
from pilot.update.updater import Updater, open_updater
from pilot.update.verify import KeySet, declared_keyset_version, parse_signatures, verify_threshold, walk_keysets
from tests.conftest import run_release_tool
from tests.e2e.conftest import sha256
from tests.security.conftest import refused
from tests.support.archives import REPO
from tests.support.keys import make_key

slow = pytest.mark.slow
SCHEMA = json.loads((REPO / "manifest.schema.json").read_text())


def release_tool(*args, check: bool = True):
    """release.py with the real clock; with check, its stdout after a success, else (code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "PILOT_RELEASE_NOW"}
    result = run_release_tool(*[str(a) for a in args], env=env)
    assert "Traceback" not in result.stderr
    if check:
        assert result.returncode == 0, result.stderr
        return result.stdout
    return result.returncode, result.stdout, result.stderr


# --- the walk, pure ---------------------------------------------------------------------------------


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


# --- release.py rotate-keys ---------------------------------------------------------------------


def rotate(site, old, new, threshold=1):
    args = ["rotate-keys", "--root", site, "--threshold", threshold]
    for key in old:
        args += ["--old-key", key.private_path]
    for key in new:
        args += ["--new-key", key.private_path]
    return release_tool(*args, check=False)


@pytest.fixture(scope="module")
def tool_keys(session_dir):
    return {name: make_key(name, session_dir / "keys") for name in ("rot-2", "rot-3a", "rot-3b", "rot-x")}


def read(site, version):
    return (site / "keys" / f"{version}.json").read_bytes(), (site / "keys" / f"{version}.json.sig").read_bytes()


@pytest.mark.slow  # builds a real archive to publish
def test_two_rotations_then_publish_and_verify_follow_the_chain(site, release_key, tool_keys, archives):
    code, out, err = rotate(site, [release_key], [tool_keys["rot-2"]])
    assert code == 0, err
    assert "published key set 2: 1 key(s), threshold 1, 1 key(s) revoked" in out
    code, out, err = rotate(site, [tool_keys["rot-2"]], [tool_keys["rot-3a"], tool_keys["rot-3b"]], threshold=2)
    assert code == 0, err
    for version in (2, 3):
        jsonschema.validate(json.loads(read(site, version)[0]), {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/keyset"})
    anchor = KeySet(1, 1, (release_key.public,))
    final = walk_keysets(anchor, 3, lambda n: read(site, n))
    assert final.threshold == 2 and {k.keyid for k in final.keys} == {tool_keys["rot-3a"].public.keyid,
                                                                        tool_keys["rot-3b"].public.keyid}

    v1 = archives.build("1.0.0")
    code, _, err = release_tool("publish", "--root", site, "--base-url", "https://example.test/pilot",
                                "--key", tool_keys["rot-3a"].private_path, "--key", tool_keys["rot-3b"].private_path,
                                v1, check=False)
    assert code == 0, err
    data = (site / "stable" / "manifest.json").read_bytes()
    assert json.loads(data)["keyset_version"] == 3
    verify_threshold(data, parse_signatures((site / "stable" / "manifest.json.sig").read_bytes(), "sig"), final, "m")

    code, out, err = release_tool("verify", "--root", site, "--trusted-key", release_key.public_path, check=False)
    assert code == 0, err

    # Signing with a key the rotation revoked is refused before anything is written.
    before = data
    code, _, err = release_tool("resign", "--root", site, "--key", release_key.private_path, check=False)
    assert code == 1 and "0 valid signature(s) from key set 3, 2 required" in err
    assert (site / "stable" / "manifest.json").read_bytes() == before


def test_a_rotation_the_old_set_did_not_sign_is_refused_and_nothing_is_written(site, release_key, tool_keys):
    assert rotate(site, [release_key], [tool_keys["rot-2"]])[0] == 0
    code, _, err = rotate(site, [tool_keys["rot-x"]], [tool_keys["rot-3a"]])  # rot-x is not in set 2
    assert code == 1
    assert err.count("\n") == 1 and "from key set 2" in err
    assert sorted(p.name for p in (site / "keys").iterdir()) == ["2.json", "2.json.sig"]


def test_a_threshold_the_new_keys_cannot_meet_is_refused(site, release_key, tool_keys):
    code, _, err = rotate(site, [release_key], [tool_keys["rot-2"]], threshold=2)
    assert code == 1 and "threshold 2 cannot be met by 1 key(s)" in err
    assert not (site / "keys").exists()


# --- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(session_dir):
    return {name: make_key(name, session_dir / "keys") for name in ("e2e-k2", "e2e-k3a", "e2e-k3b")}


def rotate_twice(repo, release_key, keys) -> None:
    """Set 2 = {k2}; set 3 = {k3a, k3b} with threshold 2. The embedded release key is revoked at set 2."""
    release_tool("rotate-keys", "--root", repo.root, "--old-key", release_key.private_path,
                 "--new-key", keys["e2e-k2"].private_path)
    release_tool("rotate-keys", "--root", repo.root, "--old-key", keys["e2e-k2"].private_path,
                 "--new-key", keys["e2e-k3a"].private_path, "--new-key", keys["e2e-k3b"].private_path,
                 "--threshold", "2")


@slow
def test_an_update_walks_two_rotations(pilot, repo, release_key, keys, v2):
    """The control for the attacks below: keys/2.json and keys/3.json, each signed by the set before and itself."""
    rotate_twice(repo, release_key, keys)
    release_tool("publish", "--root", repo.root, "--base-url", repo.url,
                 "--key", keys["e2e-k3a"].private_path, "--key", keys["e2e-k3b"].private_path, v2)
    assert json.loads(repo.manifest.read_bytes())["keyset_version"] == 3

    result = pilot.run("self-update", "--yes")
    assert result.returncode == 0, result.stderr
    assert pilot.version() == "pilot 2.0.0"
    assert pilot.status()["state"] == "committed"
    fetched = [path for path in repo.server.requests if path.startswith("/keys/")]
    assert fetched == ["/keys/2.json", "/keys/2.json.sig", "/keys/3.json", "/keys/3.json.sig"]
    state = json.loads((pilot.home / "update" / "state.json").read_text())
    assert state["highest_keyset_version"] == 3


@slow
@pytest.mark.parametrize("claimed", [pytest.param(1, id="claims-set-1"), pytest.param(3, id="claims-set-3")])
@pytest.mark.threat("attack", "Manifest signed by a revoked key", defence="the walk reaches the set without it; "
                    "the highest key set accepted is remembered, so a replay cannot claim an older set")
def test_a_revoked_key_is_refused(claimed, pilot, repo, release_key, keys, v2):
    rotate_twice(repo, release_key, keys)
    honest = repo.document([], keyset_version=3)
    repo.publish(honest, signers=[keys["e2e-k3a"], keys["e2e-k3b"]])
    assert pilot.run("self-update", "--check").returncode == 0  # this install has now accepted key set 3

    forged = repo.document([repo.release(v2)], keyset_version=claimed)  # newer serial, signed by the revoked key
    repo.publish(forged, signers=[release_key])
    refused(pilot, pilot.run("self-update", "--yes"), sha256(pilot.path), "0 valid signature(s) from key set 3")


@slow
@pytest.mark.threat("attack", "Forged key rotation (keys/2.json signed only by the attacker)",
                    defence="a new key set needs the threshold of the set before it")
def test_a_forged_rotation_is_refused(pilot, repo, other_key, v2):
    forged_set = KeySet(version=2, threshold=1, keys=(public_key_of(other_key.private),))
    data = (json.dumps(forged_set.to_json(), indent=2) + "\n").encode()
    (repo.root / "keys").mkdir()
    (repo.root / "keys" / "2.json").write_bytes(data)
    (repo.root / "keys" / "2.json.sig").write_bytes(encode_signatures([sign(other_key.private, data)]))
    repo.publish(repo.document([repo.release(v2)], keyset_version=2), signers=[other_key])
    refused(pilot, pilot.run("self-update", "--yes"), sha256(pilot.path),
            "keys/2.json: 0 valid signature(s) from key set 1")
