"""Attacks on the update, each against the real CLI over a repository the attacker controls.

Every case installs a copy of v1, lets the simulator (tests/support/repo_sim.py) serve
what the attacker wants, runs `pilot self-update --yes` and checks that it was refused in
one line with exit 3 and that the install path is byte-identical, with no backup and no
temp file beside it. The single-layer checks behind each refusal have unit tests in
tests/update/; this suite proves they hold end to end.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.conftest import Install, sha256
from tests.security.conftest import refused
from tests.support.keys import make_key
from tests.support.repo_sim import RepoSim, TLSServer, endless, redirect, respond, trickle
from tests.support.server import StaticServer

pytestmark = pytest.mark.slow


def threat(name: str, defence: str):
    return pytest.mark.threat("attack", name, defence=defence)


@dataclass
class Scene:
    repo: RepoSim
    pilot: Install
    v1: Path
    v2: Path
    before: str

    def update(self, **env: str):
        return self.pilot.run("self-update", "--yes", extra_env=env)

    def refused(self, result, *messages: str) -> str:
        return refused(self.pilot, result, self.before, *messages)


@pytest.fixture
def scene(repo, pilot, v1, v2) -> Scene:
    return Scene(repo, pilot, v1, v2, sha256(pilot.path))


@pytest.fixture(scope="session")
def second_key(session_dir):
    return make_key("second", session_dir / "keys")


@pytest.fixture(scope="session")
def v1_two_keys(archives, release_key, second_key) -> Path:
    """v1 trusting the release key and a second key, both required (threshold 2)."""
    return archives.build("1.0.0", trusted_keys=[release_key.public_path, second_key.public_path], threshold=2)


@pytest.fixture(scope="session")
def v2_for_another_platform(v2, session_dir) -> Path:
    """v2's bytes with its build metadata saying linux_aarch64: an honest archive for someone else."""
    target = session_dir / "pilot-2.0.0-cp311-linux_aarch64.pyz"
    if not target.exists():
        with zipfile.ZipFile(v2) as source, zipfile.ZipFile(target, "w") as out:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == "pilot-build.json":
                    data = json.dumps({**json.loads(data), "platform_tag": "linux_aarch64"}).encode()
                out.writestr(info, data)
    return target


def tampered(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def artifact_path(repo: RepoSim, document: dict, index: int = 0) -> str:
    return document["releases"][index]["artifacts"][0]["url"].removeprefix(repo.url)


# --- arbitrary artifacts ------------------------------------------------------------------------


@threat("Arbitrary artifact: bytes altered, same size", "sha256 of the stream must equal the signed sha256")
def test_altered_artifact(scene):
    document = scene.repo.publish_releases(scene.v2)
    artifact = scene.repo.root / artifact_path(scene.repo, document).lstrip("/")
    artifact.write_bytes(tampered(artifact.read_bytes()))
    scene.refused(scene.update(), "sha256")


@threat("Arbitrary artifact: shorter than signed", "Content-Length and the byte count must equal the signed size")
def test_short_artifact(scene):
    document = scene.repo.publish_releases(scene.v2)
    scene.repo.route(artifact_path(scene.repo, document), respond(scene.v2.read_bytes()[:-1000]))
    scene.refused(scene.update(), "Content-Length")


@threat("Arbitrary artifact: a valid, signed archive of another release",
        "the hash is the one signed for this release, not any signed hash")
def test_artifact_of_another_release_with_its_valid_hash(scene):
    document = scene.repo.publish_releases(scene.v1, scene.v2)  # both listed with their true hashes
    scene.repo.route(artifact_path(scene.repo, document), respond(scene.v1.read_bytes()))
    line = scene.refused(scene.update())
    assert "sha256" in line or "Content-Length" in line, line  # the sizes may even be equal


# --- signatures ---------------------------------------------------------------------------------


@threat("Unsigned manifest (no .sig)", "signatures are required; a missing file is a refusal, not a pass")
def test_unsigned_manifest(scene):
    scene.repo.publish_releases(scene.v2)
    scene.repo.signatures.unlink()
    scene.refused(scene.update(), "HTTP 404", "manifest.json.sig")


@threat("Empty signature list", "the envelope needs at least one signature (schema), and the threshold")
def test_empty_signature_list(scene):
    document = scene.repo.document([scene.repo.release(scene.v2)])
    scene.repo.publish(document, signatures=b'{"signatures": []}\n')
    scene.refused(scene.update(), "needs at least 1 item")


@threat("Manifest signed by an untrusted key", "only keys embedded at build time (or rotated to) count")
def test_wrongly_signed_manifest(scene, other_key):
    scene.repo.publish(scene.repo.document([scene.repo.release(scene.v2)]), signers=[other_key])
    scene.refused(scene.update(), "0 valid signature(s) from key set 1")


@threat("Trusted key's signature over other bytes", "Ed25519 over the exact manifest bytes")
def test_signature_of_other_bytes(scene):
    _, old_signature = scene.repo.publish(scene.repo.document([]))
    scene.repo.publish(scene.repo.document([scene.repo.release(scene.v2)]), signatures=old_signature)
    scene.refused(scene.update(), "0 valid signature(s)")


@threat("Below threshold: 1 of 2 required signatures", "threshold of distinct trusted keys")
def test_below_threshold(scene, v1_two_keys, install_factory):
    pilot = install_factory(v1_two_keys)
    scene.repo.publish_releases(scene.v2)  # signed by the release key alone
    refused(pilot, pilot.run("self-update", "--yes"), sha256(pilot.path),
            "1 valid signature(s) from key set 1, 2 required")


@threat("Duplicated signature: one key signing twice", "a key counts once however often it signs")
def test_duplicated_signature(scene, v1_two_keys, install_factory, release_key):
    pilot = install_factory(v1_two_keys)
    scene.repo.publish(scene.repo.document([scene.repo.release(scene.v2)]), signers=[release_key, release_key])
    refused(pilot, pilot.run("self-update", "--yes"), sha256(pilot.path),
            "1 valid signature(s) from key set 1, 2 required")


def test_both_keys_meet_the_threshold(scene, v1_two_keys, install_factory, release_key, second_key):
    """The control for the two cases above: the same archive updates when both keys sign."""
    pilot = install_factory(v1_two_keys)
    scene.repo.publish(scene.repo.document([scene.repo.release(scene.v2)]), signers=[release_key, second_key])
    result = pilot.run("self-update", "--yes")
    assert result.returncode == 0, result.stderr
    assert pilot.version() == "pilot 2.0.0"


# --- replay, downgrade, freeze ------------------------------------------------------------------


@threat("Replay of an older validly signed manifest (rollback attack)", "serial high-water mark in update/state.json")
def test_replayed_manifest(scene):
    old = scene.repo.publish(scene.repo.document([], serial=4))
    scene.repo.publish(scene.repo.document([], serial=5))
    assert scene.pilot.run("self-update", "--check").returncode == 0  # accepts serial 5
    scene.repo.publish(old[0], signatures=old[1])
    scene.refused(scene.update(), "serial 4 is older than the 5 already seen")


@threat("Downgrade: serial rises, release is older", "only a version above the running one is chosen")
def test_downgrade_by_newer_manifest(scene):
    scene.repo.publish(scene.repo.document([scene.repo.release(scene.v1, version="0.9.0")], serial=9))
    result = scene.update()
    assert result.returncode == 0, result.stderr
    assert "pilot 1.0.0 is up to date" in result.stdout
    assert sha256(scene.pilot.path) == scene.before and scene.pilot.stray_files() == []


@threat("Mix-and-match: another version's archive signed as this release",
        "the archive's own version must equal the signed release version")
def test_other_version_signed_as_this_release(scene):
    release = scene.repo.release(scene.v1, version="2.0.0")  # v1's bytes, true hash, labelled 2.0.0
    scene.repo.publish(scene.repo.document([release]))
    scene.refused(scene.update(), "the archive says it is version '1.0.0', not 2.0.0")


@threat("Mix-and-match: another platform's archive signed for this one",
        "the archive's python and platform tags must equal the signed ones")
def test_other_platform_signed_for_this_one(scene, v2_for_another_platform):
    release = scene.repo.release(v2_for_another_platform, version="2.0.0")
    release["artifacts"][0]["platform_tag"] = "linux_x86_64"
    release["artifacts"][0].pop("build_id")
    scene.repo.publish(scene.repo.document([release]))
    scene.refused(scene.update(), "built for another interpreter or platform")


@threat("Expired manifest (freeze attack)", "expires_at is checked against the clock")
def test_expired_manifest(scene):
    long_ago = datetime.now(UTC) - timedelta(days=400)
    scene.repo.publish(scene.repo.document([scene.repo.release(scene.v2)], issued=long_ago,
                                           expires=long_ago + timedelta(days=1)))
    scene.refused(scene.update(), "expired")


@threat("Replay after the accepted manifest expired", "the serial high-water mark outlives the manifest")
def test_high_water_mark_outlives_an_expired_manifest(scene):
    older = scene.repo.publish(scene.repo.document([scene.repo.release(scene.v2)], serial=3))  # valid for 30 days
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    scene.repo.publish(scene.repo.document([], serial=5, expires=soon))
    assert scene.pilot.run("self-update", "--check").returncode == 0  # serial 5 accepted
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    scene.refused(scene.update(), "expired")  # the accepted one has expired...
    scene.repo.publish(older[0], signatures=older[1])
    scene.refused(scene.update(), "older than the 5 already seen")  # ...and the older, fresher one is still refused


# --- endless data and slow retrieval ------------------------------------------------------------


@threat("Endless manifest (no Content-Length)", "a 1 MiB cap on the manifest, counted while reading")
def test_endless_manifest(scene):
    scene.repo.route("/stable/manifest.json", endless(b'{"schema_version": 1, "notes": "'))
    scene.refused(scene.update(), "larger than the 1048576-byte cap")


@threat("Oversized manifest announced by Content-Length", "refused before the body is read")
def test_announced_oversized_manifest(scene):
    scene.repo.route("/stable/manifest.json", respond(b" " * (1024 * 1024 + 1)))
    scene.refused(scene.update(), "larger than the 1048576-byte cap")


@threat("Endless artifact: more bytes than signed", "the stream is cut one byte past the signed size")
def test_endless_artifact(scene):
    document = scene.repo.publish_releases(scene.v2)
    scene.repo.route(artifact_path(scene.repo, document), endless(scene.v2.read_bytes()))
    scene.refused(scene.update(), "sent more than the expected")


@threat("Slow retrieval: manifest trickled byte by byte", "an overall deadline (PILOT_UPDATE_DEADLINE) per fetch")
def test_trickled_manifest(scene):
    scene.repo.publish_releases(scene.v2)
    scene.repo.route("/stable/manifest.json", trickle(scene.repo.manifest.read_bytes(), every=0.2))
    started = time.monotonic()
    scene.refused(scene.update(PILOT_UPDATE_DEADLINE="2"), "took longer than 2 s")
    assert time.monotonic() - started < 10


@threat("Slow retrieval: artifact trickled", "the same deadline covers the download")
def test_trickled_artifact(scene):
    document = scene.repo.publish_releases(scene.v2)
    scene.repo.route(artifact_path(scene.repo, document), trickle(scene.v2.read_bytes(), every=0.05, step=4096))
    scene.refused(scene.update(PILOT_UPDATE_DEADLINE="2"), "took longer than 2 s")


# --- redirects and the release root -------------------------------------------------------------


@threat("Redirect to another host", "redirects stay on the host they started from")
def test_redirect_to_another_host(scene):
    document = scene.repo.publish_releases(scene.v2)
    path = artifact_path(scene.repo, document)
    port = scene.repo.server.server_address[1]
    scene.repo.route(path, redirect(f"http://localhost:{port}{path}"))
    scene.refused(scene.update(), "refused redirect from 127.0.0.1 to localhost")


@threat("Redirect from https to plain http", "no redirect may weaken the scheme")
def test_redirect_to_plain_http(scene, release_key, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with TLSServer(scene.repo.root, ca) as tls:
        secure = RepoSim(scene.repo.root, tls, release_key)
        document = secure.publish_releases(scene.v2)
        path = artifact_path(secure, document)
        secure.route(path, redirect(f"{scene.repo.url}{path}"))
        env = {"PILOT_MANIFEST_URL": secure.manifest_url, "SSL_CERT_FILE": str(ca_file)}
        assert scene.pilot.run("self-update", "--check", extra_env=env).returncode == 0  # TLS itself verifies
        scene.refused(scene.update(**env), "refused redirect from https to http")


@threat("Artifact URL that escapes the release root (..)", "artifact URLs must lie under the manifest's grandparent")
def test_artifact_url_climbing_out_of_the_root(scene):
    release = scene.repo.release(scene.v2)
    release["artifacts"][0]["url"] = f"{scene.repo.url}/stable/../../releases/2.0.0/x.pyz"
    scene.repo.publish(scene.repo.document([release]))
    scene.refused(scene.update(), "climbs out of its directory")


@threat("Artifact URL on another server (a mirror the attacker runs)", "same scheme, host and port as the manifest")
def test_artifact_url_on_another_server(scene, tmp_path):
    mirror_root = tmp_path / "mirror"
    with StaticServer(mirror_root) as mirror:
        release = scene.repo.release(scene.v2)
        relative = artifact_path(scene.repo, {"releases": [release]})
        (mirror_root / relative.lstrip("/")).parent.mkdir(parents=True)
        shutil.copyfile(scene.v2, mirror_root / relative.lstrip("/"))  # the genuine bytes, even
        release["artifacts"][0]["url"] = mirror.url + relative
        scene.repo.publish(scene.repo.document([release]))
        scene.refused(scene.update(), "points at another host than the manifest")
        assert mirror.requests == []


# --- malformed documents (signed, so that the parser itself is what is tested) ------------------


def signed_text(scene: Scene, text: str) -> None:
    scene.repo.publish(text.encode("utf-8"))


def document_text(scene: Scene, **changes) -> str:
    document = scene.repo.document([scene.repo.release(scene.v2)])
    for dotted, value in changes.items():
        target = document
        *path, last = dotted.split("__")
        for key in path:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value
    return json.dumps(document, ensure_ascii=False)


@threat("Malformed JSON (validly signed)", "a strict parser; one line, no traceback")
def test_malformed_json(scene):
    signed_text(scene, '{"schema_version": 1, "releases": [')
    scene.refused(scene.update(), "not valid JSON")


@threat("Duplicate keys in JSON (parser differential)", "duplicate keys are refused, not last-one-wins")
def test_duplicate_keys(scene):
    text = document_text(scene)
    signed_text(scene, text[:-1] + ', "serial": 1}')
    scene.refused(scene.update(), "duplicate key 'serial'")


@pytest.mark.parametrize(("text", "message"), [
    pytest.param('{"serial": 1' + "0" * 5000 + "}", "digits", id="5000-digit-integer"),
    pytest.param(None, "must be at most 9007199254740991", id="serial-2**64"),
    pytest.param(None, "expected integer, got number", id="size-1e400"),
])
@threat("Huge numbers", "integer digit limit and schema bounds on every number")
def test_huge_numbers(scene, text, message, request):
    if request.node.callspec.id == "serial-2**64":
        text = document_text(scene, serial=2**64)
    elif request.node.callspec.id == "size-1e400":
        text = document_text(scene).replace('"size": ', '"size": 1e400, "x": ', 1)
    signed_text(scene, text)
    scene.refused(scene.update(), message)


@pytest.mark.parametrize(("changes", "message"), [
    pytest.param({"serial": "5"}, "manifest.serial: expected integer, got string", id="serial-string"),
    pytest.param({"releases": {}}, "manifest.releases: expected array, got object", id="releases-object"),
    pytest.param({"releases__0__yanked": "false"}, "expected boolean, got string", id="yanked-string"),
    pytest.param({"releases__0__artifacts__0__size": True}, "expected integer, got boolean", id="size-bool"),
    pytest.param({"releases__0__artifacts": None}, "expected array, got null", id="artifacts-null"),
])
@threat("Unexpected types", "the schema's types, with booleans never integers")
def test_unexpected_types(scene, changes, message):
    signed_text(scene, document_text(scene, **changes))
    scene.refused(scene.update(), message)


@pytest.mark.parametrize(("changes", "shown"), [
    pytest.param({"releases__0__version": "２.0.0"}, "\\uff12.0.0", id="fullwidth-digit-version"),
    pytest.param({"releases__0__version": "2.0.0\u202e"}, "\\u202e", id="bidi-override-version"),
    pytest.param({"releases__0__version": "2.0.0\u200b"}, "\\u200b", id="zero-width-version"),
    pytest.param({"releases__0__artifacts__0__platform_tag": "linu\u0445_x86_64"}, "\\u0445",
                 id="cyrillic-platform"),
    pytest.param({"releases__0__artifacts__0__url": "http://127.0.0.1/releases/2.0.0/pilot\u2215x.pyz"},
                 "\\u2215", id="division-slash-file-name"),
])
@threat("Unicode tricks in versions and file names", "ASCII-only patterns; untrusted text is escaped when shown")
def test_unicode_tricks(scene, changes, shown):
    signed_text(scene, document_text(scene, **changes))
    line = scene.refused(scene.update(), "is not in the expected form", shown)
    assert line.isascii()
