"""Key roles end to end: root keys sign key sets, release keys sign manifests.

Each case installs a real v1 built with root keys (`build.py --root-key`, threshold 2) and the
release key as key set 1, publishes with the real release tool on the local release site, and
plays a thief who holds the release key. The recovery case runs the commands of docs/SECURITY.md's
"Recovering from a stolen release key" exactly as written there (read from the document), so the
procedure and its test cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pilot.update.signing import encode_signatures, private_key_pem, sign
from pilot.update.verify import KeySet, walk_keysets
from tests.conftest import RELEASE_TOOL
from tests.e2e.conftest import sha256
from tests.security.conftest import SECURITY_DOC, refused
from tests.support.archives import ArchiveFactory
from tests.support.keys import make_key

if TYPE_CHECKING:
    from tests.support.keys import TestKey

PASSPHRASE = "correct horse battery staple"
RECOVERY_HEADING = "### Recovering from a stolen release key"
TOOL_PREFIX = ["python3", "release-tools/release.py"]


def threat(name: str, defence: str):
    return pytest.mark.threat("attack", name, defence=defence)


# --- the procedure, as docs/SECURITY.md writes it ---------------------------------------------


def recovery_commands(text: str | None = None) -> list[list[str]]:
    """The release.py commands of the first sh block under the recovery heading, continuation lines joined."""
    text = SECURITY_DOC.read_text(encoding="utf-8") if text is None else text
    _, heading, section = text.partition(RECOVERY_HEADING)
    assert heading, f"docs/SECURITY.md has no {RECOVERY_HEADING!r} section"
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the recovery section has no sh block"
    lines = re.sub(r"\\\n\s*", " ", block[1]).splitlines()
    commands = [shlex.split(line, comments=True) for line in lines]
    commands = [c for c in commands if c]
    for command in commands:
        assert command[:2] == TOOL_PREFIX, command
    return [command[2:] for command in commands]


def test_the_documented_recovery_is_keygen_revoke_and_resign():
    """Not slow: the document's procedure is what the end-to-end test below runs, and it still parses."""
    commands = recovery_commands()
    assert [c[0] for c in commands] == ["keygen", "revoke", "resign"]
    keygen, revoke, resign = commands
    assert "--encrypt" in keygen
    assert revoke.count("--root-key") == 2 and "--release-key" in revoke
    new_key = revoke[revoke.index("--release-key") + 1]
    assert resign[resign.index("--key") + 1] == new_key.removesuffix(".pub") + ".key"
    import importlib.util

    spec = importlib.util.spec_from_file_location("pilot_release_tool", RELEASE_TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    for command in commands:
        module.build_parser().parse_args(command)  # every option as written exists


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root_keys(session_dir) -> list[TestKey]:
    return [make_key(name, session_dir / "root-keys") for name in ("root-a", "root-b")]


@pytest.fixture(scope="module")
def new_release_key(session_dir) -> TestKey:
    return make_key("release-after-theft", session_dir / "keys")


def build_with_roots(version: str, release_key: TestKey, root_keys: list[TestKey]) -> Path:
    """A real, cached archive of `version` whose key set 1 is the release key and whose root keys (threshold 2)
    are these."""
    return ArchiveFactory([release_key.public_path]).build(version, root_keys=[k.public_path for k in root_keys],
                                                           root_threshold=2)


@pytest.fixture(scope="module")
def rv1(release_key, root_keys) -> Path:
    return build_with_roots("1.0.0", release_key, root_keys)


@pytest.fixture(scope="module")
def rv2(release_key, root_keys) -> Path:
    return build_with_roots("2.0.0", release_key, root_keys)


@pytest.fixture
def install(install_factory, rv1, server):
    return install_factory(rv1)


def tool(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PILOT_RELEASE_NOW"}
    env["PILOT_KEY_PASSPHRASE"] = PASSPHRASE
    result = subprocess.run([sys.executable, str(RELEASE_TOOL), *map(str, args)], capture_output=True, text=True,
                            env=env, cwd=cwd, timeout=300, stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    return result


def publish(site: Path, server, archive: Path, key: Path) -> None:
    tool("publish", "--root", site, "--base-url", server.url, "--key", key, archive)


def steal(site: Path, key: TestKey, *, keyset_version: int, serial: int = 100) -> None:
    """The thief's manifest: the honest one (every release, the same archives) re-signed by the stolen key."""
    document = json.loads((site / "stable" / "manifest.json").read_bytes())
    document.update(serial=serial, keyset_version=keyset_version)
    data = (json.dumps(document, indent=2) + "\n").encode()
    (site / "stable" / "manifest.json.sig").write_bytes(encode_signatures([sign(key.private, data)]))
    (site / "stable" / "manifest.json").write_bytes(data)


def forged_keyset(site: Path, version: int, keys: list[TestKey], signers: list[TestKey]) -> None:
    keyset = KeySet(version=version, threshold=1, keys=tuple(k.public for k in keys))
    data = (json.dumps(keyset.to_json(), indent=2) + "\n").encode()
    (site / "keys").mkdir(exist_ok=True)
    (site / "keys" / f"{version}.json").write_bytes(data)
    (site / "keys" / f"{version}.json.sig").write_bytes(encode_signatures([sign(k.private, data) for k in signers]))


def accepted_keyset(install) -> int:
    return json.loads((install.home / "update" / "state.json").read_text())["highest_keyset_version"]


# --- the attacks ------------------------------------------------------------------------------


@pytest.mark.slow
@threat("Key set signed by release keys only (the stolen one and the thief's own, no root key)",
        "an archive with root keys accepts a key set only under the root threshold")
def test_a_key_set_signed_by_release_keys_only_is_refused(install, site, server, release_key, other_key, rv1, rv2):
    publish(site, server, rv1, release_key.private_path)
    publish(site, server, rv2, release_key.private_path)
    forged_keyset(site, 2, [other_key], signers=[release_key, other_key])
    steal(site, other_key, keyset_version=2)
    # Without root keys this rotation would be followed (the one role of before: set 1 and the new set signed it).
    legacy = walk_keysets(KeySet(1, 1, (release_key.public,)), 2, lambda n: (
        (site / "keys" / f"{n}.json").read_bytes(), (site / "keys" / f"{n}.json.sig").read_bytes()))
    assert legacy.keys == (other_key.public,)
    refused(install, install.run("self-update", "--yes"), sha256(install.path),
            "keys/2.json is not signed by the root keys: 0 valid root signature(s), 2 required")


@pytest.mark.slow
@pytest.mark.parametrize("claimed", [pytest.param(1, id="claims-set-1"), pytest.param(2, id="claims-set-2")])
@threat("Manifest signed by a release key the root revoked, after the client saw the revocation",
        "the walk reaches the root-signed set without it; the highest key set accepted is remembered")
def test_a_manifest_signed_by_a_revoked_release_key_is_refused(claimed, install, site, server, release_key,
                                                                new_release_key, root_keys, rv1, rv2):
    publish(site, server, rv1, release_key.private_path)
    tool("revoke", "--root", site, "--root-key", root_keys[0].private_path, "--root-key", root_keys[1].private_path,
         "--release-key", new_release_key.public_path)
    tool("resign", "--root", site, "--key", new_release_key.private_path)
    assert install.run("self-update", "--check").returncode == 0
    assert accepted_keyset(install) == 2  # the revocation was followed on the next check

    publish(site, server, rv2, new_release_key.private_path)
    steal(site, release_key, keyset_version=claimed)
    refused(install, install.run("self-update", "--yes"), sha256(install.path),
            "0 valid signature(s) from key set 2")


@pytest.mark.slow
@threat("A stolen release key, recovered from as docs/SECURITY.md says (keygen, revoke, resign)",
        "revoke is signed by the root keys alone; the next check follows it, and the stolen key can sign neither "
        "a manifest nor a key set; the next release installs, signed by the new key")
def test_the_documented_recovery_from_a_stolen_release_key(install, tmp_path, site, server, release_key, root_keys,
                                                           other_key, rv1, rv2):
    # The release key signs v1; the site's install.sh trusts it.
    publish(site, server, rv1, release_key.private_path)
    assert install.run("self-update", "--check").returncode == 0
    assert release_key.public.keyid in (site / "install.sh").read_text()

    # The procedure, run from a directory holding keys/ (the root keys, encrypted at rest) and site/.
    assert site == tmp_path / "site"
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    for key in root_keys:
        path = keys_dir / key.private_path.name
        path.write_bytes(private_key_pem(key.private, PASSPHRASE.encode()))
        path.chmod(0o600)
    outputs = [tool(*command, cwd=tmp_path).stdout for command in recovery_commands()]
    # Set 1 lives inside the archives: revoke replaces it (a no-op revoke would print "no key revoked").
    assert outputs[1].splitlines() == [
        "published key set 2: 1 release key(s), threshold 1, signed by 2 root key(s); key set 1, the release keys "
        "inside the archives, is replaced",
        "re-sign every channel now with the new release keys (resign --key ...): clients follow this set on their "
        "next check and refuse manifests signed by any other key",
        "site/keys/2.json",
    ]
    new_key = next(keys_dir.glob("*.pub"))
    assert (keys_dir / new_key.name.replace(".pub", ".key")).read_bytes().startswith(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    installer = (site / "install.sh").read_text()
    assert release_key.public.keyid not in installer  # install.sh trusts only the new release key
    manifest = json.loads((site / "stable" / "manifest.json").read_bytes())
    assert manifest["keyset_version"] == 2

    # The next check follows the revocation.
    assert install.run("self-update", "--check").returncode == 0
    assert accepted_keyset(install) == 2

    # The thief's manifest (newer serial, the stolen key, whichever set it claims) and their key set are refused.
    honest = {name: (site / "stable" / name).read_bytes() for name in ("manifest.json", "manifest.json.sig")}
    publish(site, server, rv2, keys_dir / new_key.name.replace(".pub", ".key"))
    after_release = {name: (site / "stable" / name).read_bytes() for name in honest}
    before = sha256(install.path)
    for claimed in (1, 2):
        steal(site, release_key, keyset_version=claimed)
        refused(install, install.run("self-update", "--yes"), before, "0 valid signature(s) from key set 2")
    forged_keyset(site, 3, [other_key], signers=[release_key, other_key])
    steal(site, other_key, keyset_version=3)
    refused(install, install.run("self-update", "--yes"), before, "keys/3.json is not signed by the root keys")
    for name in ("3.json", "3.json.sig"):
        (site / "keys" / name).unlink()

    # The release signed by the new key installs, and the update is committed.
    for name, data in after_release.items():
        (site / "stable" / name).write_bytes(data)
    result = install.run("self-update", "--yes")
    assert result.returncode == 0, result.stderr
    assert install.version() == "pilot 2.0.0"
    assert install.status()["state"] == "committed"
    assert accepted_keyset(install) == 2
