"""release.py rotate-keys: key sets 2..N under SITE/keys/, and publish/verify following them."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

from pilot.update.verify import KeySet, parse_signatures, verify_threshold, walk_keysets
from tests.conftest import run_release_tool
from tests.support.archives import REPO
from tests.support.keys import make_key

SCHEMA = json.loads((REPO / "manifest.schema.json").read_text())


def tool(*args) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PILOT_RELEASE_NOW"}
    result = run_release_tool(*[str(a) for a in args], env=env)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


def rotate(site, old, new, threshold=1):
    args = ["rotate-keys", "--root", site, "--threshold", threshold]
    for key in old:
        args += ["--old-key", key.private_path]
    for key in new:
        args += ["--new-key", key.private_path]
    return tool(*args)


@pytest.fixture(scope="module")
def keys(session_dir):
    return {name: make_key(name, session_dir / "keys") for name in ("rot-2", "rot-3a", "rot-3b", "rot-x")}


def read(site, version):
    return (site / "keys" / f"{version}.json").read_bytes(), (site / "keys" / f"{version}.json.sig").read_bytes()


@pytest.mark.slow  # builds a real archive to publish
def test_two_rotations_then_publish_and_verify_follow_the_chain(site, release_key, keys, archives):
    code, out, err = rotate(site, [release_key], [keys["rot-2"]])
    assert code == 0, err
    assert "published key set 2: 1 key(s), threshold 1, 1 key(s) revoked" in out
    code, out, err = rotate(site, [keys["rot-2"]], [keys["rot-3a"], keys["rot-3b"]], threshold=2)
    assert code == 0, err
    for version in (2, 3):
        jsonschema.validate(json.loads(read(site, version)[0]), {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/keyset"})
    anchor = KeySet(1, 1, (release_key.public,))
    final = walk_keysets(anchor, 3, lambda n: read(site, n))
    assert final.threshold == 2 and {k.keyid for k in final.keys} == {keys["rot-3a"].public.keyid,
                                                                        keys["rot-3b"].public.keyid}

    v1 = archives.build("1.0.0")
    code, _, err = tool("publish", "--root", site, "--base-url", "https://example.test/pilot",
                        "--key", keys["rot-3a"].private_path, "--key", keys["rot-3b"].private_path, v1)
    assert code == 0, err
    data = (site / "stable" / "manifest.json").read_bytes()
    assert json.loads(data)["keyset_version"] == 3
    verify_threshold(data, parse_signatures((site / "stable" / "manifest.json.sig").read_bytes(), "sig"), final, "m")

    code, out, err = tool("verify", "--root", site, "--trusted-key", release_key.public_path)
    assert code == 0, err

    # Signing with a key the rotation revoked is refused before anything is written.
    before = data
    code, _, err = tool("resign", "--root", site, "--key", release_key.private_path)
    assert code == 1 and "0 valid signature(s) from key set 3, 2 required" in err
    assert (site / "stable" / "manifest.json").read_bytes() == before


def test_a_rotation_the_old_set_did_not_sign_is_refused_and_nothing_is_written(site, release_key, keys):
    assert rotate(site, [release_key], [keys["rot-2"]])[0] == 0
    code, _, err = rotate(site, [keys["rot-x"]], [keys["rot-3a"]])  # rot-x is not in set 2
    assert code == 1
    assert err.count("\n") == 1 and "from key set 2" in err
    assert sorted(p.name for p in (site / "keys").iterdir()) == ["2.json", "2.json.sig"]


def test_a_threshold_the_new_keys_cannot_meet_is_refused(site, release_key, keys):
    code, _, err = rotate(site, [release_key], [keys["rot-2"]], threshold=2)
    assert code == 1 and "threshold 2 cannot be met by 1 key(s)" in err
    assert not (site / "keys").exists()
