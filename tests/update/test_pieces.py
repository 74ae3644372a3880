"""pilot.update.pieces: an archive split at its zip structures, covering every byte once."""

from __future__ import annotations

import io
import itertools
import zipfile

import pytest

from pilot.update.pieces import NotAZip, archive_pieces, group_key, groups


def pieces_of(data: bytes):
    return archive_pieces(lambda offset, length: data[offset:offset + length], len(data))


def assert_covers(pieces, size: int) -> None:
    assert pieces[0].offset == 0 and sum(p.length for p in pieces) == size
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(pieces))
    assert all(p.length > 0 for p in pieces)


def plain_zip(members: dict[str, bytes], head: bytes = b"") -> bytes:
    out = io.BytesIO()
    out.write(head)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_a_real_archive_splits_into_its_members_directories_and_payload(v1):
    data = v1.read_bytes()
    pieces = pieces_of(data)
    assert_covers(pieces, len(data))
    names = [p.name for p in pieces]
    assert names[0] == "preamble" and data[pieces[0].length:pieces[0].length + 4] == b"PK\x03\x04"
    assert {"__main__.py", "pilot_build.py", "pilot-build.json", "site-packages.zip", "eocd"} <= set(names)
    assert "site-packages.zip/site-packages/pilot/cli.py" in names  # the stored payload's own members
    assert "site-packages.zip/eocd" in names
    inner = [p for p in pieces if p.name.startswith("site-packages.zip/site-packages/")]
    assert len(inner) > 1000
    directory = [p for p in pieces if p.name.startswith("site-packages.zip/cd:")]
    assert 10 < len(directory) < 200  # one piece per package's entries, not one per entry


def test_a_zip_with_bytes_in_front_of_it_still_splits():
    data = plain_zip({"a/x.py": b"x" * 100, "a/y.py": b"y" * 100, "b/z.py": b"z"}, head=b"#!/bin/sh\nexit 0\n")
    pieces = pieces_of(data)
    assert_covers(pieces, len(data))
    assert [p.name for p in pieces] == ["preamble", "a/x.py", "a/y.py", "b/z.py", "cd:a/x.py", "cd:b/z.py", "eocd"]


@pytest.mark.parametrize("data", [b"", b"not a zip at all" * 100, plain_zip({"x": b"1"})[:-10]],
                         ids=["empty", "text", "truncated"])
def test_what_is_not_a_zip_is_refused(data):
    with pytest.raises(NotAZip):
        pieces_of(data)


def test_a_directory_that_points_outside_the_zip_is_refused():
    data = bytearray(plain_zip({"x.py": b"x" * 50}))
    entry = data.index(b"PK\x01\x02")
    data[entry + 42:entry + 46] = (10 ** 6).to_bytes(4, "little")  # the member's local header offset
    with pytest.raises(NotAZip, match="outside"):
        pieces_of(bytes(data))


def test_groups_follow_packages_and_are_the_same_for_the_same_pieces(v1):
    pieces = pieces_of(v1.read_bytes())
    grouped = groups(pieces, 12, 32)
    assert [p for g in grouped for p in g] == pieces
    assert all(1 <= len(g) <= 32 for g in grouped)
    assert grouped == groups(list(pieces), 12, 32)
    package = "site-packages.zip/site-packages/pilot/update"
    assert group_key(f"{package}/__pycache__/fetch.cpython-311.pyc") == group_key(f"{package}/fetch.py") == package
    assert group_key("site-packages.zip/cd:site-packages/rich/console.pyc") == "site-packages.zip/cd:site-packages/rich"
    assert group_key("preamble") == group_key("__main__.py") == ""


def test_a_record_cut_short_is_no_zip_rather_than_an_error(v1):
    """The installed archive shrinking under the reader: a header read comes back short."""
    data = v1.read_bytes()

    def shrinking(offset: int, length: int) -> bytes:
        return data[offset:offset + length][:10] if length == 30 else data[offset:offset + length]

    with pytest.raises(NotAZip, match="truncated"):
        archive_pieces(shrinking, len(data))
