"""pilot.update.delta: the index a publisher writes, and a client assembling a release from it.

Real archives (v1 installed, v2 published), in memory: each test plays publisher and client
with the same code and shows what a client fetches, and that every forgery it may meet in the
index, the listing or the bytes ends in Unavailable (the updater then downloads the whole file).
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from pilot.update import delta


class Published:
    """v2 as a release tree serves it: the artifact, its index and its listing; counting what is fetched."""

    def __init__(self, artifact: Path) -> None:
        self.data = artifact.read_bytes()
        self.index, self.listing = delta.build_index(artifact, artifact.name + delta.LISTING_SUFFIX)
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.fetched = {"listing": 0, "artifact": 0}
        self.requests = 0

    def parse(self, index: bytes | None = None) -> delta.Index:
        return delta.parse_index(self.index if index is None else index, size=len(self.data), sha256=self.sha256,
                                 resolve=lambda name: name)

    def fetch_listing(self, start: int, length: int) -> bytes:
        self.fetched["listing"] += length
        self.requests += 1
        return self.listing[start:start + length]

    def fetch_artifact(self, start: int, length: int) -> bytes:
        self.fetched["artifact"] += length
        self.requests += 1
        return self.data[start:start + length]


def installed(archive: Path) -> tuple[delta.Installed, bytes]:
    data = archive.read_bytes()
    return delta.installed_pieces(lambda offset, length: data[offset:offset + length], len(data)), data


def update(published: Published, old: bytes, pieces: delta.Installed, index: delta.Index | None = None,
           fetch_artifact=None, read_installed=None) -> bytes:
    index = index or published.parse()
    steps = delta.plan(index, pieces, published.fetch_listing)
    with tempfile.TemporaryFile() as out:
        delta.assemble(steps, out.fileno(), zips=index.zips, attributes=pieces.attributes,
                       read_installed=read_installed or (lambda offset, length: old[offset:offset + length]),
                       fetch_artifact=fetch_artifact or published.fetch_artifact, sha256=published.sha256)
        out.seek(0)
        return out.read()


@pytest.fixture(scope="module")
def published(v2) -> Published:
    return Published(v2)


@pytest.fixture
def fresh(v2) -> Published:
    return Published(v2)


def test_a_release_of_the_same_code_costs_kilobytes_and_assembles_byte_for_byte(fresh, v1):
    pieces, old = installed(v1)
    assert update(fresh, old, pieces) == fresh.data
    on_the_wire = len(fresh.index) + fresh.fetched["listing"] + fresh.fetched["artifact"]
    assert on_the_wire < 32 * 1024, fresh.fetched
    assert on_the_wire < len(fresh.data) / 300


def test_the_same_archive_needs_nothing_but_its_index(fresh, v2):
    pieces, old = installed(v2)
    assert update(fresh, old, pieces) == fresh.data
    assert fresh.fetched == {"listing": 0, "artifact": 0} and fresh.requests == 0


def test_the_index_is_small_and_names_its_listing_beside_the_artifact(published, v2):
    document = json.loads(published.index)
    assert len(published.index) < 8 * 1024
    assert document["pieces"] == {"url": v2.name + ".pieces", "size": len(published.listing)}
    assert document["artifact"] == {"size": len(published.data), "sha256": published.sha256}


def test_nothing_in_common_is_fetched_in_few_requests_and_never_more_than_the_file(published, tmp_path):
    import zipfile

    unrelated = tmp_path / "other.pyz"
    with zipfile.ZipFile(unrelated, "w") as zf:
        zf.writestr("x.py", "print('unrelated')\n")
    pieces, _old = installed(unrelated)
    steps = delta.plan(published.parse(), pieces, published.fetch_listing)
    ranges = delta.remote_ranges(steps)
    assert sum(end - start for start, end in ranges) == len(published.data)
    assert all(end - start <= delta.MAX_RANGE_BYTES for start, end in ranges)


# --- what a client refuses -------------------------------------------------------------------------


def forged(published: Published, **changes) -> bytes:
    document = json.loads(published.index)
    for key, value in changes.items():
        if isinstance(value, dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(("changes", "message"), [
    ({"artifact": {"sha256": "0" * 64}}, "another archive"),  # the index of another release
    ({"artifact": {"size": 1}}, "another archive"),
    ({"format": 2}, "format 2"),
    ({"pieces": {"url": "../../elsewhere.pieces"}}, "outside its own directory"),
    ({"pieces": {"size": 40}}, "does not add up"),  # a listing shorter than its groups
    ({"counts": [10 ** 9]}, "impossible sizes"),  # a group claiming more pieces than any could hold
    ({"counts": [0]}, "impossible sizes"),
    ({"hashes": "not base64!"}, "not readable"),
    ({"hashes": ""}, "does not add up"),
    ({"zips": [[0, 0, 10, 10 ** 12]]}, "outside the artifact"),
    ({"zips": [[0, 50, 10, 20]]}, "outside the artifact"),  # the directory before the first member
    ({"zips": [[0, 0, 1, 2]] * 9}, "outside the artifact"),
], ids=["another release", "another size", "newer format", "listing elsewhere", "listing too short",
        "huge group", "empty group", "garbled hashes", "no hashes", "zip past the end", "zip backwards",
        "too many zips"])
def test_a_forged_index_is_refused(published, changes, message):
    with pytest.raises(delta.Unavailable, match=message):
        published.parse(forged(published, **changes))


@pytest.mark.parametrize("data", [b"", b"[]", b"{", b"{\"format\": 1}", b"\xff\xfe"],
                         ids=["empty", "a list", "torn", "fields missing", "not UTF-8"])
def test_an_unreadable_index_is_refused(published, data):
    with pytest.raises(delta.Unavailable):
        published.parse(data)


def test_a_listing_group_that_was_changed_is_refused(fresh, v1):
    pieces, old = installed(v1)
    fresh.listing = bytes(b ^ 0xFF for b in fresh.listing)  # every group the client fetches is wrong now
    with pytest.raises(delta.Unavailable, match="does not match its signed hash"):
        update(fresh, old, pieces)


def test_a_listing_that_does_not_add_up_to_the_artifact_is_refused(fresh, v1):
    """Pieces that overlap, run backwards or reach past the artifact cannot be written down: offsets are the
    running sum of lengths. What a forger can write is lengths that do not add up, or an empty piece."""
    pieces, _old = installed(v1)
    index = fresh.parse()
    record = delta.RECORD.pack(len(fresh.data) * 2, b"\0" * 32)  # one piece longer than the whole file
    groups = [record * count for count in index.counts]
    fresh.listing = b"".join(groups)
    resigned = index._replace(hashes=tuple(hashlib.sha256(g).digest() for g in groups))
    with pytest.raises(delta.Unavailable, match="does not add up"):
        delta.plan(resigned, pieces._replace(groups={}), fresh.fetch_listing)
    empty = [delta.RECORD.pack(0, b"\0" * 32) * count for count in index.counts]
    fresh.listing = b"".join(empty)
    with pytest.raises(delta.Unavailable, match="empty piece"):
        delta.plan(index._replace(hashes=tuple(hashlib.sha256(g).digest() for g in empty)),
                   pieces._replace(groups={}), fresh.fetch_listing)


def test_a_wrong_byte_from_the_server_is_refused(fresh, v1):
    pieces, old = installed(v1)

    def flipped(start: int, length: int) -> bytes:
        data = bytearray(fresh.fetch_artifact(start, length))
        data[len(data) // 2] ^= 0x01
        return bytes(data)

    with pytest.raises(delta.Unavailable, match="server sent a wrong byte"):
        update(fresh, old, pieces, fetch_artifact=flipped)


def test_an_installed_archive_that_changed_under_the_client_is_refused(fresh, v1):
    pieces, old = installed(v1)
    changed = bytearray(old)
    changed[len(changed) // 2] ^= 0x01  # after the client hashed its pieces
    with pytest.raises(delta.Unavailable, match="does not match the signed sha256"):
        update(fresh, old, pieces, read_installed=lambda o, n: bytes(changed[o:o + n]))


def test_the_central_directories_are_rebuilt_not_fetched(archives, v1, tmp_path):
    """A module changed early in Pilot's package moves the offsets of every member after it, so most
    of the payload's central directory differs: rebuilt from the members in place, none of it is fetched."""
    source = (Path(__file__).resolve().parents[2] / "pilot" / "__init__.py").read_text()
    changed = Published(archives.build("2.0.0", overlay={"pilot/__init__.py": source + "\nEXTRA = 1\n"}))
    pieces, old = installed(v1)
    assert update(changed, old, pieces) == changed.data
    with_rebuild = dict(changed.fetched)
    changed.fetched = {"listing": 0, "artifact": 0}
    assert update(changed, old, pieces, index=changed.parse()._replace(zips=())) == changed.data
    assert changed.fetched["artifact"] - with_rebuild["artifact"] > 5000  # the directory bytes it spared
    assert len(changed.index) + with_rebuild["listing"] + with_rebuild["artifact"] < 32 * 1024


def test_a_group_hash_is_the_sha256_of_its_records(published):
    index = published.parse()
    first = published.listing[:index.counts[0] * delta.RECORD.size]
    assert hashlib.sha256(first).digest() == index.hashes[0] == base64.b64decode(
        json.loads(published.index)["hashes"])[:32]


def test_the_report_line_says_how_much_came_and_how():
    assert delta.Report("delta", 21_434, 14_600_000, 14_621_434).line() == "downloaded 21 KB of 14.6 MB (delta)"
    assert delta.Report("full", 14_621_434, 0, 14_621_434).line() == \
        "downloaded 14.6 MB of 14.6 MB (whole archive)"
