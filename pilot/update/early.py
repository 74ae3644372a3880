"""Unpack a new archive while it downloads, when the network and not the machine is the bottleneck.

Most of an update's pre-flight is creating the new build's ~1,200 files (0.5-1 ms of kernel
time each on a plain disk). On a slow link the download leaves the cores idle, so a thread
follows the file as it is written, parses the archive's members in order (they sit one after
another: the preamble, the small entry members, then the stored payload whose own members
follow each other too), and unpacks the payload into a private staging directory beside the
extractions. Once the whole file's signed hash has matched and its metadata has been checked,
the staging copy is put in place as the new build's extraction, exactly as the launcher would
(pilot.launcher.place_extraction, under the same lock), and the pre-flight finds it warm.

Nothing in the staging directory is installed or run before that hash matches: a failed or
cancelled download, a damaged or hostile archive (a member name that climbs out, more
uncompressed bytes than EXPANSION_CAP times the signed size, a layout this code does not know)
only deletes it, and the pre-flight unpacks the verified archive itself as before.

On a fast link (loopback, a LAN) the download already uses the CPU, and a second busy thread
would slow both: `auto` starts the thread only when the first bytes arrive slower than
AUTO_BELOW_BYTES_PER_SECOND. PILOT_UNPACK_DURING_DOWNLOAD=always|never overrides it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from pilot.launcher import (
    METADATA_CAP,
    METADATA_MEMBER,
    PAYLOAD_MEMBER,
    extraction_complete,
    extraction_dir,
    extraction_lock,
    extraction_root,
    member_path,
    open_payload,
    pid_alive,
    place_extraction,
    unpack,
    unpacked_here,
)
from pilot.update.pieces import CENTRAL_HEADER, CENTRAL_SIGNATURE, LOCAL_HEADER, LOCAL_SIGNATURE

MODES = ("auto", "always", "never")
AUTO_BELOW_BYTES_PER_SECOND = 16 * 1024 * 1024  # unpacking here keeps up with ~25 MB/s of archive on one core
AUTO_SAMPLE_BYTES = 1024 * 1024  # decide once this much has arrived...
AUTO_SAMPLE_SECONDS = 0.25  # ... or this long has passed, whichever is first
EXPANSION_CAP = 16  # Pilot's payload inflates about 4x; more than this is no archive of ours
READ_BYTES = 1024 * 1024
STAGING_PREFIX = ".pilot_"
STAGING_SUFFIX = ".early-"



class Abandoned(Exception):
    """The archive cannot be unpacked early (not an error of the update: the pre-flight unpacks it)."""


class EarlyUnpack:
    """Follows a download into `target`; `written(n)` after each chunk, then `finish(build_id)` or `abandon()`."""

    def __init__(self, target: Path, size: int, mode: str = "auto", *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.size = size
        self.mode = mode
        self.clock = clock
        self.first: tuple[float, int] | None = None  # (when, how much) the first bytes arrived
        self.received = 0
        self.staging: str | None = None
        self.build_id: str | None = None
        self.error: Exception | None = None
        self.finished = False
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._decided = mode != "auto"
        if mode == "always":
            self._start()

    # --- the download's side

    def written(self, received: int) -> None:
        """The download has written `received` bytes so far."""
        with self._cond:
            self.received = received
            self._cond.notify_all()
        if self._decided:
            return
        if self.first is None:  # the rate counts from here: the connection's set-up is no measure of the link
            self.first = (self.clock(), received)
            return
        elapsed, sample = self.clock() - self.first[0], received - self.first[1]
        if sample >= AUTO_SAMPLE_BYTES or elapsed >= AUTO_SAMPLE_SECONDS:
            self._decided = True
            if sample < AUTO_BELOW_BYTES_PER_SECOND * max(elapsed, 1e-6):
                self._start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def finish(self, build_id: str) -> bool:
        """After the signed hash and the metadata matched: wait for the thread, put its copy in place.
        True when the new build's extraction is complete now."""
        if self._thread is None:
            return False
        self._thread.join()
        if self.error is not None or not self.finished or self.build_id != build_id:
            self.abandon()
            return False
        _put_in_place(self.staging, build_id)
        self.staging = None
        return True

    def abandon(self) -> None:
        """The download failed or was cancelled: stop, and leave nothing behind."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    # --- the thread

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pilot-early-unpack", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._cond:  # the download opens the file: wait for its first bytes
                while self.received == 0 and not self._stop:
                    self._cond.wait(0.1)
            with open(self.target, "rb") as stream:
                self._reader = _Follower(stream.fileno(), self)
                self._unpack_archive()
            self.finished = True
        except Exception as error:  # every failure only means the pre-flight unpacks
            self.error = error

    def _unpack_archive(self) -> None:
        reader = self._reader
        reader.skip_to(LOCAL_SIGNATURE)  # the sh preamble in front of the zip
        while True:
            member = reader.local_header()
            if member is None:
                raise Abandoned("the archive has no payload member")
            name, method, size, length = member
            if name == METADATA_MEMBER:
                self.build_id = self._metadata(reader.read(size), method, length)
            elif name == PAYLOAD_MEMBER and method == 0:
                if self.build_id is None:
                    raise Abandoned("the payload comes before the metadata")
                self._unpack_payload(reader.position, size)
                return
            else:
                reader.skip(size)

    def _metadata(self, data: bytes, method: int, length: int) -> str:
        if length > METADATA_CAP:
            raise Abandoned("the metadata is implausibly large")
        text = _inflate_all(data, method, length)
        build_id = json.loads(text.decode("utf-8")).get("build_id")
        if not isinstance(build_id, str) or not build_id.isalnum():
            raise Abandoned("the metadata names no build id")
        return build_id

    def _unpack_payload(self, start: int, size: int) -> None:
        reader = self._reader
        self.staging = _staging(self.build_id)
        shutil.rmtree(self.staging, ignore_errors=True)
        os.makedirs(self.staging)
        budget = EXPANSION_CAP * self.size
        while True:
            member = reader.local_header(end=start + size)
            if member is None:
                break
            name, method, compressed, length = member
            budget -= length
            if budget < 0:
                raise Abandoned("the payload inflates to more than any archive of Pilot's")
            path = _safe_path(self.staging, name)
            if unpacked_here(name):  # not another interpreter's native files
                self._unpack_member(path, method, compressed, length)
            else:
                reader.skip(compressed)
        self._apply_modes(reader.read(start + size - reader.position))

    def _unpack_member(self, path: str, method: int, compressed: int, length: int) -> None:
        if path.endswith("/"):
            self._reader.skip(compressed)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        inflater = zlib.decompressobj(-15) if method == 8 else None
        if method not in (0, 8):
            raise Abandoned(f"a member is compressed with method {method}")
        written = 0
        with open(path, "wb") as out:
            for chunk in self._reader.chunks(compressed):
                while chunk:  # a bounded piece at a time: a small input may inflate enormously
                    data, chunk = (inflater.decompress(chunk, READ_BYTES), inflater.unconsumed_tail) if inflater \
                        else (chunk, b"")
                    written += len(data)
                    if written > length:
                        raise Abandoned("a member inflates to more than it says")
                    out.write(data)
        if written != length:
            raise Abandoned("a member inflates to less than it says")

    def _apply_modes(self, directory: bytes) -> None:
        """The permissions are in the payload's central directory only (its end, now read)."""
        offset = 0
        while directory[offset:offset + 4] == CENTRAL_SIGNATURE:
            fields = CENTRAL_HEADER.unpack_from(directory, offset)
            name_length, extra_length, comment_length, external = fields[10], fields[11], fields[12], fields[15]
            start = offset + CENTRAL_HEADER.size
            name = directory[start:start + name_length].decode("utf-8")
            mode = (external >> 16) & 0o7777
            if mode and not name.endswith("/") and unpacked_here(name):
                os.chmod(_safe_path(self.staging, name), mode)
            offset = start + name_length + extra_length + comment_length


class _Follower:
    """Reads a file that is still being written, waiting for bytes that have not arrived yet."""

    def __init__(self, fd: int, owner: EarlyUnpack) -> None:
        self.fd = fd
        self.owner = owner
        self.position = 0

    def _wait_for(self, end: int) -> None:
        owner = self.owner
        if end > owner.size:
            raise Abandoned("the archive's members run past its signed size")
        with owner._cond:
            while owner.received < end:
                if owner._stop:
                    raise Abandoned("the download ended")
                owner._cond.wait(0.1)

    def read(self, n: int) -> bytes:
        return b"".join(self.chunks(n))

    def chunks(self, n: int):
        end = self.position + n
        while self.position < end:
            self._wait_for(min(end, self.position + READ_BYTES))
            data = os.pread(self.fd, min(READ_BYTES, end - self.position), self.position)
            if not data:
                raise Abandoned("the file is shorter than it was said to be")
            self.position += len(data)
            yield data

    def skip(self, n: int) -> None:
        self._wait_for(self.position + n)
        self.position += n

    def skip_to(self, signature: bytes) -> None:
        """Past whatever precedes the first zip member (the preamble: text, at most 64 KiB)."""
        head = b""
        while signature not in head:
            if len(head) > 64 * 1024:
                raise Abandoned("no zip member in the first 64 KiB")
            head += self.read(min(4096, self.owner.size - self.position) or 1)
        self.position -= len(head) - head.index(signature)

    def local_header(self, end: int | None = None) -> tuple[str, int, int, int] | None:
        """(name, method, compressed size, size) of the member that starts here, positioned at its data;
        None where the members end (the central directory, or `end`)."""
        if end is not None and self.position >= end:
            return None
        fields = LOCAL_HEADER.unpack(self.read(LOCAL_HEADER.size))
        signature, flags, method, compressed, length, name_length, extra_length = (
            fields[0], fields[2], fields[3], fields[7], fields[8], fields[9], fields[10])
        if signature != LOCAL_SIGNATURE:
            self.position -= LOCAL_HEADER.size
            return None
        if flags & 0x8 or compressed == 0xFFFFFFFF:  # sizes after the data, or zip64: not what Pilot builds
            raise Abandoned("a member's sizes are not in its header")
        name = self.read(name_length).decode("utf-8" if flags & 0x800 else "cp437")
        self.skip(extra_length)
        return name, method, compressed, length


def _inflate_all(data: bytes, method: int, length: int) -> bytes:
    if method == 0:
        return data
    if method != 8:
        raise Abandoned(f"a member is compressed with method {method}")
    inflater = zlib.decompressobj(-15)
    out = inflater.decompress(data, length + 1)
    if len(out) != length:
        raise Abandoned("a member inflates to another size than it says")
    return out


def _safe_path(root: str, name: str) -> str:
    try:
        return member_path(root, name)  # a directory's name ends in "/", and so does its path
    except ValueError as error:
        raise Abandoned(str(error)) from None


def _staging(build_id: str) -> str:
    """This process's private copy of build_id in the making (sweep_staging removes it if the process dies)."""
    return os.path.join(extraction_root(), f"{STAGING_PREFIX}{build_id}{STAGING_SUFFIX}{os.getpid()}")


def _put_in_place(staging: str, build_id: str) -> None:
    """Under the extraction lock, as the launcher does: the finished copy becomes the build's extraction,
    unless another process completed one meanwhile (then the copy is dropped)."""
    directory = extraction_dir(build_id)
    lock = extraction_lock(directory)
    try:
        if extraction_complete(directory, build_id):
            shutil.rmtree(staging, ignore_errors=True)
        else:
            place_extraction(staging, directory, build_id)
    finally:
        os.close(lock)


def reuse_extraction(archive: Path, build_id: str, installed_build_id: str, same: frozenset[str]) -> bool:
    """After a delta update: the new build's extraction made from the installed build's, where a member is
    the same bytes (`same`: payload member names), by hard links, with only the other members unpacked,
    so that the pre-flight finds it warm without creating ~1,200 files. The archive is verified already.
    Under the extraction lock, into a staging copy, put in place as the launcher would. False when the
    installed build's copy is incomplete or anything fails: then the pre-flight unpacks as usual."""
    import zipfile

    old = extraction_dir(installed_build_id)
    if not same or not extraction_complete(old, installed_build_id):
        return False
    if extraction_complete(extraction_dir(build_id), build_id):
        return True
    staging = _staging(build_id)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        with open(archive, "rb") as stream, zipfile.ZipFile(stream) as outer, open_payload(outer, stream) as zf:
            members = [info for info in zf.infolist() if not info.is_dir() and unpacked_here(info.filename)]
            rest = [info for info in members if not (info.filename in same and _link(old, staging, info))]
            unpack(zf, rest, staging)
        _put_in_place(staging, build_id)
        return True
    except (OSError, ValueError, zipfile.BadZipFile, Abandoned):
        shutil.rmtree(staging, ignore_errors=True)
        return False


def _link(old: str, staging: str, info) -> bool:
    """Hard-link the installed build's copy of a member when it has the member's size and mode."""
    source, target = _safe_path(old, info.filename), _safe_path(staging, info.filename)
    try:
        status = os.stat(source)
    except OSError:
        return False
    mode = (info.external_attr >> 16) & 0o7777
    if status.st_size != info.file_size or (mode and status.st_mode & 0o7777 != mode):
        return False
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.link(source, target)
    return True


def sweep_staging(root: Path | None = None) -> list[Path]:
    """Staging copies of updaters that died (kill -9) before finishing or abandoning them."""
    removed = []
    for path in Path(root or extraction_root()).glob(f"{STAGING_PREFIX}*{STAGING_SUFFIX}*"):
        pid = path.name.rpartition(STAGING_SUFFIX)[2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
