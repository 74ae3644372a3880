"""Delta updates: fetch only the pieces of a new archive that the installed one lacks.

An artifact's index is two static files beside it, written by `release.py publish`:

  ARTIFACT.index   JSON, small, its URL, size and sha256 signed in the manifest (delta_index):
                   {"format": 1, "artifact": {"size": N, "sha256": H}, "pieces": {"url": U, "size": M},
                    "counts": [pieces in each group, ...], "hashes": base64 of each group's sha256,
                    "zips": [[base, first member, central directory, end], ...] (the archive, its payload)}
  ARTIFACT.pieces  the listing: for each piece (pilot.update.pieces) its length (8 bytes, big-endian) and
                   sha256 (32 bytes), in file order; a group's records are the sha256 its hash covers.

The client groups its installed archive the same way. A group of the new archive whose hash it has
costs nothing; any other costs its records, fetched by range from the listing and checked against
the signed group hash. Each piece is then copied from the installed archive when its sha256 is found
there, or fetched by range from the artifact (neighbours less than chunk_size apart in one request,
one range per request: GitHub answers multi-range requests with 501), and checked against its sha256.
The central directories, which a changed member's new size shifts, are rebuilt from the members once
they are in place, and only what does not match is fetched. The whole assembled file must have the
artifact's signed sha256. Any surprise (a server that ignores
or refuses ranges, a wrong byte, a delta that would fetch more than half the artifact) raises
Unavailable, and the updater downloads the whole archive instead, saying why.

Pure except `download`, whose I/O (the installed file, the fetcher, the output file) is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pilot.errors import UpdateError
from pilot.launcher import PAYLOAD_MEMBER
from pilot.update.pieces import NotAZip, Piece, Zip, archive_layout, groups, rebuild_directory

INDEX_FORMAT = 1
RECORD = struct.Struct(">Q32s")
GROUP_MIN_PIECES = 12  # measured: a one-module release then costs ~21 KB of index, listing and data
GROUP_MAX_PIECES = 32
COALESCE_GAP = 4096  # the manifest's delta_index.chunk_size: fetch a gap this small rather than split a request
LISTING_GAP = 8 * RECORD.size  # the listing's groups are small: merge only near neighbours
MAX_FETCHED_FRACTION = 0.5  # beyond this a delta saves too little for its extra requests
MAX_RANGE_BYTES = 8 * 1024 * 1024  # one request's body, held in memory while it is checked
MAX_GROUPS = 50_000  # with MAX_ZIPS, what bounds an index: INDEX_CAP
MAX_ZIPS = 8
INDEX_CAP = 4 * 1024 * 1024  # a signed index larger than this is not one of Pilot's (~3 KB): never fetched
INDEX_SUFFIX = ".index"
LISTING_SUFFIX = ".pieces"


class Unavailable(UpdateError):
    """The delta cannot be used: the reason, for the one line said before the whole download."""


class Record(NamedTuple):
    length: int
    sha256: bytes


class Index(NamedTuple):
    artifact_size: int
    artifact_sha256: str
    listing_url: str
    listing_size: int
    counts: tuple[int, ...]
    hashes: tuple[bytes, ...]
    zips: tuple[Zip, ...] = ()  # where the central directories are: rebuilt from the members, not fetched


class Report(NamedTuple):
    """How the new archive came: what `self-update --json` and the dashboard say."""

    method: str  # "delta" or "full"
    bytes_downloaded: int
    bytes_reused: int
    size: int
    note: str | None = None  # why a delta was not used

    def line(self) -> str:
        how = "delta" if self.method == "delta" else "whole archive"
        return f"downloaded {_amount(self.bytes_downloaded)} of {_amount(self.size)} ({how})"

    def as_json(self) -> dict:
        return {"method": self.method, "bytes_downloaded": self.bytes_downloaded, "bytes_reused": self.bytes_reused,
                "size": self.size, "note": self.note}


def _amount(size: int) -> str:
    if size >= 1_000_000:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.0f} KB" if size >= 1000 else f"{size} bytes"


# --- the publisher's side ----------------------------------------------------------------------


def records_of(read_at: Callable[[int, int], bytes], pieces: list[Piece]) -> list[Record]:
    return [Record(p.length, hashlib.sha256(read_at(p.offset, p.length)).digest()) for p in pieces]


def build_index(artifact: Path, listing_name: str) -> tuple[bytes, bytes]:
    """(the index, the listing) of an artifact; listing_name is the listing's file name beside it."""
    data = artifact.read_bytes()
    layout = archive_layout(lambda offset, length: data[offset:offset + length], len(data))
    pieces = layout.pieces
    records = records_of(lambda offset, length: data[offset:offset + length], pieces)
    by_piece = dict(zip(pieces, records, strict=True))
    grouped = groups(pieces, GROUP_MIN_PIECES, GROUP_MAX_PIECES)
    listing = b"".join(RECORD.pack(*by_piece[p]) for p in pieces)
    index = {
        "format": INDEX_FORMAT,
        "artifact": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "pieces": {"url": listing_name, "size": len(listing)},
        "counts": [len(group) for group in grouped],
        "hashes": base64.b64encode(b"".join(_group_hash([by_piece[p] for p in g]) for g in grouped)).decode(),
        "zips": [list(z) for z in layout.zips],
    }
    return json.dumps(index, separators=(",", ":")).encode(), listing


def _group_hash(records: list[Record]) -> bytes:
    return hashlib.sha256(b"".join(RECORD.pack(*r) for r in records)).digest()


# --- the client's side: checking what was fetched ----------------------------------------------


def parse_index(data: bytes, *, size: int, sha256: str, resolve: Callable[[str], str]) -> Index:
    """The index (its bytes already checked against the signed hash), bound to the artifact it must
    describe; resolve turns the listing's relative URL into one the fetcher may fetch."""
    try:
        document = json.loads(data.decode("utf-8"))
        artifact, listing = document["artifact"], document["pieces"]
        counts = tuple(document["counts"])
        hashes = base64.b64decode(document["hashes"], validate=True)
        zips = tuple(Zip(*z) for z in document.get("zips", ()))
        fields = (document["format"], artifact["size"], artifact["sha256"], listing["url"], listing["size"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
        raise Unavailable(f"the delta index is not readable ({type(error).__name__})") from None
    form, artifact_size, artifact_sha256, listing_url, listing_size = fields
    if form != INDEX_FORMAT:
        raise Unavailable(f"the delta index has format {form!r}, this Pilot reads {INDEX_FORMAT}")
    if (artifact_size, artifact_sha256) != (size, sha256):
        raise Unavailable("the delta index describes another archive than the signed one")
    if not (isinstance(listing_url, str) and "/" not in listing_url and listing_url not in ("", ".", "..")):
        raise Unavailable("the delta index names its listing outside its own directory")
    if not all(type(c) is int and 1 <= c <= GROUP_MAX_PIECES for c in counts) or len(counts) > MAX_GROUPS:
        raise Unavailable("the delta index has groups of impossible sizes")
    if len(hashes) != 32 * len(counts) or listing_size != RECORD.size * sum(counts) or sum(counts) > size:
        raise Unavailable("the delta index does not add up")
    if len(zips) > MAX_ZIPS or not all(all(type(v) is int for v in z) and 0 <= z.base <= z.first <= z.directory
                                        < z.end <= size for z in zips):
        raise Unavailable("the delta index places a zip outside the artifact")
    return Index(size, sha256, resolve(listing_url), listing_size, counts,
                 tuple(hashes[i:i + 32] for i in range(0, len(hashes), 32)), zips)


def parse_group(data: bytes, expected: bytes, count: int) -> list[Record]:
    if len(data) != RECORD.size * count or hashlib.sha256(data).digest() != expected:
        raise Unavailable("a group of the delta listing does not match its signed hash")
    records = [Record(*RECORD.unpack_from(data, i * RECORD.size)) for i in range(count)]
    if any(r.length == 0 for r in records):
        raise Unavailable("the delta listing has an empty piece")
    return records


# --- the client's side: what it has ------------------------------------------------------------


class Installed(NamedTuple):
    """The installed archive in pieces: where each sha256 is, each group hash's records, and what its
    central directories say of each member (to rebuild the new archive's)."""

    pieces: dict[bytes, tuple[int, int]]  # sha256 -> (offset, length)
    groups: dict[bytes, list[Record]]
    attributes: dict[str, tuple[bytes, int]]


def installed_pieces(read_at: Callable[[int, int], bytes], size: int) -> Installed:
    try:
        layout = archive_layout(read_at, size)
    except (NotAZip, ValueError) as error:
        raise Unavailable(f"the installed archive cannot be split ({error})") from None
    pieces = layout.pieces
    records = records_of(read_at, pieces)
    by_piece = dict(zip(pieces, records, strict=True))
    located = {r.sha256: (p.offset, p.length) for p, r in by_piece.items()}
    grouped = {}
    for group in groups(pieces, GROUP_MIN_PIECES, GROUP_MAX_PIECES):
        group_records = [by_piece[p] for p in group]
        grouped[_group_hash(group_records)] = group_records
    return Installed(located, grouped, layout.attributes)


# --- the plan ----------------------------------------------------------------------------------


class Step(NamedTuple):
    offset: int  # in the new archive
    record: Record
    source: int | None  # offset in the installed archive, or None: fetch it


def plan(index: Index, installed: Installed, fetch_listing: Callable[[int, int], bytes]) -> list[Step]:
    """Every piece of the new archive in order, from the installed archive where it can be."""
    firsts = [0, *itertools.accumulate(index.counts)]  # each group's first record in the listing
    wanted = [(i, firsts[i]) for i, h in enumerate(index.hashes) if h not in installed.groups]
    records: list[Record] = []
    fetched = {}
    pending = iter(wanted)
    for start, end in _coalesce([(first * RECORD.size, firsts[i + 1] * RECORD.size) for i, first in wanted],
                                gap=LISTING_GAP):
        data = fetch_listing(start, end - start)
        for i, first in pending:  # the groups in this range, in order
            fetched[i] = data[first * RECORD.size - start:firsts[i + 1] * RECORD.size - start]
            if firsts[i + 1] * RECORD.size >= end:
                break
    for i, (count, expected) in enumerate(zip(index.counts, index.hashes, strict=True)):
        records += installed.groups[expected] if i not in fetched else parse_group(fetched[i], expected, count)
    steps, offset = [], 0
    for record in records:
        located = installed.pieces.get(record.sha256)
        steps.append(Step(offset, record, located[0] if located and located[1] == record.length else None))
        offset += record.length
    if offset != index.artifact_size:
        raise Unavailable("the delta listing does not add up to the artifact's size")
    return steps


def _coalesce(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Sorted [start, end) ranges, merged where less than gap apart, none longer than MAX_RANGE_BYTES."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start - merged[-1][1] < gap and end - merged[-1][0] <= MAX_RANGE_BYTES:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def copied_members(steps: list[Step], read_new: Callable[[int, int], bytes], size: int) -> frozenset[str]:
    """The payload members of the assembled archive whose bytes were copied from the installed one, by name:
    their unpacked files can be reused (pilot.update.early.reuse_extraction)."""
    copied = {step.offset for step in steps if step.source is not None}
    prefix = PAYLOAD_MEMBER + "/"
    return frozenset(piece.name[len(prefix):] for piece in archive_layout(read_new, size).pieces
                     if piece.offset in copied and piece.name.startswith(prefix)
                     and not piece.name.startswith(prefix + "cd:") and piece.name not in (prefix, prefix + "eocd"))


def remote_ranges(steps: list[Step]) -> list[tuple[int, int]]:
    return _coalesce([(s.offset, s.offset + s.record.length) for s in steps if s.source is None], gap=COALESCE_GAP)


# --- assembling --------------------------------------------------------------------------------


class Counts(NamedTuple):
    fetched: int  # bytes fetched from the artifact (with the small gaps between merged ranges)
    reused: int  # bytes copied from the installed archive, or rebuilt from what was in place


def assemble(steps: list[Step], fd: int, *, zips: tuple[Zip, ...], attributes: dict[str, tuple[bytes, int]],
             read_installed: Callable[[int, int], bytes], fetch_artifact: Callable[[int, int], bytes], sha256: str,
             progress: Callable[[int], None] = lambda n: None) -> Counts:
    """Write the new archive into fd (a file of its own), each piece checked against its signed hash:

      1. every piece from the installed archive, and every other piece outside the central directories
         fetched by range (neighbours merged);
      2. the central directories rebuilt from the members now in place (they differ between releases by
         the offsets a changed member moved), and whatever piece of them does not match fetched;
      3. the whole file checked against the artifact's signed sha256."""
    def in_directory(step: Step) -> bool:
        return any(z.directory <= step.offset < z.end for z in zips)

    counts = Counts(0, 0)
    counts = _place([s for s in steps if s.source is not None or not in_directory(s)], fd, counts,
                    read_installed, fetch_artifact, progress)
    missing = []
    for zip_ in zips:
        rebuilt = rebuild_directory(lambda offset, length: os.pread(fd, length, offset), zip_, attributes) or b""
        for step in steps:
            if step.source is None and zip_.directory <= step.offset < zip_.end:
                data = rebuilt[step.offset - zip_.directory:step.offset - zip_.directory + step.record.length]
                if hashlib.sha256(data).digest() == step.record.sha256:
                    os.pwrite(fd, data, step.offset)
                    counts = counts._replace(reused=counts.reused + len(data))
                else:
                    missing.append(step)
    counts = _place(missing, fd, counts, read_installed, fetch_artifact, progress)
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    if digest.hexdigest() != sha256:  # a copied piece was not what the installed archive held when hashed
        raise Unavailable("the assembled archive does not match the signed sha256 (the installed archive changed?)")
    return counts


def _place(steps: list[Step], fd: int, counts: Counts, read_installed: Callable[[int, int], bytes],
           fetch_artifact: Callable[[int, int], bytes], progress: Callable[[int], None]) -> Counts:
    """Copy the pieces the installed archive has (neighbours there and here in one read and write: the
    whole-file hash checks them), fetch and check the others."""
    fetched, reused = counts
    remote = [s for s in steps if s.source is None]
    ranges = iter(_coalesce([(s.offset, s.offset + s.record.length) for s in remote], gap=COALESCE_GAP))
    current: tuple[int, bytes] | None = None  # (start, data) of the range being consumed
    for source, target, length in _runs([s for s in steps if s.source is not None]):
        for at in range(0, length, MAX_RANGE_BYTES):
            os.pwrite(fd, read_installed(source + at, min(MAX_RANGE_BYTES, length - at)), target + at)
        reused += length
    for step in remote:
        length = step.record.length
        if current is None or step.offset + length > current[0] + len(current[1]):
            start, end = next(ranges)
            current = (start, fetch_artifact(start, end - start))
            fetched += end - start
            progress(fetched)
        data = current[1][step.offset - current[0]:step.offset - current[0] + length]
        if hashlib.sha256(data).digest() != step.record.sha256:
            raise Unavailable("a piece does not match its signed hash (the server sent a wrong byte)")
        os.pwrite(fd, data, step.offset)
    return Counts(fetched, reused)


def _runs(steps: list[Step]) -> list[tuple[int, int, int]]:
    """(source, target, length) of the copies: pieces next to each other in both archives merge."""
    runs: list[list[int]] = []
    for step in steps:
        if runs and runs[-1][0] + runs[-1][2] == step.source and runs[-1][1] + runs[-1][2] == step.offset:
            runs[-1][2] += step.record.length
        else:
            runs.append([step.source, step.offset, step.record.length])
    return [(source, target, length) for source, target, length in runs]
