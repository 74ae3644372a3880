"""pilot.update.manifest: strict JSON, the schema plus the rules a schema cannot say, freshness, and the choice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from packaging.version import Version

from pilot.errors import ManifestError
from pilot.update.manifest import (
    MAX_DEPTH,
    Artifact,
    DeltaIndex,
    Manifest,
    check_manifest,
    choose_update,
    load_json,
    parse_manifest,
    parse_version,
)

HEX = "0123456789abcdef" * 4
ISSUED = datetime(2030, 1, 1, tzinfo=UTC)
EXPIRES = ISSUED + timedelta(days=30)


def artifact(python_tag: str = "cp311", platform_tag: str = "linux_x86_64", **extra) -> dict:
    return {
        "python_tag": python_tag, "platform_tag": platform_tag,
        "url": f"https://releases.example.test/pilot-{python_tag}-{platform_tag}.pyz",
        "size": 1234, "sha256": HEX, **extra,
    }


def release(version: str, *, artifacts: list[dict] | None = None, **extra) -> dict:
    return {"version": version, "released_at": "2029-12-01T12:00:00Z", "artifacts": artifacts or [artifact()], **extra}


def document(*releases: dict, **extra) -> dict:
    return {
        "schema_version": 1, "product": "pilot", "channel": "stable", "serial": 7,
        "issued_at": "2030-01-01T00:00:00Z", "expires_at": "2030-01-31T00:00:00Z",
        "releases": list(releases), **extra,
    }


def parse(doc: dict) -> Manifest:
    return parse_manifest(json.dumps(doc).encode())


def refused(doc_or_bytes: dict | bytes) -> str:
    """The one-line message parse_manifest refuses with."""
    data = doc_or_bytes if isinstance(doc_or_bytes, bytes) else json.dumps(doc_or_bytes).encode()
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    message = caught.value.one_line()
    assert "\n" not in message
    return message


# --- parse_manifest ---------------------------------------------------------------------------


def test_parse_manifest_reads_every_field_into_typed_values():
    delta = {"url": "https://releases.example.test/x.idx", "size": 99, "sha256": HEX, "chunk_size": 65536}
    doc = document(
        release("1.2.0", notes="fixes\n", rollout_percent=40,
                artifacts=[artifact(build_id=HEX, delta_index=delta), artifact("cp312")]),
        release("1.1.0", yanked=True, yanked_reason="corrupts state"),
        keyset_version=2, min_supported_version="1.0.0",
    )
    manifest = parse(doc)

    assert (manifest.product, manifest.channel, manifest.serial) == ("pilot", "stable", 7)
    assert manifest.issued_at == ISSUED and manifest.issued_at.tzinfo is UTC
    assert manifest.expires_at == EXPIRES
    assert manifest.keyset_version == 2
    assert manifest.min_supported_version == Version("1.0.0")
    newest, yanked = manifest.releases
    assert newest.version == Version("1.2.0")
    assert newest.released_at == datetime(2029, 12, 1, 12, tzinfo=UTC)
    assert (newest.notes, newest.rollout_percent, newest.yanked) == ("fixes\n", 40, False)
    assert newest.artifacts[0] == Artifact(
        "cp311", "linux_x86_64", "https://releases.example.test/pilot-cp311-linux_x86_64.pyz", 1234, HEX,
        build_id=HEX, delta_index=DeltaIndex(**delta),
    )
    assert newest.artifacts[1].tag == "cp312-linux_x86_64"
    assert newest.artifact_for("cp312", "linux_x86_64") is newest.artifacts[1]
    assert newest.artifact_for("cp313", "linux_x86_64") is None
    assert (yanked.yanked, yanked.yanked_reason, yanked.rollout_percent, yanked.notes) == (
        True, "corrupts state", 100, "")


def test_optional_fields_take_their_defaults():
    manifest = parse(document())
    assert manifest.releases == ()
    assert manifest.keyset_version == 1
    assert manifest.min_supported_version is None
    assert manifest.latest is None


def test_latest_is_the_newest_release_that_is_not_yanked():
    manifest = parse(document(release("1.10.0", yanked=True), release("1.9.0"), release("1.2.0")))
    assert manifest.latest.version == Version("1.9.0")  # by version order, not string order or list order


def test_a_halted_release_is_not_the_latest_and_is_not_good():
    manifest = parse(document(release("2.0", rollout_percent=0), release("1.9", rollout_percent=5), release("1.2")))
    halted, staged, _ = manifest.releases
    assert (halted.halted, halted.good, staged.halted, staged.good) == (True, False, False, True)
    assert manifest.latest.version == Version("1.9")  # a staged release is still the latest


def test_the_one_manifest_cap_is_the_clients_and_the_publishers():
    from pilot.update import updater
    from pilot.update.manifest import MANIFEST_CAP, MANIFEST_WARN_FRACTION

    assert MANIFEST_CAP == 1024 * 1024 and MANIFEST_WARN_FRACTION == 0.75
    assert updater.MANIFEST_CAP is MANIFEST_CAP  # what fetch_verified_manifest reads the manifest under
    release_tool = (Path(__file__).resolve().parents[2] / "release-tools" / "release.py").read_text()
    assert "from pilot.update.manifest import MANIFEST_CAP" in release_tool


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("serial"), "missing 'serial'"),
        (lambda d: d.update(extra=1), "unexpected field 'extra'"),
        (lambda d: d.update(schema_version=2), "schema_version: must be 1"),
        (lambda d: d.update(schema_version=True), "schema_version"),
        (lambda d: d.update(serial=True), "manifest.serial: expected integer, got boolean"),
        (lambda d: d.update(serial=7.0), "manifest.serial: expected integer, got number"),
        (lambda d: d.update(serial=0), "manifest.serial: must be at least 1"),
        (lambda d: d.update(serial=2**53), "manifest.serial: must be at most"),
        (lambda d: d.update(serial=10**30), "manifest.serial: must be at most"),
        (lambda d: d.update(product="Pilot"), "manifest.product"),
        (lambda d: d.update(expires_at=d["issued_at"]), "expires_at is not after issued_at"),
        (lambda d: d.update(issued_at="2030-02-30T00:00:00Z"), "is not a real date"),
        (lambda d: d.update(issued_at="2030-01-01T00:00:00+00:00"), "manifest.issued_at"),
        (lambda d: d["releases"][0].update(version="v1.0"), "releases[0].version"),
        (lambda d: d["releases"][0].update(version="1.0\n"), "releases[0].version"),  # `$` is strict here
        (lambda d: d["releases"][0].update(version="1.0+local"), "releases[0].version"),
        (lambda d: d["releases"][0].update(version="1!1.0"), "releases[0].version"),
        (lambda d: d["releases"][0].update(version="01.0"), "releases[0].version"),
        (lambda d: d["releases"][0].update(version="１.0"), "releases[0].version"),  # fullwidth digit
        (lambda d: d["releases"][0].update(version="1.0\u200b"), "releases[0].version"),  # zero-width space
        (lambda d: d["releases"][0].update(artifacts=[]), "needs at least 1 item"),
        (lambda d: d["releases"][0].update(rollout_percent=101), "rollout_percent: must be at most 100"),
        (lambda d: d["releases"][0].update(yanked="yes"), "yanked: expected boolean"),
        (lambda d: d["releases"][0]["artifacts"][0].update(sha256=HEX.upper()), "sha256"),
        (lambda d: d["releases"][0]["artifacts"][0].update(url="file:///etc/passwd"), "url"),
        (lambda d: d["releases"][0]["artifacts"][0].update(python_tag="cp311\u202e"), "python_tag"),
        (lambda d: d["releases"][0]["artifacts"][0].update(size=0), "size: must be at least 1"),
        (lambda d: d["releases"].append(release("1.0.0")), "version 1.0.0 is listed twice"),
        (lambda d: d["releases"][0]["artifacts"].append(artifact()), "two artifacts for the same interpreter"),
    ],
)
def test_parse_manifest_refuses_with_one_line_naming_the_problem(change, expected):
    doc = document(release("1.0"))
    parse(doc)  # the unchanged document is fine
    change(doc)
    assert expected in refused(doc)


def test_untrusted_text_in_an_error_is_escaped_and_short():
    doc = document(release("1.0"))
    doc["product"] = "\u202eevil" + "x" * 500
    message = refused(doc)
    assert "\u202e" not in message and "\\u202e" in message
    assert len(message) < 200


def test_parse_manifest_refuses_what_is_not_a_manifest():
    for data in (b"", b"[]", b"null", b'"pilot"', b"\xef\xbb\xbf{}", b"{", json.dumps(document())[:-1].encode()):
        refused(data)


# --- parse_version ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "1.2.3", "1.2.3.4", "1.0a1", "1.0rc2.post3.dev4", "999999999.0"])
def test_parse_version_accepts_canonical_versions(text):
    assert parse_version(text) == Version(text)


@pytest.mark.parametrize("text", ["", "v1.0", "1.0.0.0.0", "1.0-rc1", "1.0RC1", "1.0 ", " 1.0", "1.0\n", "1.0.x",
                                  "1234567890.0", "1.0c1",
                                  "100000000.100000000.100000000.100000000rc100000000.post100000000.dev1"])
def test_parse_version_refuses_anything_else(text):
    with pytest.raises(ManifestError, match="--version"):
        parse_version(text, "--version")


# --- check_manifest ---------------------------------------------------------------------------


def checked(manifest: Manifest, **overrides) -> None:
    arguments = {"product": "pilot", "channel": "stable", "now": ISSUED, "highest_serial": 7} | overrides
    check_manifest(manifest, **arguments)


def test_check_manifest_accepts_a_fresh_manifest_for_this_product_and_channel():
    manifest = parse(document(release("1.0")))
    checked(manifest)  # the same serial again is not a rollback
    checked(manifest, highest_serial=1, now=EXPIRES - timedelta(seconds=1))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"product": "copilot"}, "the manifest is for 'pilot', not copilot"),
        ({"channel": "beta"}, "the manifest is for channel 'stable', not beta"),
        ({"highest_serial": 8}, "serial 7 is older than the 8 already seen"),
        ({"now": EXPIRES}, "the stable manifest expired at 2030-01-31T00:00:00Z: its publisher has not re-signed it"),
        ({"now": EXPIRES + timedelta(days=400)}, "expired at 2030-01-31T00:00:00Z"),
        ({"now": EXPIRES}, "nothing is wrong with this install, which keeps its version; tell the publisher"),
    ],
)
def test_check_manifest_refuses(overrides, expected):
    manifest = parse(document(release("1.0")))
    with pytest.raises(ManifestError) as caught:
        checked(manifest, **overrides)
    assert expected in caught.value.one_line()


# --- choose_update ----------------------------------------------------------------------------

SHELF = document(
    release("1.3.0", yanked=True, yanked_reason="eats config"),
    release("1.2.0", rollout_percent=30),
    release("1.1.0"),
    release("1.0.5"),
    release("1.0.0"),
    release("0.9.0", rollout_percent=0),
)


def choose(current: str = "1.0.0", **options):
    arguments = {"current": Version(current), "python_tag": "cp311", "platform_tag": "linux_x86_64"} | options
    choice = choose_update(parse(SHELF), **arguments)
    return None if choice is None else str(choice.release.version)


def test_the_newest_release_above_current_that_is_not_yanked_and_rolled_out_is_chosen():
    assert choose() == "1.2.0"  # 1.3.0 is newer but yanked
    assert choose("1.1.0") == "1.2.0"


def test_nothing_is_chosen_when_current_is_newest_or_newer():
    assert choose("1.2.0") is None
    assert choose("5.0") is None  # never a downgrade on its own
    assert choose("1.2.0", rollout_bucket=99) is None


def test_bad_versions_are_skipped():
    assert choose(bad_versions=[Version("1.2.0")]) == "1.1.0"
    assert choose(bad_versions=[Version("1.2.0"), Version("1.1.0"), Version("1.0.5")]) is None


@pytest.mark.parametrize(("bucket", "expected"), [(0, "1.2.0"), (29, "1.2.0"), (30, "1.1.0"), (99, "1.1.0")])
def test_rollout_bucket_below_the_percentage_sees_a_staged_release(bucket, expected):
    assert choose(rollout_bucket=bucket) == expected


def test_a_zero_percent_rollout_reaches_nobody():
    assert choose("0.8", bad_versions=[Version(v) for v in ("1.2.0", "1.1.0", "1.0.5", "1.0.0")]) is None


def test_the_chosen_artifact_is_the_one_for_this_interpreter_and_platform():
    doc = document(release("2.0", artifacts=[artifact("cp312"), artifact("cp311", "macos_arm64"), artifact()]))
    choice = choose_update(parse(doc), current=Version("1.0"), python_tag="cp311", platform_tag="linux_x86_64")
    assert choice.artifact.tag == "cp311-linux_x86_64"
    assert choice.artifact.url.endswith("pilot-cp311-linux_x86_64.pyz")


def test_target_may_name_an_older_or_bad_or_staged_version_but_not_a_yanked_or_missing_one():
    assert choose("1.2.0", target=Version("1.0.0")) == "1.0.0"
    assert choose(target=Version("1.1.0"), bad_versions=[Version("1.1.0")]) == "1.1.0"
    assert choose(target=Version("0.9.0"), rollout_bucket=50) == "0.9.0"
    assert choose(target=Version("1.1")) == "1.1.0"  # 1.1 and 1.1.0 are the same version
    with pytest.raises(ManifestError, match=r"version 1\.3\.0 was yanked: eats config"):
        choose(target=Version("1.3.0"))
    with pytest.raises(ManifestError, match=r"version 4\.0 is not in the stable manifest"):
        choose(target=Version("4.0"))


# --- halted, yanked and required: what the manifest says of the running version ---------------

RUNNING = document(
    release("2.1.0", rollout_percent=0),
    release("2.0.0", yanked=True, yanked_reason="eats the task log"),
    release("1.9.0", rollout_percent=20),
    release("1.8.0"),
    release("1.5.0", yanked=True),
    release("1.0.0"),
)


def pick(current: str, doc: dict = RUNNING, **options) -> str | None:
    arguments = {"current": Version(current), "python_tag": "cp311", "platform_tag": "linux_x86_64"} | options
    choice = choose_update(parse(doc), **arguments)
    return None if choice is None else str(choice.release.version)


def test_a_halted_release_is_never_chosen_by_itself_but_may_be_asked_for():
    assert pick("1.8.0", rollout_bucket=0) == "1.9.0"
    assert pick("1.9.0") is None  # 2.1.0 is newer, halted; 2.0.0 yanked
    assert pick("1.9.0", target=Version("2.1.0")) == "2.1.0"  # --to is the user's own choice


@pytest.mark.parametrize(("current", "bucket", "expected"), [
    ("2.1.0", 0, "1.9.0"),  # halted: the newest good release rolled out here, below it
    ("2.1.0", 50, "1.8.0"),  # 1.9.0 has not reached bucket 50
    ("2.0.0", 99, "1.8.0"),  # yanked: the same
    ("1.5.0", 99, "1.8.0"),  # yanked, with a newer good release: forward
])
def test_an_install_on_a_halted_or_yanked_release_is_moved_to_the_newest_good_one(current, bucket, expected):
    assert pick(current, rollout_bucket=bucket) == expected


def test_the_move_off_a_bad_release_skips_versions_that_failed_here_and_may_find_nothing():
    assert pick("2.1.0", bad_versions=[Version("1.9.0")]) == "1.8.0"
    assert pick("2.1.0", bad_versions=[Version(v) for v in ("1.9.0", "1.8.0", "1.0.0")]) is None
    assert pick("1.8.0", rollout_bucket=99) is None  # a good release is never left for an older one


@pytest.mark.parametrize(("minimum", "bucket", "expected"), [
    ("1.8.0", 0, "1.9.0"),  # the newest rolled out here is at or above the minimum: that one
    ("1.8.0", 99, "1.8.0"),  # 1.9.0 is not rolled out here; 1.8.0 is and suffices
    ("1.9.0", 99, "1.9.0"),  # required: taken outside the bucket, the lowest good release at or above it
    ("2.0.0", 99, "1.8.0"),  # nothing good at or above it: the newest rolled out here, as always
])
def test_below_the_minimum_a_release_at_or_above_it_is_chosen_even_outside_the_rollout(minimum, bucket, expected):
    doc = {**RUNNING, "min_supported_version": minimum}
    assert pick("1.0.0", doc, rollout_bucket=bucket) == expected
    assert parse(doc).required(Version("1.0.0")) and not parse(doc).required(Version(minimum))


def test_the_standing_of_the_running_version_says_what_the_manifest_says_of_it():
    manifest = parse({**RUNNING, "min_supported_version": "1.8.0"})
    halted, yanked = manifest.standing(Version("2.1.0")), manifest.standing(Version("2.0.0"))
    below, fine, unlisted = (manifest.standing(Version(v)) for v in ("1.0.0", "1.8.0", "3.0.0"))
    assert (halted.halted, halted.yanked, halted.required) == (True, False, False)
    assert (yanked.yanked, yanked.reason, yanked.halted) == (True, "eats the task log", False)
    assert (below.required, below.minimum) == (True, Version("1.8.0"))
    assert not fine.troubled and not unlisted.troubled
    assert fine.line(Version("1.9.0")) is None

    assert halted.line(Version("1.9.0")) == (
        "pilot 2.1.0 was halted by its publisher (no new installs): go back to 1.9.0 with `pilot self-update`")
    assert yanked.line(None) == (
        "pilot 2.0.0 was yanked by its publisher: 'eats the task log'; no release to move to is offered yet")
    assert below.line(Version("1.9.0"), "(press 'u')") == (
        "pilot 1.0.0 is below 1.8.0, the oldest version the stable channel supports: update to 1.9.0 (press 'u')")


def test_no_build_for_this_platform_is_an_error_naming_the_tags():
    doc = document(release("2.0", artifacts=[artifact("cp312"), artifact("cp311", "macos_arm64")]))
    for target in (None, Version("2.0")):
        with pytest.raises(ManifestError) as caught:
            choose_update(parse(doc), current=Version("1.0"), python_tag="cp311", platform_tag="linux_x86_64",
                          target=target)
        message = caught.value.one_line()
        assert "no build for cp311-linux_x86_64" in message
        assert "cp312-linux_x86_64" in message and "cp311-macos_arm64" in message


# --- load_json --------------------------------------------------------------------------------


def load_refused(data: bytes) -> str:
    with pytest.raises(ManifestError) as caught:
        load_json(data, "thing.json")
    message = caught.value.one_line()
    assert message.startswith("thing.json: ") and "\n" not in message
    return message


def test_load_json_reads_strict_json():
    assert load_json('{"a": [1, 2.5, "é", null, true]}'.encode(), "x") == {"a": [1, 2.5, "é", None, True]}


@pytest.mark.parametrize("data", [b'{"a": 1, "a": 2}', b'{"a": {"b": 1, "b": 1}}', b'[{"k": 1, "k": 1}]'])
def test_load_json_refuses_duplicate_keys(data):
    assert "duplicate key" in load_refused(data)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_load_json_refuses_non_finite_numbers(constant):
    assert "is not JSON" in load_refused(b'{"serial": ' + constant + b"}")


@pytest.mark.parametrize("data", [b'{"a": "\xff"}', b'{"a": "\xc3"}', '{"a": 1}'.encode("utf-16"), b"\xed\xa0\x80"])
def test_load_json_refuses_bytes_that_are_not_utf8(data):
    assert "not UTF-8" in load_refused(data)


def test_load_json_bounds_nesting():
    assert load_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "x") is not None
    assert load_json(b'{"a":' * (MAX_DEPTH - 1) + b"1" + b"}" * (MAX_DEPTH - 1), "x") is not None
    assert "nested too deeply" in load_refused(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    # Deeper still, whether the decoder or the depth check notices first, it is a ManifestError, never a
    # RecursionError (a few hundred levels used to exhaust the stack in the depth check).
    for depth in (200, 400, 600, 950, 5000, 200_000):
        load_refused(b"[" * depth + b"]" * depth)
        load_refused(b'{"a":' * depth + b"1" + b"}" * depth)


def test_load_json_refuses_malformed_json_with_its_position():
    assert "line 2 column" in load_refused(b'{"a": 1,\n }')
    load_refused(b"1" * 5000)  # past the interpreter's integer-digits limit
