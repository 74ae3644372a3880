"""Key rotation end to end: release.py rotate-keys and publish, a real v1 walking keys/2..3 over loopback."""

from __future__ import annotations

import json
import os

import pytest

from pilot.update.signing import encode_signatures, public_key_of, sign
from pilot.update.verify import KeySet
from tests.conftest import run_release_tool
from tests.e2e.conftest import sha256
from tests.security.conftest import refused
from tests.support.keys import make_key

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(session_dir):
    return {name: make_key(name, session_dir / "keys") for name in ("e2e-k2", "e2e-k3a", "e2e-k3b")}


def release_tool(*args) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PILOT_RELEASE_NOW"}
    result = run_release_tool(*[str(a) for a in args], env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def rotate_twice(repo, release_key, keys) -> None:
    """Set 2 = {k2}; set 3 = {k3a, k3b} with threshold 2. The embedded release key is revoked at set 2."""
    release_tool("rotate-keys", "--root", repo.root, "--old-key", release_key.private_path,
                 "--new-key", keys["e2e-k2"].private_path)
    release_tool("rotate-keys", "--root", repo.root, "--old-key", keys["e2e-k2"].private_path,
                 "--new-key", keys["e2e-k3a"].private_path, "--new-key", keys["e2e-k3b"].private_path,
                 "--threshold", "2")


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
