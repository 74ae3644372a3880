"""Attacks on delta updates: the index, the listing and the ranges a client assembles a release from.

Every case publishes real releases with release-tools/release.py (artifact, `.index`, `.pieces`, the index
signed in the manifest), serves them from a RangeServer that honours ranges, lets the attacker change what
it wants, and runs `pilot self-update --yes --no-restart` on a copy of v1. A delta is only ever a cheaper
way to the signed archive: whatever the attacker did, either the update ends with the signed archive
installed byte for byte, by the whole download, with one `no delta (...)` line saying why, or, where the
whole download is bad too, it is refused with exit 3. Never a traceback, never a file left beside the install.

Two kinds of attacker: one who controls the server but not the signing key (changing any signed byte of
the index is refused by its hash), and a key holder's mistake or a compromised publisher (a validly signed
index that lies), against which the index's own bindings and the listing's structure are the defence.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from pilot.update import delta
from tests.conftest import run_release_tool
from tests.e2e.conftest import Install, sha256
from tests.security.conftest import refused
from tests.support.ranges import RangeServer
from tests.support.repo_sim import RepoSim, endless, respond

pytestmark = pytest.mark.slow

RECORD = struct.Struct(">Q32s")


def threat(name: str, defence: str):
    return pytest.mark.threat("attack", name, defence=defence)


@pytest.fixture
def server(site):
    """A server that honours ranges (the conftest's StaticServer ignores them): the one repo and pilot use."""
    with RangeServer(site, "honours") as running:
        yield running


@pytest.fixture(scope="session")
def v3(archives) -> Path:
    return archives.build("3.0.0")


@dataclass
class Scene:
    repo: RepoSim
    pilot: Install
    key: Path
    before: str

    # -- publishing, as release.py does

    def publish(self, *archives: Path) -> dict:
        for archive in archives:
            result = run_release_tool("publish", "--root", str(self.repo.root), "--channel", "stable",
                                      "--base-url", self.repo.url, "--key", str(self.key), str(archive))
            assert result.returncode == 0, result.stderr
        return self.document()

    def document(self) -> dict:
        return json.loads(self.repo.manifest.read_bytes())

    def resign(self, document: dict) -> None:
        """The manifest as changed, validly signed by the release key (a key holder's mistake, or worse)."""
        document["serial"] += 1
        self.repo.publish(document)

    def entry(self, document: dict, version: str) -> dict:
        [release] = [r for r in document["releases"] if r["version"] == version]
        return release["artifacts"][0]

    def artifact(self, version: str) -> Path:
        return next((self.repo.root / "releases" / version).glob("*.pyz"))

    def index(self, version: str) -> Path:
        return self.artifact(version).with_name(self.artifact(version).name + delta.INDEX_SUFFIX)

    def listing(self, version: str) -> Path:
        return self.artifact(version).with_name(self.artifact(version).name + delta.LISTING_SUFFIX)

    def path_of(self, path: Path) -> str:
        return "/" + path.relative_to(self.repo.root).as_posix()

    # -- the outcomes

    def update(self):
        return self.pilot.run("self-update", "--yes", "--no-restart")

    def fell_back(self, result, version: str, reason: str) -> str:
        """The signed archive installed by the whole download, after one line naming why not by delta."""
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [line for line in result.stderr.splitlines() if "no delta" in line]
        assert len(lines) == 1, result.stderr
        assert re.fullmatch(r"pilot: downloaded .* \(whole archive\): no delta \(.*\), so the whole archive",
                            lines[0]), lines[0]
        assert re.search(reason, lines[0]), lines[0]
        assert sha256(self.pilot.path) == sha256(self.artifact(version))
        assert sha256(self.pilot.backup) == self.before
        assert self.pilot.stray_files() == []
        assert self.pilot.version() == f"pilot {version}"
        return lines[0]

    def refused(self, result, *messages: str) -> str:
        return refused(self.pilot, result, self.before, *messages)

    def ranges_asked(self, path: str) -> list[tuple[int, int]]:
        """The [first, last] byte of every Range request for path, as the server read them."""
        asked = []
        for served in self.repo.server.served:
            if served.path == path and served.range is not None:
                first, last = re.fullmatch(r"bytes=(\d+)-(\d+)", served.range).groups()
                asked.append((int(first), int(last)))
        return asked


@pytest.fixture
def scene(repo, pilot, release_key) -> Scene:
    return Scene(repo, pilot, release_key.private_path, sha256(pilot.path))


# --- forging a validly signed index and listing -----------------------------------------------------------


def records_of(listing: bytes) -> list[tuple[int, bytes]]:
    return [RECORD.unpack_from(listing, at) for at in range(0, len(listing), RECORD.size)]


def forge(scene: Scene, version: str, *, records=None, counts=None, index_changes=None) -> None:
    """Rewrite version's listing (records: a function of the list of (length, sha256)) and its index (group
    hashes recomputed to match, then index_changes applied), and sign the manifest over the new index."""
    index = json.loads(scene.index(version).read_bytes())
    listing = scene.listing(version).read_bytes()
    if records is not None:
        forged = records(records_of(listing))
        listing = b"".join(RECORD.pack(length, digest) for length, digest in forged)
        counts = counts(index["counts"], len(forged)) if counts else index["counts"]
        assert sum(counts) == len(forged)
        groups, start = [], 0
        for count in counts:
            groups.append(hashlib.sha256(listing[start * RECORD.size:(start + count) * RECORD.size]).digest())
            start += count
        index.update(counts=counts, hashes=base64.b64encode(b"".join(groups)).decode())
        index["pieces"]["size"] = len(listing)
    (index_changes or (lambda i: None))(index)
    data = json.dumps(index, separators=(",", ":")).encode()
    scene.listing(version).write_bytes(listing)
    scene.index(version).write_bytes(data)
    document = scene.document()
    scene.entry(document, version)["delta_index"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    scene.resign(document)


def flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# --- the control -------------------------------------------------------------------------------------------


def test_the_untouched_release_comes_by_delta(scene, v2):
    """The control for every case below: the same release, as published, goes by delta."""
    scene.publish(v2)
    result = scene.update()
    assert result.returncode == 0, result.stderr
    assert re.search(r"^pilot: downloaded \d+ KB of .* \(delta\)$", result.stderr, re.MULTILINE), result.stderr
    assert sha256(scene.pilot.path) == sha256(v2) and scene.pilot.stray_files() == []


# --- the index, changed by whoever controls the server -----------------------------------------------------


@threat("Delta index: bytes changed after signing", "the index's sha256 is signed in the manifest")
def test_tampered_index(scene, v2):
    scene.publish(v2)
    flip(scene.index("2.0.0"))
    scene.fell_back(scene.update(), "2.0.0", r"the delta index: sha256 [0-9a-f]+\.\.\. is not the signed")


@threat("Delta index: bytes added after signing", "the index's size is signed, and is the cap of its fetch")
def test_index_with_bytes_added(scene, v2):
    scene.publish(v2)
    with scene.index("2.0.0").open("ab") as stream:
        stream.write(b" ")
    scene.fell_back(scene.update(), "2.0.0", r"larger than the \d+-byte cap")


@threat("Delta index: another artifact's index served in its place",
        "the hash signed for this artifact's index, not any signed index")
def test_index_of_another_release_swapped_in(scene, v2, v3):
    scene.publish(v2, v3)  # both validly indexed and signed
    scene.index("3.0.0").write_bytes(scene.index("2.0.0").read_bytes())
    scene.fell_back(scene.update(), "3.0.0", r"the delta index: (sha256|\d+ bytes where)")


@threat("Delta index: a huge body served where the index is",
        "the fetch stops at the signed size (a Content-Length above it is refused unread)")
@pytest.mark.parametrize("how", ["endless", "announced"])
def test_index_too_large(scene, v2, how):
    scene.publish(v2)
    path = scene.path_of(scene.index("2.0.0"))
    if how == "endless":
        scene.repo.route(path, endless(prefix=scene.index("2.0.0").read_bytes()))
    else:
        scene.repo.route(path, respond(b"{}", headers={"Content-Length": str(1 << 32)}, content_length=False))
    scene.fell_back(scene.update(), "2.0.0", r"larger than the \d+-byte cap")


@threat("Delta index: the server answers its URL with an error", "a missing index is only a missing shortcut")
def test_index_missing(scene, v2):
    scene.publish(v2)
    scene.index("2.0.0").unlink()
    scene.fell_back(scene.update(), "2.0.0", r"HTTP 404")


# --- the index, signed but lying ---------------------------------------------------------------------------


@threat("Delta index: a validly signed manifest whose delta_index is another release's",
        "the index names the artifact (size, sha256) it describes; it must be the signed one")
def test_signed_index_of_another_release(scene, v2, v3):
    document = scene.publish(v2, v3)
    scene.entry(document, "3.0.0")["delta_index"] = scene.entry(document, "2.0.0")["delta_index"]
    scene.resign(document)
    scene.fell_back(scene.update(), "3.0.0", r"the delta index describes another archive than the signed one")


@threat("Delta index: signed, claiming a bigger artifact", "the index's artifact size must be the signed size")
def test_signed_index_claiming_a_bigger_artifact(scene, v2):
    scene.publish(v2)
    forge(scene, "2.0.0", index_changes=lambda index: index["artifact"].update(size=index["artifact"]["size"] + 1))
    scene.fell_back(scene.update(), "2.0.0", r"describes another archive than the signed one")


@threat("Delta listing: signed, its pieces adding up to more bytes than the artifact",
        "the pieces must add up to the signed size exactly, before any byte is fetched")
def test_signed_listing_claiming_more_bytes_than_the_artifact(scene, v2):
    scene.publish(v2)
    forge(scene, "2.0.0", records=lambda rs: [*rs[:-1], (rs[-1][0] + 1000, rs[-1][1])])
    scene.fell_back(scene.update(), "2.0.0", r"the delta listing does not add up to the artifact's size")
    assert scene.ranges_asked(scene.path_of(scene.artifact("2.0.0"))) == []


@threat("Delta listing: signed, one piece claiming 2**63 bytes", "the same sum: no range is asked for it")
def test_signed_listing_with_an_oversized_piece(scene, v2):
    scene.publish(v2)
    forge(scene, "2.0.0", records=lambda rs: [(1 << 63, rs[0][1]), *rs[1:]])
    scene.fell_back(scene.update(), "2.0.0", r"does not add up to the artifact's size")
    assert scene.ranges_asked(scene.path_of(scene.artifact("2.0.0"))) == []


@threat("Delta listing: signed, with a zero-length piece", "a piece has at least one byte")
def test_signed_listing_with_an_empty_piece(scene, v2):
    scene.publish(v2)
    forge(scene, "2.0.0", records=lambda rs: [rs[0], (0, hashlib.sha256(b"").digest()), *rs[1:]],
          counts=lambda counts, total: [counts[0] + 1, *counts[1:]] if counts[0] < 32 else [1, *counts])
    scene.fell_back(scene.update(), "2.0.0", r"the delta listing has an empty piece")


@threat("Delta listing: signed, pieces re-cut (a boundary moved, the total kept)",
        "pieces are lengths in file order, so ranges cannot overlap or run backwards; each piece's sha256")
def test_signed_listing_with_pieces_recut(scene, v2):
    scene.publish(v2)
    size = scene.artifact("2.0.0").stat().st_size
    # The boundary between two pieces v1 lacks (pilot_build.py, pilot_build.pyc) moves by a byte: both are fetched.
    forge(scene, "2.0.0", records=lambda rs: [*rs[:3], (rs[3][0] + 1, rs[3][1]), (rs[4][0] - 1, rs[4][1]), *rs[5:]])
    scene.fell_back(scene.update(), "2.0.0", r"a piece does not match its signed hash \(the server sent a wrong byte\)")
    asked = scene.ranges_asked(scene.path_of(scene.artifact("2.0.0")))
    assert asked and all(0 <= first <= last < size for first, last in asked), asked  # inside the file, forwards
    assert all(a[1] < b[0] for a, b in itertools.pairwise(asked)), asked  # in order, none overlapping


@threat("Delta index: signed, naming a listing outside its directory",
        "the listing is a plain name beside the index, resolved by the client")
@pytest.mark.parametrize("name", ["../1.0.0/pilot.pyz.pieces", "http://203.0.113.9/x.pieces", "..", ""])
def test_signed_index_naming_a_listing_elsewhere(scene, v2, name):
    scene.publish(v2)
    forge(scene, "2.0.0", index_changes=lambda index: index["pieces"].update(url=name))
    scene.fell_back(scene.update(), "2.0.0", r"names its listing outside its own directory")
    assert [p for p in scene.repo.server.requests if p.endswith(".pieces")] == []


@threat("Delta index: signed, with groups of impossible sizes", "1 to 32 pieces a group, hashes for every group")
@pytest.mark.parametrize("change", ["zero-count", "huge-count", "short-hashes"])
def test_signed_index_with_impossible_groups(scene, v2, change):
    scene.publish(v2)
    changes = {
        "zero-count": lambda index: index.update(counts=[0, *index["counts"]]),
        "huge-count": lambda index: index.update(counts=[10**9]),
        "short-hashes": lambda index: index.update(hashes=index["hashes"][:-44]),
    }
    forge(scene, "2.0.0", index_changes=changes[change])
    scene.fell_back(scene.update(), "2.0.0", r"groups of impossible sizes|does not add up")


@threat("Delta index: signed, its URL on another host than the manifest's",
        "the index URL must be under the release root, as the artifact's is: nothing is fetched elsewhere")
def test_signed_index_url_on_another_host(scene, v2, site):
    document = scene.publish(v2)
    with RangeServer(site) as elsewhere:  # another port of 127.0.0.1: another host, for the release root
        spec = scene.entry(document, "2.0.0")["delta_index"]
        spec["url"] = spec["url"].replace(scene.repo.url, elsewhere.url)
        scene.resign(document)
        result = scene.update()
        assert elsewhere.requests == []
    # The index is refused; the archive itself is signed and under the root: it is downloaded whole.
    scene.fell_back(result, "2.0.0", r"the delta index URL .* another host")


@threat("Delta index: signed, naming the artifact itself as its index",
        "an index must be one: it is parsed, and refused, before any of it is used")
def test_signed_index_that_is_the_artifact(scene, v2):
    document = scene.publish(v2)
    entry = scene.entry(document, "2.0.0")
    entry["delta_index"].update(url=entry["url"], size=entry["size"], sha256=entry["sha256"])
    scene.resign(document)
    scene.fell_back(scene.update(), "2.0.0", r"the signed delta index is \d+ bytes, more than any of Pilot's")
    # Refused by its signed size before any of it is fetched: the archive is downloaded once.
    assert scene.repo.server.body_bytes(scene.path_of(scene.artifact("2.0.0"))) == entry["size"]


# --- the listing and the bytes, changed by whoever controls the server -------------------------------------


@threat("Delta listing: a group's bytes changed", "each group's sha256 is in the signed index")
def test_tampered_listing(scene, v2):
    scene.publish(v2)
    flip(scene.listing("2.0.0"))
    flip(scene.listing("2.0.0"), at=0)  # the first group too: v1 lacks that one, so it is fetched
    scene.fell_back(scene.update(), "2.0.0", r"a group of the delta listing does not match its signed hash")


@threat("Delta listing: another release's listing served in its place", "the same group hashes")
def test_listing_of_another_release(scene, v2, v3):
    scene.publish(v2, v3)
    scene.listing("3.0.0").write_bytes(scene.listing("2.0.0").read_bytes())
    scene.fell_back(scene.update(), "3.0.0", r"a group of the delta listing does not match its signed hash")


@threat("Delta ranges: a piece the client fetches altered on the server, the whole file too",
        "each piece's sha256, then the whole download's: refused in one line")
def test_altered_artifact_refused_by_delta_and_whole_download(scene, v2):
    scene.publish(v2)
    flip(scene.artifact("2.0.0"), at=100)  # in the sh preamble, which names the version: v1's differs, it is fetched
    scene.refused(scene.update(), "sha256")


@threat("Delta ranges: a piece the client reuses altered on the server",
        "the assembled file must have the signed sha256: the altered byte was never used")
def test_altered_artifact_in_a_piece_the_client_has(scene, v2):
    scene.publish(v2)
    flip(scene.artifact("2.0.0"))  # the middle of the payload: a dependency v1 has byte for byte
    result = scene.update()
    assert result.returncode == 0, result.stderr
    assert "(delta)" in result.stderr and "no delta" not in result.stderr
    assert sha256(scene.pilot.path) == sha256(v2)  # the signed archive, not the server's altered copy
    assert scene.pilot.stray_files() == []
