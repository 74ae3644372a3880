"""release-tools/release.py, run as a real subprocess on real archives and a real release tree."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from pilot.buildinfo import BuildInfo
from pilot.errors import PilotError
from pilot.update.manifest import format_timestamp, parse_manifest
from pilot.update.signing import encode_signatures, load_private_key, public_key_of, sign
from pilot.update.verify import KeySet, load_public_key, parse_signatures, verify_manifest, verify_threshold
from tests.conftest import RELEASE_TOOL, run_release_tool
from tests.support.archives import REPO
from tests.support.mounts import mounted
from tests.support.nginx import Nginx, needs_nginx

SCHEMA = json.loads((REPO / "manifest.schema.json").read_text())
BASE_URL = "https://downloads.example.test/pilot"
DAY = 86400


# --- helpers ----------------------------------------------------------------------------------


def tool(*args: str, now: int | None = None) -> subprocess.CompletedProcess:
    env = os.environ.copy()
    env.pop("PILOT_RELEASE_NOW", None)
    if now is not None:
        env["PILOT_RELEASE_NOW"] = str(now)
    return run_release_tool(*[str(a) for a in args], env=env)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def refusal(result: subprocess.CompletedProcess) -> str:
    """The tool refused: non-zero exit, exactly one line on stderr, never a traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("release: ")
    return lines[0]


def publish(site: Path, *artifacts: Path, keys: list[Path], version: str | None = None,
            now: int | None = None, channel: str = "stable", expires_in: str | None = None):
    args = ["publish", "--root", site, "--channel", channel, "--base-url", BASE_URL]
    for key in keys:
        args += ["--key", key]
    if version:
        args += ["--version", version]
    if expires_in:
        args += ["--expires-in", expires_in]
    return tool(*args, *artifacts, now=now)


def verify(site: Path, *trusted: Path, threshold: int = 1, channel: str = "stable", min_days: float | None = None):
    args = ["verify", "--root", site, "--channel", channel, "--threshold", str(threshold)]
    if min_days is not None:
        args += ["--min-days", str(min_days)]
    for key in trusted:
        args += ["--trusted-key", key]
    return tool(*args)


def manifest_bytes(site: Path, channel: str = "stable") -> bytes:
    return (site / channel / "manifest.json").read_bytes()


def published(site: Path, channel: str = "stable") -> dict:
    """The channel's manifest, after checking it against manifest.schema.json and the client's parser."""
    data = manifest_bytes(site, channel)
    document = json.loads(data)
    errors = [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(document)]
    assert errors == []
    parse_manifest(data)
    return document


def client_refusal(site: Path, *trusted, threshold: int = 1, channel: str = "stable") -> str:
    """The line a client embedding these keys refuses the channel's manifest with (pilot.update.verify)."""
    path = site / channel / "manifest.json"
    anchor = KeySet(1, threshold, tuple(key.public for key in trusted))
    with pytest.raises(PilotError) as caught:
        verify_manifest(path.read_bytes(), path.with_name(path.name + ".sig").read_bytes(), anchor=anchor,
                        fetch_keyset=lambda n: pytest.fail(f"no key set {n} is published here"), product="pilot",
                        channel=channel, now=datetime.now(UTC))
    return caught.value.one_line()


def tree(site: Path) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def v100(archives) -> Path:
    return archives.build("1.0.0")


@pytest.fixture(scope="module")
def v110(archives) -> Path:
    return archives.build("1.1.0")


@pytest.fixture
def one_release(site, v100, release_key) -> Path:
    ok(publish(site, v100, keys=[release_key.private_path]))
    return site


# --- keygen -----------------------------------------------------------------------------------


def test_keygen_writes_a_0600_private_key_and_its_public_key(tmp_path):
    out = tmp_path / "keys"
    stdout = ok(tool("keygen", "--out", out, "--name", "ci"))
    private_path, public_path = out / "ci.key", out / "ci.pub"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    private = load_private_key(private_path.read_bytes())
    public = load_public_key(public_path.read_bytes())
    assert public_key_of(private) == public
    assert f"keyid {public.keyid}" in stdout.splitlines()
    # The pair works: a signature by the private key meets a key set of the public one.
    data = b"manifest bytes"
    assert verify_threshold(data, [sign(private, data)], KeySet(1, 1, (public,)), "x") == {public.keyid}
    assert not list(out.glob(".*partial"))


def test_keygen_never_overwrites_a_signing_key(tmp_path):
    out = tmp_path / "keys"
    ok(tool("keygen", "--out", out))
    before = (out / "release.key").read_bytes()
    line = refusal(tool("keygen", "--out", out))
    assert "refusing to overwrite a signing key" in line
    assert (out / "release.key").read_bytes() == before


def no_bigger_files_than(limit: int):
    def apply() -> None:  # in the child: a write past the limit fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_keygen_writes_atomically_so_a_failed_write_leaves_no_partial_key(tmp_path):
    out = tmp_path / "keys"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PILOT_RELEASE_NOW"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run([sys.executable, str(RELEASE_TOOL), "keygen", "--out", str(out)], capture_output=True,
                            text=True, env=env, timeout=300, preexec_fn=no_bigger_files_than(48))
    line = refusal(result)
    assert line == f"release: cannot write {out / 'release.key'}: File too large"
    assert sorted(out.iterdir()) == []  # no half-written key, no temp file beside it
    # Nothing was left that would make the next keygen refuse to overwrite.
    ok(tool("keygen", "--out", out))
    assert stat.S_IMODE((out / "release.key").stat().st_mode) == 0o600


def test_keygen_into_a_read_only_directory_is_refused_in_one_line(tmp_path):
    out = tmp_path / "keys"
    if os.geteuid() != 0:
        out.mkdir()
        out.chmod(0o500)
        try:
            line, left = refusal(tool("keygen", "--out", out)), list(out.iterdir())
        finally:
            out.chmod(0o700)
        why = "Permission denied"
    else:  # root writes into a mode-500 directory anyway, not into a read-only file system (as CI runs)
        with mounted("-t", "tmpfs", "-o", "ro", "tmpfs", target=out):
            line, left = refusal(tool("keygen", "--out", out)), list(out.iterdir())
        why = "Read-only file system"
    assert line == f"release: cannot write {out / 'release.key'}: {why}"
    assert left == []


def test_each_keygen_makes_a_new_key(tmp_path):
    ok(tool("keygen", "--out", tmp_path, "--name", "a"))
    ok(tool("keygen", "--out", tmp_path, "--name", "b"))
    assert (tmp_path / "a.pub").read_bytes() != (tmp_path / "b.pub").read_bytes()


# --- publish and verify -----------------------------------------------------------------------


@pytest.mark.slow
def test_publish_writes_a_signed_manifest_and_the_artifact_and_verify_passes(site, v100, release_key):
    stdout = ok(publish(site, v100, keys=[release_key.private_path]))
    assert stdout.splitlines()[0].startswith("published 1.0.0 to stable (serial 1, 1 artifact(s), expires ")

    meta = json.loads(zipfile.ZipFile(v100).read("pilot-build.json"))
    relpath = f"releases/1.0.0/{v100.name}"
    assert sorted(tree(site)) == ["install.sh", relpath, relpath + ".index", relpath + ".pieces",
                                  "stable/manifest.json", "stable/manifest.json.sig",
                                  "stable/manifests/1.json", "stable/manifests/1.json.sig"]
    assert (site / relpath).read_bytes() == v100.read_bytes()
    index = (site / (relpath + ".index")).read_bytes()

    document = published(site)
    assert (document["product"], document["channel"], document["serial"]) == ("pilot", "stable", 1)
    (release,) = document["releases"]
    assert release["version"] == "1.0.0"
    # The one archive, listed under each interpreter it serves: the shape every client's schema already reads.
    assert release["artifacts"] == [{
        "python_tag": tag, "platform_tag": meta["platform_tag"], "url": f"{BASE_URL}/{relpath}",
        "size": v100.stat().st_size, "sha256": hashlib.sha256(v100.read_bytes()).hexdigest(),
        "build_id": meta["build_id"],
        # The delta index beside it, signed here: what a client fetches to update by delta.
        "delta_index": {"url": f"{BASE_URL}/{relpath}.index", "size": len(index),
                        "sha256": hashlib.sha256(index).hexdigest(), "chunk_size": 4096},
    } for tag in ("cp311", "cp312", "cp313")]
    assert json.loads(index)["pieces"] == {"url": v100.name + ".pieces",
                                           "size": (site / (relpath + ".pieces")).stat().st_size}

    # The archive's own embedded trust anchor accepts the manifest, exactly as a client would check it.
    build = BuildInfo.from_dict(meta, v100)
    signatures = parse_signatures((site / "stable" / "manifest.json.sig").read_bytes(), "manifest.json.sig")
    assert verify_threshold(manifest_bytes(site), signatures, KeySet.embedded(build), "manifest.json") == {
        release_key.public.keyid}

    assert ok(verify(site, release_key.public_path)).startswith(
        "ok: stable serial 1, 1 release(s), 1 artifact(s) match their signed size and sha256")


@pytest.mark.slow
def test_a_second_publish_adds_the_release_and_bumps_the_serial(one_release, v110, release_key):
    first = published(one_release)
    ok(publish(one_release, v110, keys=[release_key.private_path]))
    second = published(one_release)
    assert second["serial"] == first["serial"] + 1 == 2
    assert [r["version"] for r in second["releases"]] == ["1.1.0", "1.0.0"]
    assert second["releases"][1] == first["releases"][0]  # the old release is carried over untouched
    assert parse_manifest(manifest_bytes(one_release)).latest.version.public == "1.1.0"
    assert "serial 2, 2 release(s), 2 artifact(s)" in ok(verify(one_release, release_key.public_path))


def test_each_signing_dates_manifest_json_a_whole_second_after_the_one_it_replaces(one_release, release_key):
    """nginx (and any server that derives them from the file) makes Last-Modified and the ETag from the mtime in
    whole seconds and the size: two signings within one second, of equal size, would share an ETag, and a client
    holding the first would be told 304 and keep it. A clock stepped back must not date it earlier either."""
    mutable = [one_release / "stable" / name for name in ("manifest.json", "manifest.json.sig")]
    ahead = int(time.time()) + 30  # the previous signing's second, as a clock that has since stepped back sees it
    for path in mutable:
        os.utime(path, (ahead, ahead))
    ok(tool("resign", "--root", one_release, "--key", release_key.private_path))
    assert [int(path.stat().st_mtime) for path in mutable] == [ahead + 1, ahead + 1]


@needs_nginx
def test_two_signings_in_a_row_are_two_etags_through_nginx(one_release, release_key):
    from urllib.request import urlopen

    with Nginx(one_release) as server:
        etags = []
        for _ in range(4):  # each signing ~0.4 s: several fall within one second
            ok(tool("resign", "--root", one_release, "--key", release_key.private_path))
            with urlopen(f"{server.url}/stable/manifest.json") as response:
                etags.append(response.headers["ETag"])
    assert len(set(etags)) == 4, etags


@pytest.mark.slow
@pytest.mark.parametrize("older", ["1.0.0", "1.1.0"])
def test_publish_refuses_a_version_not_higher_than_the_channels_latest(site, v100, v110, release_key, older):
    ok(publish(site, v110, keys=[release_key.private_path]))
    before = tree(site)
    line = refusal(publish(site, v100 if older == "1.0.0" else v110, keys=[release_key.private_path]))
    assert f"version {older} is not higher than 1.1.0, the stable channel's latest" in line
    assert tree(site) == before  # nothing was copied, nothing re-signed


@pytest.mark.slow
def test_publish_refuses_an_artifact_whose_embedded_version_disagrees(site, v100, release_key):
    line = refusal(publish(site, v100, keys=[release_key.private_path], version="2.0.0"))
    assert "the archive says version '1.0.0', the release is 2.0.0" in line
    assert v100.name in line
    assert tree(site) == {}


def test_publish_refuses_a_file_that_is_not_a_pilot_archive(site, tmp_path, release_key):
    bogus = tmp_path / "pilot-9.0.0-cp311-linux_x86_64.pyz"
    bogus.write_bytes(b"#!/usr/bin/env python3\nprint('hi')\n")
    assert "not a Pilot archive" in refusal(publish(site, bogus, keys=[release_key.private_path]))
    assert tree(site) == {}


@pytest.mark.slow
def test_publish_refuses_a_signing_key_that_is_not_a_private_key(site, v100, release_key):
    line = refusal(publish(site, v100, keys=[release_key.public_path]))
    assert str(release_key.public_path) in line and "private key" in line
    assert tree(site) == {}  # refused before the artifact was copied in
    missing = site.parent / "no-such.key"
    assert "cannot read key" in refusal(publish(site, v100, keys=[release_key.private_path, missing]))
    assert tree(site) == {}


@pytest.mark.slow
def test_verify_refuses_a_manifest_signed_by_a_key_it_does_not_trust(one_release, other_key):
    line = refusal(verify(one_release, other_key.public_path))
    assert "manifest.json: 0 valid signature(s) from key set 1, 1 required" in line


@pytest.mark.slow
def test_a_threshold_of_two_needs_two_signatures(site, v100, release_key, other_key):
    ok(publish(site, v100, keys=[release_key.private_path]))
    line = refusal(verify(site, release_key.public_path, other_key.public_path, threshold=2))
    assert "1 valid signature(s) from key set 1, 2 required" in line
    assert line == "release: " + client_refusal(site, release_key, other_key, threshold=2)
    # resign with both keys: now both signatures are there
    ok(tool("resign", "--root", site, "--key", release_key.private_path, "--key", other_key.private_path))
    assert "serial 2" in ok(verify(site, release_key.public_path, other_key.public_path, threshold=2))
    signatures = json.loads((site / "stable" / "manifest.json.sig").read_text())["signatures"]
    assert {s["keyid"] for s in signatures} == {release_key.public.keyid, other_key.public.keyid}


@pytest.mark.slow
def test_verify_refuses_a_manifest_for_another_channel_or_product_as_a_client_does(one_release, release_key):
    # The stable manifest, signatures and all, served as the beta channel: a client on beta must refuse it.
    shutil.copytree(one_release / "stable", one_release / "beta")
    line = refusal(verify(one_release, release_key.public_path, channel="beta"))
    assert line == "release: the manifest is for channel 'stable', not beta"
    assert line == "release: " + client_refusal(one_release, release_key, channel="beta")

    # Signed by the trusted key, but for another product.
    document = published(one_release)
    document["product"] = "other"
    data = (json.dumps(document, indent=2) + "\n").encode()
    (one_release / "stable" / "manifest.json").write_bytes(data)
    (one_release / "stable" / "manifest.json.sig").write_bytes(encode_signatures([sign(release_key.private, data)]))
    line = refusal(verify(one_release, release_key.public_path))
    assert line == "release: the manifest is for 'other', not pilot"
    assert line == "release: " + client_refusal(one_release, release_key)


# --- tampering --------------------------------------------------------------------------------


def _artifact(site: Path) -> Path:
    (path,) = (site / "releases" / "1.0.0").glob("*.pyz")
    return path


TARGETS = {
    "artifact": _artifact,
    "manifest": lambda site: site / "stable" / "manifest.json",
    "signature": lambda site: site / "stable" / "manifest.json.sig",
}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_one_flipped_byte_anywhere_makes_verify_fail_with_one_line_naming_it(
        one_release, release_key, target, where):
    ok(verify(one_release, release_key.public_path))
    path = TARGETS[target](one_release)
    size = path.stat().st_size
    flip_byte(path, {"first": 0, "middle": size // 2, "last": size - 1}[where])

    line = refusal(verify(one_release, release_key.public_path))
    if target == "artifact":
        assert f"releases/1.0.0/{path.name}: sha256 " in line and "differs from the signed" in line
    elif target == "manifest":
        assert "release: manifest.json: 0 valid signature(s)" in line
    else:
        assert line.startswith(("release: manifest.json.sig: ", "release: manifest.json: 0 valid signature(s)"))


@pytest.mark.slow
def test_a_flipped_byte_inside_the_signature_value_fails_the_signature(one_release, release_key):
    sig_path = one_release / "stable" / "manifest.json.sig"
    document = json.loads(sig_path.read_text())
    raw = bytearray(base64.b64decode(document["signatures"][0]["sig"]))
    raw[10] ^= 0x01
    document["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    sig_path.write_text(json.dumps(document))
    assert "manifest.json: 0 valid signature(s) from key set 1, 1 required" in refusal(
        verify(one_release, release_key.public_path))


@pytest.mark.slow
def test_a_missing_or_truncated_artifact_is_named(one_release, release_key):
    artifact = _artifact(one_release)
    artifact.write_bytes(artifact.read_bytes()[:-1])
    line = refusal(verify(one_release, release_key.public_path))
    assert f"releases/1.0.0/{artifact.name}: " in line and "bytes, the manifest signs" in line
    artifact.unlink()
    assert f"releases/1.0.0/{artifact.name}: missing from the release tree" in refusal(
        verify(one_release, release_key.public_path))


# --- yank, expiry, resign ---------------------------------------------------------------------


@pytest.mark.slow
def test_yank_marks_the_release_yanked_and_re_signs(one_release, v110, release_key):
    ok(publish(one_release, v110, keys=[release_key.private_path]))
    signatures_before = (one_release / "stable" / "manifest.json.sig").read_bytes()

    stdout = ok(tool("yank", "--root", one_release, "--key", release_key.private_path,
                     "--reason", "corrupts the state file", "1.1.0"))
    assert "yanked 1.1.0 from stable (serial 3)" in stdout
    document = published(one_release)
    assert document["serial"] == 3
    yanked, kept = document["releases"]
    assert (yanked["version"], yanked["yanked"], yanked["yanked_reason"]) == ("1.1.0", True, "corrupts the state file")
    assert "yanked" not in kept
    assert parse_manifest(manifest_bytes(one_release)).latest.version.public == "1.0.0"
    assert (one_release / "stable" / "manifest.json.sig").read_bytes() != signatures_before
    assert "serial 3, 2 release(s), 2 artifact(s)" in ok(verify(one_release, release_key.public_path))


@pytest.mark.slow
def test_yank_refuses_a_version_that_is_not_published(one_release, release_key):
    before = tree(one_release)
    line = refusal(tool("yank", "--root", one_release, "--key", release_key.private_path, "--reason", "x", "9.9"))
    assert "version 9.9 is not in the stable manifest" in line
    assert tree(one_release) == before


@pytest.mark.slow
def test_verify_refuses_an_expired_manifest_and_resign_renews_it(site, v100, release_key):
    issued = int(time.time()) - 31 * DAY  # the default lifetime is 30 days
    ok(publish(site, v100, keys=[release_key.private_path], now=issued))
    document = published(site)
    assert document["issued_at"] == format_timestamp(datetime.fromtimestamp(issued, UTC))
    expiry = format_timestamp(datetime.fromtimestamp(issued + 30 * DAY, UTC))
    assert document["expires_at"] == expiry

    line = refusal(verify(site, release_key.public_path))
    assert f"the stable manifest expired at {expiry}: its publisher has not re-signed it" in line

    ok(tool("resign", "--root", site, "--key", release_key.private_path, "--expires-in", "8d"))
    renewed = published(site)
    assert renewed["serial"] == 2 and renewed["releases"] == document["releases"]
    assert "serial 2" in ok(verify(site, release_key.public_path))


@pytest.mark.slow
@pytest.mark.parametrize(("lifetime", "seconds"), [("90m", 90 * 60), ("90s", 90), ("2m", 120), ("1.5h", 5400)])
def test_expires_in_sets_the_lifetime(site, v100, release_key, lifetime, seconds):
    issued = 1_900_000_000
    ok(publish(site, v100, keys=[release_key.private_path], now=issued, expires_in=lifetime))
    document = published(site)
    assert document["expires_at"] == format_timestamp(datetime.fromtimestamp(issued + seconds, UTC))


@pytest.mark.parametrize(("lifetime", "why"), [
    ("soon", "'soon' is not a duration like 30m, 2h or 90s"), ("0s", "'0s' is not a duration"),
    ("3651d", "'3651d' is longer than 3650 days"), ("9" * 300 + "d", "is longer than 3650 days"),
    ("9" * 400 + "d", "is not a duration"),  # past what a float holds
])
def test_expires_in_that_is_no_lifetime_is_one_usage_line_and_exit_2(site, release_key, lifetime, why):
    result = tool("resign", "--root", site, "--key", release_key.private_path, "--expires-in", lifetime)
    line = refusal(result)
    assert result.returncode == 2
    assert line.startswith("release: resign: argument --expires-in: manifest lifetime: ") and why in line
    assert tree(site) == {}


# --- the openssl recipe -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_the_manifest_signature(one_release, release_key, tmp_path):
    manifest = one_release / "stable" / "manifest.json"
    envelope = json.loads((one_release / "stable" / "manifest.json.sig").read_text())
    sig_bin = tmp_path / "sig.bin"
    sig_bin.write_bytes(base64.b64decode(envelope["signatures"][0]["sig"]))

    def openssl_verify(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(release_key.public_path), "-rawin",
             "-in", str(path), "-sigfile", str(sig_bin)],
            capture_output=True, text=True, timeout=60,
        )

    result = openssl_verify(manifest)
    assert result.returncode == 0, result.stderr
    assert "Signature Verified Successfully" in result.stdout

    altered = tmp_path / "manifest.json"
    altered.write_bytes(manifest.read_bytes().replace(b'"serial": 1', b'"serial": 2'))
    result = openssl_verify(altered)
    assert result.returncode != 0
    assert "Signature Verified Successfully" not in result.stdout


# --- expiry that cannot lapse silently --------------------------------------------------------


@pytest.mark.slow
def test_verify_warns_within_seven_days_of_expiry_and_fails_past_min_days(one_release, release_key):
    ok(tool("resign", "--root", one_release, "--key", release_key.private_path, "--expires-in", "5d"))
    result = verify(one_release, release_key.public_path)
    assert result.returncode == 0 and "ok: stable serial 2" in result.stdout
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("warning: stable/manifest.json expires at ") and "in 5.0 days" in warning
    assert "re-sign it before then (release.py resign)" in warning

    line = refusal(verify(one_release, release_key.public_path, min_days=6))
    assert "in 5.0 days, fewer than --min-days 6: re-sign it now (release.py resign)" in line
    assert verify(one_release, release_key.public_path, min_days=4).returncode == 0

    ok(tool("resign", "--root", one_release, "--key", release_key.private_path))  # 30 days: quiet again
    ok(verify(one_release, release_key.public_path, min_days=7))


# --- rollout control --------------------------------------------------------------------------


def release_entry(site: Path, version: str) -> dict:
    return next(r for r in published(site)["releases"] if r["version"] == version)


def control(site: Path, key: Path, *args) -> subprocess.CompletedProcess:
    return tool(args[0], "--root", site, "--key", key, *args[1:])


@pytest.mark.slow
def test_publish_rollout_stages_a_release_and_rollout_halt_resume_move_it(one_release, v110, release_key):
    key = release_key.private_path
    args = ["publish", "--root", one_release, "--base-url", BASE_URL, "--key", key, "--rollout", "10", v110]
    assert "rolled out to 10%" in ok(tool(*args))
    assert release_entry(one_release, "1.1.0")["rollout_percent"] == 10

    assert "rolled out to 40% (was 10%" in ok(control(one_release, key, "rollout", "--percent", "40", "1.1.0"))
    assert release_entry(one_release, "1.1.0")["rollout_percent"] == 40

    said = ok(control(one_release, key, "halt", "1.1.0"))
    assert "halted 1.1.0 on stable" in said and "no new installs" in said and "it was at 40%" in said
    assert release_entry(one_release, "1.1.0")["rollout_percent"] == 0
    assert json.loads((one_release / "stable" / "halted.json").read_text()) == {"1.1.0": 40}
    manifest = parse_manifest(manifest_bytes(one_release))
    assert manifest.releases[0].halted and str(manifest.latest.version) == "1.0.0"
    assert "halted already" in refusal(control(one_release, key, "halt", "1.1.0"))

    assert "rolled out to 40%" in ok(control(one_release, key, "resume", "1.1.0"))  # what it had
    assert release_entry(one_release, "1.1.0")["rollout_percent"] == 40
    assert not (one_release / "stable" / "halted.json").exists()
    assert "is not halted" in refusal(control(one_release, key, "resume", "1.1.0"))

    ok(control(one_release, key, "halt", "1.1.0"))
    ok(control(one_release, key, "resume", "--percent", "100", "1.1.0"))  # 100: the field goes, absent means 100
    assert "rollout_percent" not in release_entry(one_release, "1.1.0")
    assert published(one_release)["serial"] == 7
    ok(verify(one_release, release_key.public_path))


@pytest.mark.slow
def test_resume_without_a_record_of_the_percentage_rolls_out_to_everyone(one_release, release_key):
    key = release_key.private_path
    ok(control(one_release, key, "halt", "1.0.0"))
    (one_release / "stable" / "halted.json").unlink()  # e.g. a tree restored without it
    assert "rolled out to 100%" in ok(control(one_release, key, "resume", "1.0.0"))


@pytest.mark.slow
@pytest.mark.parametrize("args", [["halt", "9.9"], ["rollout", "--percent", "5", "9.9"], ["resume", "9.9"]])
def test_rollout_control_refuses_an_unlisted_version_in_one_line_and_changes_nothing(one_release, release_key, args):
    before = tree(one_release)
    assert "version 9.9 is not in the stable manifest" in refusal(control(one_release, release_key.private_path,
                                                                          *args))
    assert tree(one_release) == before


@pytest.mark.slow
def test_a_yanked_release_cannot_be_halted_or_rolled_out(one_release, release_key):
    key = release_key.private_path
    ok(control(one_release, key, "yank", "--reason", "broken", "1.0.0"))
    for args in (["halt", "1.0.0"], ["rollout", "--percent", "50", "1.0.0"]):
        assert "1.0.0 is yanked" in refusal(control(one_release, key, *args))


@pytest.mark.parametrize("percent", ["0", "101", "ten"])
def test_a_rollout_percentage_out_of_range_is_a_usage_error(site, release_key, percent):
    result = control(site, release_key.private_path, "rollout", "--percent", percent, "1.0.0")
    assert result.returncode == 2 and "is not a whole number 1-100" in result.stderr


@pytest.mark.slow
def test_min_supported_sets_the_minimum_only_when_a_good_release_meets_it(one_release, v110, release_key):
    key = release_key.private_path
    ok(publish(one_release, v110, keys=[key]))
    ok(control(one_release, key, "halt", "1.1.0"))
    assert "no release at or above 1.1.0 is on offer" in refusal(control(one_release, key, "min-supported", "1.1.0"))
    ok(control(one_release, key, "resume", "1.1.0"))
    assert "installs below 1.1.0 must update" in ok(control(one_release, key, "min-supported", "1.1.0"))
    manifest = parse_manifest(manifest_bytes(one_release))
    assert str(manifest.min_supported_version) == "1.1.0" and manifest.required(manifest.releases[1].version)
    ok(control(one_release, key, "min-supported", "--clear"))
    assert "min_supported_version" not in published(one_release)


# --- the manifest's size and prune ------------------------------------------------------------


def padded_release(template: dict, version: str, notes: int) -> dict:
    return {**template, "version": version, "notes": "n" * notes}


def sign_document(site: Path, document: dict, key: Path) -> None:
    """Write `document` as the signed stable manifest (what many earlier publishes would have left)."""
    data = (json.dumps(document, indent=2) + "\n").encode()
    private = load_private_key(key.read_bytes())
    (site / "stable" / "manifest.json").write_bytes(data)
    (site / "stable" / "manifest.json.sig").write_bytes(encode_signatures([sign(private, data)]))


@pytest.mark.slow
def test_publish_warns_past_three_quarters_of_the_cap_and_refuses_to_exceed_it(one_release, v110, release_key):
    from pilot.update.manifest import MANIFEST_CAP

    key = release_key.private_path
    document = published(one_release)
    template = document["releases"][0]
    # 12 releases with 64 KiB of notes each: 78 % of the cap once 1.1.0 is added.
    document["releases"] = [padded_release(template, f"0.{n}", 65536) for n in range(12)] + document["releases"]
    sign_document(one_release, document, key)
    result = publish(one_release, v110, keys=[key])
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("warning: the stable manifest is ") and f"of the {MANIFEST_CAP} bytes a client" in warning
    assert "release.py prune --keep N" in warning

    document = published(one_release)  # without 1.1.0 again, and with 4 more: 1.1.0 no longer fits
    document["releases"] = [r for r in document["releases"] if r["version"] != "1.1.0"]
    document["releases"] += [padded_release(template, f"0.20.{n}", 65536) for n in range(4)]
    sign_document(one_release, document, key)
    before = tree(one_release)
    line = refusal(publish(one_release, v110, keys=[key]))
    assert f"more than the {MANIFEST_CAP} bytes (1 MiB) a client reads" in line
    assert "release.py prune --keep N" in line
    assert tree(one_release) == before  # nothing of the tree changed


def test_how_many_releases_fit_under_the_cap():
    """The figure docs/SECURITY.md gives: a release of four platforms, each archive listed under three
    interpreters with its delta index, and no notes."""
    from pilot.update.manifest import MANIFEST_CAP

    def entry(python: str, platform: str) -> dict:
        url = f"{BASE_URL}/releases/10.20.30/pilot-10.20.30-{platform}.pyz"
        return {"python_tag": python, "platform_tag": platform, "url": url, "size": 12345678, "sha256": "a" * 64,
                "build_id": "b" * 64, "delta_index": {"url": url + ".index", "size": 23456, "sha256": "c" * 64,
                                                      "chunk_size": 65536}}

    platforms = ("linux_x86_64", "linux_aarch64", "macos_arm64", "macos_x86_64")
    release = {"version": "10.20.30", "released_at": "2030-01-01T00:00:00Z", "rollout_percent": 50,
               "artifacts": [entry(python, platform) for platform in platforms for python in ("cp311", "cp312",
                                                                                                "cp313")]}
    def encoded(count: int) -> int:  # as release.py writes it
        return len(json.dumps({"releases": [release] * count}, indent=2)) + 1

    size = encoded(2) - encoded(1)
    assert size < 8800 and (MANIFEST_CAP - encoded(0)) // size >= 120  # 120 fit; publish warns past 90


@pytest.mark.slow
def test_prune_never_removes_the_latest_the_rollback_target_or_anything_at_or_above_the_minimum(
        one_release, v110, release_key):
    key = release_key.private_path
    ok(publish(one_release, v110, keys=[key]))
    document = published(one_release)
    template = document["releases"][-1]
    releases = {v: padded_release(template, v, 0) for v in ("0.5", "0.6", "0.7", "0.8", "0.9", "0.9.5")}
    releases["0.9.5"].update(rollout_percent=0)  # halted
    document["releases"] = document["releases"] + list(releases.values())
    document["releases"][0].update(yanked=True, yanked_reason="broken")  # 1.1.0, the latest, yanked
    document["min_supported_version"] = "0.8"
    sign_document(one_release, document, key)
    for version in ("0.5", "0.6"):  # files a release left in the tree
        (one_release / "releases" / version).mkdir(parents=True)
        (one_release / artifact_path(template, version)).write_bytes(b"old")

    said = ok(control(one_release, key, "prune", "--keep", "1", "--delete-files"))
    # kept: 1.1.0 (latest, and the newest), 1.0.0 (the newest good), 0.9 (the rollback target below it),
    # 0.9.5, 0.8 (at or above the minimum); removed: 0.7, 0.6, 0.5
    assert "pruned 3 release(s) from stable: 0.7, 0.6, 0.5" in said
    assert sorted(r["version"] for r in published(one_release)["releases"]) == ["0.8", "0.9", "0.9.5", "1.0.0",
                                                                                 "1.1.0"]
    assert not (one_release / "releases" / "0.5").exists() and not (one_release / "releases" / "0.6").exists()
    assert (one_release / "releases" / "1.0.0").is_dir()
    assert "nothing to prune" in ok(control(one_release, key, "prune", "--keep", "1"))


@pytest.mark.slow
def test_prune_keeps_the_files_another_channel_still_lists(one_release, v110, release_key):
    key = release_key.private_path
    ok(publish(one_release, v100_of(one_release), keys=[key], channel="beta"))
    ok(publish(one_release, v110, keys=[key]))
    said = ok(control(one_release, key, "prune", "--keep", "1", "--delete-files"))
    assert "nothing to prune" in said  # 1.0.0 is the rollback target below 1.1.0
    ok(control(one_release, key, "halt", "1.0.0"))  # no longer good: no longer the rollback target
    said = ok(control(one_release, key, "prune", "--keep", "1", "--delete-files"))
    assert "pruned 1 release(s) from stable: 1.0.0" in said
    assert "kept the files of 1.0.0: the beta channel(s) still list it" in said
    ok(verify(one_release, release_key.public_path, channel="beta"))


@pytest.mark.slow
def test_prune_delete_files_refuses_a_broken_other_channel_before_it_signs_anything(one_release, v110, release_key):
    key = release_key.private_path
    ok(publish(one_release, v110, keys=[key]))
    ok(control(one_release, key, "halt", "1.0.0"))  # no longer the rollback target: prune --keep 1 removes it
    (one_release / "beta").mkdir()
    (one_release / "beta" / "manifest.json").write_bytes(b"{not json")
    before = tree(one_release)
    line = refusal(control(one_release, key, "prune", "--keep", "1", "--delete-files"))
    assert line.startswith("release: the beta channel: manifest: not valid JSON")
    assert tree(one_release) == before  # not signed, no file deleted


def v100_of(site: Path) -> Path:
    return next((site / "releases" / "1.0.0").glob("*.pyz"))


def artifact_path(template: dict, version: str) -> str:
    name = template["artifacts"][0]["url"].rsplit("/", 1)[1].replace(template["version"], version)
    return f"releases/{version}/{name}"


# --- key roles: keygen --encrypt, revoke, rotate-keys --root-key ------------------------------


PASSPHRASE = "a long enough passphrase"


def key_tool(*args, passphrase: str | None = None) -> subprocess.CompletedProcess:
    """release.py with no terminal to ask on (stdin is /dev/null) and the passphrase, if any, in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PILOT_RELEASE_NOW", "PILOT_KEY_PASSPHRASE")}
    if passphrase is not None:
        env["PILOT_KEY_PASSPHRASE"] = passphrase
    return subprocess.run([sys.executable, str(RELEASE_TOOL), *map(str, args)], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=300)


FAKE_RELEASE_KEY = bytes(range(32))  # key set 1 of the fake archives: never signs anything here


def fake_archive(site: Path, version: str, *, root: list | None = None, root_threshold: int = 1,
                 **fields) -> Path:
    """An archive under SITE/releases/ whose pilot-build.json embeds these root keys (and only what revoke reads
    besides: a build id and key set 1, as every archive has them)."""
    meta = {"version": version, "platform_tag": "linux_x86_64", "build_id": "b" * 64,
            "trusted_keys": [{"keyid": hashlib.sha256(FAKE_RELEASE_KEY).hexdigest(), "public": FAKE_RELEASE_KEY.hex()}]}
    if root:
        meta.update(root_keys=[{"keyid": k.public.keyid, "public": k.public.raw.hex()} for k in root],
                    root_threshold=root_threshold)
    meta.update(fields)
    path = site / "releases" / version / f"pilot-{version}-linux_x86_64.pyz"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pilot-build.json", json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def roots(session_dir):
    from tests.support.keys import make_key

    return [make_key(name, session_dir / "root-keys") for name in ("root-a", "root-b")]


def keyset_files(site: Path, version: int) -> tuple[bytes, bytes]:
    return (site / "keys" / f"{version}.json").read_bytes(), (site / "keys" / f"{version}.json.sig").read_bytes()


def test_keygen_encrypt_takes_the_passphrase_from_the_environment_and_never_from_an_argument(tmp_path):
    out = tmp_path / "keys"
    ok(key_tool("keygen", "--encrypt", "--out", out, "--name", "ci", passphrase=PASSPHRASE))
    pem = (out / "ci.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") and PASSPHRASE.encode() not in pem
    assert stat.S_IMODE((out / "ci.key").stat().st_mode) == 0o600
    assert public_key_of(load_private_key(pem, PASSPHRASE.encode())) == load_public_key((out / "ci.pub").read_bytes())
    usage = subprocess.run([sys.executable, str(RELEASE_TOOL), "keygen", "--help"], capture_output=True, text=True)
    assert "--encrypt" in usage.stdout and "--passphrase" not in usage.stdout  # no option takes a secret


def test_keygen_encrypt_without_a_passphrase_or_a_terminal_is_refused_and_writes_nothing(tmp_path):
    line = refusal(key_tool("keygen", "--encrypt", "--out", tmp_path, "--name", "ci"))
    assert "needs a passphrase: set PILOT_KEY_PASSPHRASE, or run the command in a terminal" in line
    assert list(tmp_path.iterdir()) == []
    assert "at least 8 characters" in refusal(key_tool("keygen", "--encrypt", "--out", tmp_path, passphrase="short"))


def test_an_encrypted_key_is_read_with_its_passphrase_and_refused_in_one_line_without(tmp_path, site, roots,
                                                                                     release_key):
    encrypted = tmp_path / "root-a.key"
    encrypted.write_bytes(private_key_pem_of(roots[0], PASSPHRASE))
    args = ["revoke", "--root", site, "--root-key", encrypted, "--release-key", release_key.public_path]
    assert "it is encrypted and needs a passphrase" in refusal(key_tool(*args))
    assert "this passphrase does not open" in refusal(key_tool(*args, passphrase="not the passphrase"))
    assert not (site / "keys").exists()
    ok(key_tool(*args, passphrase=PASSPHRASE))
    assert (site / "keys" / "2.json").exists()


def private_key_pem_of(key, passphrase: str) -> bytes:
    from pilot.update.signing import private_key_pem

    return private_key_pem(key.private, passphrase.encode())


def test_revoke_is_signed_by_the_root_keys_alone_and_followed_only_by_archives_with_root_keys(
        site, roots, release_key, other_key):
    fake_archive(site, "1.0.0", root=roots, root_threshold=2)
    out = ok(key_tool("revoke", "--root", site, "--root-key", roots[0].private_path, "--root-key",
                      roots[1].private_path, "--release-key", other_key.public_path, "--threshold", "1"))
    assert "published key set 2: 1 release key(s), threshold 1, signed by 2 root key(s)" in out
    _, signatures = keyset_files(site, 2)
    assert {s.keyid for s in parse_signatures(signatures, "sig")} == {k.public.keyid for k in roots}
    root = KeySet(1, 2, tuple(k.public for k in roots))
    with_root = KeySet(1, 1, (release_key.public,), root=root)
    from pilot.update.verify import walk_keysets

    assert walk_keysets(with_root, 2, lambda n: keyset_files(site, n)).keys == (other_key.public,)
    with pytest.raises(PilotError, match="0 valid signature"):  # an archive without root keys cannot follow it
        walk_keysets(KeySet(1, 1, (release_key.public,)), 2, lambda n: keyset_files(site, n))

    # A second revocation drops the key the first one added: it is named as revoked.
    out = ok(key_tool("revoke", "--root", site, "--root-key", roots[0].private_path, "--root-key",
                      roots[1].private_path, "--release-key", release_key.public_path))
    assert f"revoked {other_key.public.keyid[:16]}..." in out


def test_revoke_refuses_what_the_archives_root_threshold_would_refuse_and_writes_nothing(
        site, roots, release_key, other_key):
    fake_archive(site, "1.0.0", root=roots, root_threshold=2)
    line = refusal(key_tool("revoke", "--root", site, "--root-key", roots[0].private_path,
                            "--release-key", other_key.public_path))
    assert "keys/2.json is not signed by the root keys: 1 valid root signature(s), 2 required" in line
    line = refusal(key_tool("revoke", "--root", site, "--root-key", release_key.private_path,  # a release key
                            "--release-key", other_key.public_path))
    assert "0 valid root signature(s), 2 required" in line
    line = refusal(key_tool("revoke", "--root", site, "--root-key", roots[0].private_path, "--root-key",
                            roots[1].private_path, "--release-key", roots[0].public_path))
    assert "a root key cannot be a release key" in line
    assert not (site / "keys").exists()


def test_revoke_warns_about_archives_without_root_keys(site, roots, other_key):
    fake_archive(site, "1.0.0")
    fake_archive(site, "1.1.0", root=roots[:1])
    result = key_tool("revoke", "--root", site, "--root-key", roots[0].private_path,
                      "--release-key", other_key.public_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: 1 archive(s) under") and "have no root keys" in result.stderr


@pytest.mark.parametrize(("fields", "said"), [
    ({"root_keys": [{"keyid": "x", "public": "not hex"}]}, "not a Pilot archive (its embedded keys are unreadable)"),
    ({"root_keys": "none"}, "not a Pilot archive (its embedded keys are unreadable)"),
    ({"threshold": 2}, "key set 1: threshold 2 cannot be met by 1 key(s)"),
])
def test_an_archive_whose_embedded_keys_cannot_be_read_is_one_line_naming_it(site, roots, other_key, fields, said):
    archive = fake_archive(site, "1.0.0", root=roots, **fields)
    line = refusal(key_tool("revoke", "--root", site, "--root-key", roots[0].private_path, "--release-key",
                            other_key.public_path))
    assert line == f"release: {archive.name}: {said}"
    assert not (site / "keys").exists()


def test_rotate_keys_needs_the_root_keys_when_archives_have_them_and_then_both_kinds_follow(
        site, roots, release_key, other_key):
    fake_archive(site, "1.0.0", root=roots, root_threshold=2)
    line = refusal(key_tool("rotate-keys", "--root", site, "--old-key", release_key.private_path,
                            "--new-key", other_key.private_path))
    assert "were built with root keys" in line and not (site / "keys").exists()
    out = ok(key_tool("rotate-keys", "--root", site, "--old-key", release_key.private_path, "--new-key",
                      other_key.private_path, "--root-key", roots[0].private_path, "--root-key",
                      roots[1].private_path))
    assert "signed by 2 root key(s) too" in out
    from pilot.update.verify import walk_keysets

    root = KeySet(1, 2, tuple(k.public for k in roots))
    for anchor in (KeySet(1, 1, (release_key.public,)), KeySet(1, 1, (release_key.public,), root=root)):
        assert walk_keysets(anchor, 2, lambda n: keyset_files(site, n)).keys == (other_key.public,)


def test_revoke_rewrites_the_release_keys_in_install_sh(site, roots, release_key, other_key):
    sys.path.insert(0, str(REPO / "release-tools"))
    import installer

    script = installer.render(site="https://example.test/pilot", channel="stable",
                              keys=[(release_key.public.keyid, release_key.public.raw)], threshold=1,
                              pythons=["cp311"])
    (site / "install.sh").write_bytes(script)
    ok(key_tool("revoke", "--root", site, "--root-key", roots[0].private_path, "--release-key", other_key.public_path,
                "--release-key", roots[1].public_path, "--threshold", "2"))
    text = (site / "install.sh").read_text()
    assert release_key.public.keyid not in text and other_key.public.keyid in text and "THRESHOLD=2 " in text
    expected = installer.render(site="https://example.test/pilot", channel="stable", threshold=2, pythons=["cp311"],
                                keys=[(k.public.keyid, k.public.raw) for k in (other_key, roots[1])])
    assert text.encode() == expected


# --- consistent snapshots: the immutable copy of every signing ----------------------------------------------


def resign(site: Path, release_key) -> None:
    ok(tool("resign", "--root", site, "--channel", "stable", "--key", release_key.private_path))


def snapshots(site: Path) -> list[str]:
    return sorted((p.name for p in (site / "stable" / "manifests").iterdir()), key=lambda n: (int(n.split(".")[0]), n))


def test_every_signing_writes_an_immutable_copy_first_and_the_last_ten_are_kept(one_release, release_key):
    site = one_release
    signed = {1: (manifest_bytes(site), (site / "stable" / "manifest.json.sig").read_bytes())}
    for serial in range(2, 13):  # eleven more signings (one of them a yank): serials 1 and 2 are pruned
        if serial == 7:
            ok(tool("yank", "--root", site, "--channel", "stable", "--key", release_key.private_path, "--reason",
                    "broken", "1.0.0"))
        else:
            resign(site, release_key)
        signed[serial] = manifest_bytes(site), (site / "stable" / "manifest.json.sig").read_bytes()
        assert published(site)["serial"] == serial
    assert snapshots(site) == [f"{n}.json{sig}" for n in range(3, 13) for sig in ("", ".sig")]
    anchor = KeySet(1, 1, (release_key.public,))
    for serial in range(3, 13):  # each copy is exactly what manifest.json and its .sig were after that signing
        data = (site / "stable" / "manifests" / f"{serial}.json").read_bytes()
        signatures = (site / "stable" / "manifests" / f"{serial}.json.sig").read_bytes()
        assert (data, signatures) == signed[serial]
        assert verify_manifest(data, signatures, anchor=anchor, fetch_keyset=pytest.fail, product="pilot",
                               channel="stable", now=datetime.now(UTC)).manifest.serial == serial
    ok(verify(site, release_key.public_path))


def test_a_signing_that_died_before_manifest_json_never_has_its_serial_written_again(one_release, release_key):
    """Its copy may be in a cache already: the next signing goes on above it and leaves its files as they are."""
    site = one_release
    dead = site / "stable" / "manifests" / "2.json"
    dead.write_bytes(b"the bytes of a signing that died\n")
    dead.with_name("2.json.sig").write_bytes(b"its signatures\n")
    resign(site, release_key)
    assert published(site)["serial"] == 3
    assert dead.read_bytes() == b"the bytes of a signing that died\n"
    assert (site / "stable" / "manifests" / "3.json").read_bytes() == manifest_bytes(site)
    assert snapshots(site) == ["1.json", "1.json.sig", "2.json", "2.json.sig", "3.json", "3.json.sig"]


def test_a_refused_signing_writes_no_copy(one_release, release_key):
    before = tree(one_release)
    refusal(tool("yank", "--root", one_release, "--channel", "stable", "--key", release_key.private_path,
                 "--reason", "x", "9.9.9"))
    assert tree(one_release) == before


@pytest.mark.slow
def test_a_site_address_install_sh_cannot_hold_is_refused_before_anything_is_published(site, v100, release_key):
    line = refusal(tool("publish", "--root", site, "--channel", "stable", "--base-url", "https://example.org/it's",
                        "--key", release_key.private_path, v100))
    assert "a quote cannot go into install.sh" in line
    assert tree(site) == {}  # no archive, no manifest, no installer


# --- in this process: a terminal's passphrase prompt ------------------------------------------


class TerminalStdin:
    """sys.stdin as a terminal: what makes release.py ask for a passphrase instead of refusing."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def release_module(monkeypatch):
    """release.py imported into this process, its commands called directly, so that getpass can be patched."""
    monkeypatch.syspath_prepend(str(REPO / "release-tools"))
    monkeypatch.delenv("PILOT_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("PILOT_RELEASE_NOW", raising=False)
    import release

    return release


@pytest.fixture
def prompts(monkeypatch) -> list[str]:
    """Every passphrase prompt shown on a terminal, each answered with PASSPHRASE."""
    import getpass

    asked: list[str] = []

    def answer(prompt: str = "") -> str:
        asked.append(prompt)
        return PASSPHRASE

    monkeypatch.setattr(sys, "stdin", TerminalStdin())
    monkeypatch.setattr(getpass, "getpass", answer)
    return asked


def run_command(release, *args) -> None:
    parsed = release.build_parser().parse_args([str(a) for a in args])
    parsed.run(parsed)


@pytest.mark.slow
def test_publish_with_an_encrypted_key_asks_for_its_passphrase_once(release_module, prompts, site, v100,
                                                                    release_key, tmp_path, capsys):
    encrypted = tmp_path / "release.key"
    encrypted.write_bytes(private_key_pem_of(release_key, PASSPHRASE))
    run_command(release_module, "publish", "--root", site, "--base-url", BASE_URL, "--key", encrypted, v100)
    assert prompts == [f"passphrase for {encrypted}: "]
    assert capsys.readouterr().out.startswith("published 1.0.0 to stable (serial 1")
    signatures = parse_signatures((site / "stable" / "manifest.json.sig").read_bytes(), "manifest.json.sig")
    assert [s.keyid for s in signatures] == [release_key.public.keyid]


@pytest.mark.parametrize("interrupt", [EOFError, KeyboardInterrupt])  # Ctrl-D, Ctrl-C at the prompt
def test_no_answer_at_the_passphrase_prompt_is_one_line_naming_the_key(release_module, monkeypatch, tmp_path,
                                                                        release_key, interrupt):
    import getpass

    import keys as key_roles

    def no_answer(prompt: str = "") -> str:
        raise interrupt

    monkeypatch.setattr(sys, "stdin", TerminalStdin())
    monkeypatch.setattr(getpass, "getpass", no_answer)
    encrypted = tmp_path / "release.key"
    encrypted.write_bytes(private_key_pem_of(release_key, PASSPHRASE))
    with pytest.raises(key_roles.KeyRefusal) as caught:
        key_roles.passphrase(encrypted)
    assert caught.value.one_line() == f"{encrypted}: no passphrase given"
    with pytest.raises(key_roles.KeyRefusal, match="no passphrase given"):
        key_roles.passphrase(tmp_path / "new.key", new=True)
    with pytest.raises(release_module.ReleaseError) as caught:  # what every command that signs prints
        release_module.load_signing_keys([encrypted])
    assert str(caught.value) == f"{encrypted}: no passphrase given"


def test_no_answer_to_the_second_passphrase_prompt_of_keygen_is_refused_too(release_module, monkeypatch, tmp_path):
    import getpass

    import keys as key_roles

    answers = iter([PASSPHRASE])

    def answer(prompt: str = "") -> str:
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(sys, "stdin", TerminalStdin())
    monkeypatch.setattr(getpass, "getpass", answer)
    with pytest.raises(key_roles.KeyRefusal) as caught:
        key_roles.passphrase(tmp_path / "new.key", new=True)
    assert caught.value.one_line() == f"{tmp_path / 'new.key'}: no passphrase given"


@pytest.mark.slow
def test_verify_reads_each_archive_once_however_many_interpreters_list_it(release_module, monkeypatch, one_release,
                                                                          release_key, capsys):
    import pilot.update.install

    hashed, indexes, metadata = [], [], []
    sha256_of, check_delta_index = pilot.update.install.sha256_of, release_module.check_delta_index
    check_metadata = pilot.update.install.check_metadata
    monkeypatch.setattr(pilot.update.install, "sha256_of", lambda path: hashed.append(path) or sha256_of(path))
    monkeypatch.setattr(release_module, "check_delta_index",
                        lambda root, relpath, artifact: indexes.append(relpath) or check_delta_index(root, relpath,
                                                                                                    artifact))
    monkeypatch.setattr(pilot.update.install, "check_metadata",
                        lambda path, **kw: metadata.append(kw["artifact"].python_tag) or check_metadata(path, **kw))
    run_command(release_module, "verify", "--root", one_release, "--trusted-key", release_key.public_path)
    assert "1 release(s), 1 artifact(s) match their signed size and sha256" in capsys.readouterr().out
    assert hashed == [_artifact(one_release)]  # one sha256 of the whole file, not one per python tag
    assert len(indexes) == 1
    assert metadata == ["cp311", "cp312", "cp313"]  # the cheap check stays per tag


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "change", "said"), [
    (2, {"sha256": "0" * 64}, "differs from the signed 0000000000000000..."),
    (1, {"size": 1}, "bytes, the manifest signs 1"),
    (2, {"python_tag": "cp310"}, "built for another interpreter or platform than the manifest says"),
    (1, {"build_id": "f" * 64}, "the archive's build id differs from the signed one"),
    (2, {"delta_index": {"size": 1}}, ".index: differs from the signed size and sha256"),
])
def test_verify_still_checks_every_entry_that_lists_an_archive(one_release, release_key, entry, change, said):
    """An archive is read once, but an entry of another interpreter that signs other values is refused as before."""
    document = published(one_release)
    artifact = document["releases"][0]["artifacts"][entry]
    for name, value in change.items():
        if isinstance(value, dict):
            artifact[name] = {**artifact[name], **value}
        else:
            artifact[name] = value
    sign_document(one_release, document, release_key.private_path)
    line = refusal(verify(one_release, release_key.public_path))
    assert f"releases/1.0.0/{_artifact(one_release).name}" in line and said in line
