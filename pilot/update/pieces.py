"""An archive as a sequence of pieces: the byte ranges a delta update can reuse or must fetch (pure).

Pilot's builds are reproducible, so two releases share most of their bytes, but not at the
same offsets. The zip structure says where the reusable units are: the preamble, each
member (its local header and data), each central directory entry, the end record; and,
inside the stored payload (site-packages.zip), the same again for its own members. The
pieces cover the file without gap or overlap, in order, so the file is their concatenation,
and each is known by its sha256: a piece of the new archive is found in the installed one
by content, wherever it sits there.

`read_at(offset, length) -> bytes` is the only access to the file, so the publisher (over
the artifact) and the client (over the installed archive) use this same code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from pilot.launcher import PAYLOAD_MEMBER

ReadAt = Callable[[int, int], bytes]

_EOCD = struct.Struct("<4s4H2LH")  # signature, disks, entries here, entries, directory size, offset, comment
CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
EOCD_SIGNATURE = b"PK\x05\x06"
CENTRAL_SIGNATURE = b"PK\x01\x02"
LOCAL_SIGNATURE = b"PK\x03\x04"
MAX_COMMENT = 0xFFFF
GROUP_KEY_DEPTH = 3  # "site-packages/pilot/update": a package's members and their bytecode group together


class Piece(NamedTuple):
    offset: int
    length: int
    name: str  # what it is ("preamble", a member name, "cd:" + a member name, "eocd"): only for grouping


class Zip(NamedTuple):
    """Where one zip of the archive lies: what its offsets count from (zipfile counts from the file's start
    even with a preamble in front), its first member, its central directory, and its end."""

    base: int
    first: int
    directory: int
    end: int


class Layout(NamedTuple):
    pieces: list[Piece]
    zips: list[Zip]  # the archive and its stored payload
    attributes: dict[str, tuple[bytes, int]]  # member name -> (its "version made by", its external attributes)


class NotAZip(ValueError):
    """The bytes are not laid out as a zip this module can split (the caller falls back to whole files)."""


def archive_pieces(read_at: ReadAt, size: int) -> list[Piece]:
    """The pieces of a whole archive file of `size` bytes, in order, covering it exactly."""
    return archive_layout(read_at, size).pieces


def archive_layout(read_at: ReadAt, size: int) -> Layout:
    """The pieces, where each zip lies, and what the central directories say of each member."""
    layout = Layout([], [], {})
    cuts = {0: "preamble"}
    try:
        _zip_cuts(read_at, 0, size, cuts, prefix="", layout=layout)
    except struct.error:  # a record cut short: the file is damaged, not a programming error
        raise NotAZip("a zip record is truncated") from None
    layout.pieces.extend(_pieces(cuts, size))
    layout.zips.sort()
    return layout


def _zip_cuts(read_at: ReadAt, start: int, size: int, cuts: dict[int, str], prefix: str, layout: Layout) -> None:
    """Record where each structure of the zip in [start, start + size) begins, and what it is."""
    eocd = _find_eocd(read_at, start, size)
    fields = _EOCD.unpack(read_at(eocd, _EOCD.size))
    entries, directory_size, directory_offset = fields[4], fields[5], fields[6]
    directory = eocd - directory_size
    shift = directory - directory_offset - start  # bytes in front of the zip (the preamble), as zipfile finds
    if directory < start or shift < 0:
        raise NotAZip("the central directory lies outside the zip")
    members: list[int] = []
    cuts[eocd] = f"{prefix}eocd"
    data = read_at(directory, directory_size)
    position = 0
    previous_key = None
    for _ in range(entries):
        if data[position:position + 4] != CENTRAL_SIGNATURE:
            raise NotAZip("a central directory entry is damaged")
        field = CENTRAL_HEADER.unpack_from(data, position)
        method, compressed, name_length, extra_length, comment_length, local = (
            field[4], field[8], field[10], field[11], field[12], field[16])
        start_of_name = position + CENTRAL_HEADER.size
        name = data[start_of_name:start_of_name + name_length].decode("utf-8", "replace")
        layout.attributes.setdefault(name, (data[position + 4:position + 6], field[15]))
        if group_key(name) != previous_key:  # one piece per package's entries: they change together
            cuts[directory + position] = f"{prefix}cd:{name}"
            previous_key = group_key(name)
        header = start + shift + local
        if not start <= header < directory:
            raise NotAZip(f"member {name!r} lies outside the zip")
        cuts[header] = f"{prefix}{name}"
        members.append(header)
        if prefix == "" and name == PAYLOAD_MEMBER and method == 0:  # the stored inner zip: its members too
            local_fields = LOCAL_HEADER.unpack(read_at(header, LOCAL_HEADER.size))
            inner = header + LOCAL_HEADER.size + local_fields[9] + local_fields[10]
            if inner + compressed > directory:
                raise NotAZip("the payload runs past the central directory")
            _zip_cuts(read_at, inner, compressed, cuts, prefix=f"{PAYLOAD_MEMBER}/", layout=layout)
            cuts.setdefault(inner, f"{PAYLOAD_MEMBER}/")  # the payload's own data begins: its first member
        position += CENTRAL_HEADER.size + name_length + extra_length + comment_length
    if position != directory_size:
        raise NotAZip("the central directory's size does not add up")
    layout.zips.append(Zip(start + shift, min(members, default=directory), directory, eocd + _EOCD.size + fields[7]))


def _find_eocd(read_at: ReadAt, start: int, size: int) -> int:
    tail = min(size, _EOCD.size + MAX_COMMENT)
    data = read_at(start + size - tail, tail)
    at = data.rfind(EOCD_SIGNATURE)
    if at < 0 or len(data) - at < _EOCD.size:
        raise NotAZip("no end of central directory record")
    return start + size - tail + at


def _pieces(cuts: dict[int, str], size: int) -> list[Piece]:
    offsets = sorted(o for o in cuts if 0 <= o < size)
    return [Piece(o, end - o, cuts[o]) for o, end in zip(offsets, [*offsets[1:], size], strict=True)]


def group_key(name: str) -> str:
    """Pieces whose names share this key are grouped: a package directory's members (with their
    __pycache__), its central directory entries, the head of the file (preamble, small members)."""
    zip_prefix = PAYLOAD_MEMBER + "/" if name.startswith(PAYLOAD_MEMBER + "/") else ""
    rest = name[len(zip_prefix):]
    directory_entry = rest.startswith("cd:")
    path = rest[3:] if directory_entry else rest
    return zip_prefix + "cd:" * directory_entry + "/".join(path.split("/")[:-1][:GROUP_KEY_DEPTH])


def groups(pieces: list[Piece], min_pieces: int, max_pieces: int) -> list[list[Piece]]:
    """Consecutive pieces, cut where the group key changes once a group has min_pieces, and at max_pieces:
    a release that changes one module changes the groups around it only, and a client fetches only
    those groups' listings. Deterministic, so the client groups its installed archive the same way."""
    found: list[list[Piece]] = []
    key = None
    for piece in pieces:
        this = group_key(piece.name)
        if not found or len(found[-1]) >= max_pieces or (this != key and len(found[-1]) >= min_pieces):
            found.append([])
        key = this
        found[-1].append(piece)
    return found


# --- central directories rebuilt from the members -------------------------------------------------


def rebuild_directory(read_at: ReadAt, zip_: Zip, attributes: dict[str, tuple[bytes, int]]) -> bytes | None:
    """The central directory and end record of the zip at zip_, made from its members' local headers the way
    zipfile writes them, with each member's "version made by" and attributes taken from attributes (what
    the installed archive says of a member of that name; a new one gets the most common of those). None
    when the members do not lie one after another up to the directory. The caller checks the result
    against the signed hashes: a directory this cannot rebuild exactly is fetched instead."""
    usual = max(set(attributes.values()), key=list(attributes.values()).count, default=(b"\x14\x03", 0o100644 << 16))
    entries = []
    position = zip_.first
    while position < zip_.directory:
        header = read_at(position, LOCAL_HEADER.size)
        fields = LOCAL_HEADER.unpack(header)
        if fields[0] != LOCAL_SIGNATURE or fields[2] & 0x8:  # not a member, or sizes after the data
            return None
        name_and_extra = read_at(position + LOCAL_HEADER.size, fields[9] + fields[10])
        name = name_and_extra[:fields[9]].decode("utf-8", "replace")
        made_by, external = attributes.get(name, usual)
        entries.append(CENTRAL_SIGNATURE + made_by + header[4:30] + struct.pack("<3HLL", 0, 0, 0, external,
                                                                                 position - zip_.base)
                       + name_and_extra)
        position += LOCAL_HEADER.size + fields[9] + fields[10] + fields[7]
    if position != zip_.directory:
        return None
    directory = b"".join(entries)
    end = _EOCD.pack(EOCD_SIGNATURE, 0, 0, len(entries), len(entries), len(directory), zip_.directory - zip_.base, 0)
    return directory + end
