"""Consistent snapshots: whatever mix of a channel's files a client is served, it verifies the old manifest or the
new one, never fails for the mix, and never goes back.

Every signing writes (release.py sign_and_write) manifests/<n>.json.sig and manifests/<n>.json, then
manifest.json.sig and manifest.json, then prunes the immutable copies to the newest ten. The updater reads the
serial in the manifest.json it fetched (peek_serial, trusting nothing), verifies those bytes with
manifests/<serial>.json.sig, and falls back to manifest.json.sig where that file is missing (a site from before).

An origin mid-publish is `Origin` (the publisher's writes, in their order, interleaved with the client's fetches at
every point); a cache or mirror is `Mix` (each file at any version, the immutable copies present or not). The same
mixes over real HTTP (StaticServer + serve_chosen, HttpFetcher, ETags and 304s) are at the end.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pilot.buildinfo import BuildInfo, TrustedKey
from pilot.errors import DownloadError, ManifestError, PilotError, VerificationError
from pilot.update import state
from pilot.update.fetch import HttpFetcher, Response
from pilot.update.manifest import format_timestamp, peek_serial, snapshot_path
from pilot.update.signing import encode_signatures, public_key_of, sign
from pilot.update.updater import Settings, Updater, snapshot_url
from pilot.update.verify import KeySet, verify_manifest
from tests.support.keys import make_key
from tests.support.marks import MemoryMarks
from tests.support.server import StaticServer, serve_chosen

BASE = "https://releases.example.org/pilot/"
POINTER, LEGACY = "stable/manifest.json", "stable/manifest.json.sig"
KEEP = 10  # release.py's SNAPSHOTS_KEPT


def snapshot_sig(serial: int) -> str:
    return f"stable/{snapshot_path(serial)}.sig"


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return make_key("release", tmp_path_factory.mktemp("keys"))


class Signed:
    """The manifest of every serial and its signatures, as a publisher signs them (the bytes differ per serial)."""

    def __init__(self, key, expires: datetime | None = None) -> None:
        self.key = key
        self.expires = expires
        self._made: dict[int, tuple[bytes, bytes]] = {}

    def __call__(self, serial: int) -> tuple[bytes, bytes]:
        if serial not in self._made:
            now = datetime.now(UTC)
            document = {"schema_version": 1, "product": "pilot", "channel": "stable", "serial": serial,
                        "keyset_version": 1, "issued_at": format_timestamp(now - timedelta(hours=2)),
                        "expires_at": format_timestamp(self.expires or now + timedelta(days=1)), "releases": []}
            data = (json.dumps(document, indent=2) + "\n").encode()
            self._made[serial] = data, encode_signatures([sign(self.key.private, data)])
        return self._made[serial]


class Files:
    """A Fetcher over a chosen version of each file: {relpath: bytes}; absent is a 404. ETags as a server's."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.before: dict[int, object] = {}  # request number -> called just before it is answered
        self.retry_after: set[str] = set()

    def fetch(self, url: str, *, max_bytes: int, etag: str | None = None) -> Response:
        assert url.startswith(BASE), url
        path = url.removeprefix(BASE)
        if (hook := self.before.get(len(self.requests))) is not None:
            hook()
        self.requests.append(path)
        if path in self.retry_after:
            raise DownloadError(f"HTTP 503 for {url}", retry_after=30.0)
        if path not in self.files:
            raise DownloadError(f"HTTP 404 for {url}")
        data = self.files[path]
        tag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        if etag == tag:
            return Response(304, b"", tag, url)
        return Response(200, data, tag, url)

    def stream(self, url, *, size, chunk_size=1 << 16):
        raise AssertionError("no download here")


class Origin(Files):
    """A release tree written as release.py writes it, one step at a time."""

    def __init__(self, signed: Signed, serial: int, *, snapshots: bool = True) -> None:
        super().__init__()
        self.signed, self.snapshots = signed, snapshots
        for step in self.publish(serial):
            step()

    def publish(self, serial: int) -> list:
        """sign_and_write's writes for `serial`, in its order: each a step a client's fetch may fall between."""
        data, signatures = self.signed(serial)

        def write(path: str, content: bytes):
            return lambda: self.files.__setitem__(path, content)

        def prune() -> None:
            serials = sorted({int(p.split("/")[-1].split(".")[0]) for p in self.files if "/manifests/" in p})
            for old in serials[:-KEEP]:
                self.files.pop(f"stable/{snapshot_path(old)}", None)
                self.files.pop(f"stable/{snapshot_path(old)}.sig", None)

        steps = [write(snapshot_sig(serial), signatures), write(f"stable/{snapshot_path(serial)}", data)]
        steps = steps if self.snapshots else []  # a site from before: the mutable pair only
        return [*steps, write(LEGACY, signatures), write(POINTER, data), *([prune] if self.snapshots else [])]


class Install(Updater):
    """An updater of one install whose high-water marks are its own (a fleet in one process shares no state.json)."""

    def __init__(self, key, *, fetcher, now=None, shared_state: bool = False) -> None:
        public = public_key_of(key.private)
        build = BuildInfo(version="1.0.0", python_tag="cp311", platform_tag="linux_x86_64", build_id="0" * 64,
                          archive=Path("/nonexistent/pilot"), trusted_keys=(TrustedKey(public.keyid, public.raw),),
                          threshold=1, source_commit=None, manifest_url=None)
        settings = Settings(manifest_url=BASE + POINTER, channel="stable", boot_timeout=60.0, fetch_deadline=60.0,
                            first_check_delay=None)
        super().__init__(build=build, settings=settings, fetcher=fetcher, marks=None if shared_state else MemoryMarks(),
                         **({"now": now} if now is not None else {}))
        self.seen: list[int] = []

    def serial(self) -> int:
        serial = self.fetch_verified_manifest().serial
        self.seen.append(serial)
        return serial


def legacy_check(key, files: Files) -> int:
    """What an install from before does: manifest.json with manifest.json.sig, whatever their versions."""
    data = files.fetch(BASE + POINTER, max_bytes=1 << 20).data
    signatures = files.fetch(BASE + LEGACY, max_bytes=1 << 16).data
    anchor = KeySet(1, 1, (public_key_of(key.private),))
    return verify_manifest(data, signatures, anchor=anchor, fetch_keyset=lambda n: pytest.fail("no key sets"),
                           product="pilot", channel="stable", now=datetime.now(UTC)).manifest.serial


# --- the peek -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"serial": 7}', 7),
    (b'{"schema_version": 1, "serial": 9007199254740991}', 9007199254740991),
    (b'{"serial": 9007199254740992}', None),  # past the schema's counters
    (b'{"serial": 0}', None), (b'{"serial": -3}', None), (b'{"serial": true}', None), (b'{"serial": "7"}', None),
    (b'{"serial": 7.0}', None), (b'{"serial": 1e400}', None), (b'{"serial": NaN}', None),
    (b'{"serial": 7, "serial": 8}', None),  # duplicate keys: strict JSON
    (b'[{"serial": 7}]', None), (b"7", None), (b"", None), (b"\xff\xfe", None), (b'{"serial": 7', None),
    (b'{"a": ' * 40 + b"1" + b"}" * 40, None),  # nested too deeply
    (b'{"serial": ' + b"9" * 5000 + b"}", None),  # past Python's integer digit limit
    (b'{"serial": 7, "pad": "' + b"x" * (1 << 20) + b'"}', None),  # past the manifest cap
])
def test_the_serial_is_peeked_strictly_and_anything_odd_is_none(data, expected):
    assert peek_serial(data) == expected


def test_the_immutable_signatures_lie_beside_the_manifest():
    assert snapshot_url(BASE + POINTER, 12) == BASE + "stable/manifests/12.json"
    assert snapshot_url("/srv/site/beta/manifest.json", 3) == "/srv/site/beta/manifests/3.json"  # --from-file


# --- an origin mid-publish: every interleaving of one publish with one check ----------------------------------

STEPS = 5  # snapshot .sig, snapshot .json, manifest.json.sig, manifest.json, prune


@pytest.mark.parametrize(("before_first", "before_second"),
                         [(a, b) for a in range(STEPS + 1) for b in range(a, STEPS + 1)])
@pytest.mark.parametrize("holding", [False, True], ids=["fresh", "holding-2"])
def test_a_publish_between_any_two_fetches_yields_the_old_or_the_new_manifest(key, before_first, before_second,
                                                                               holding):
    """Serial 2 is published; serial 3's writes happen `before_first` of them before the client's first fetch and
    the rest up to `before_second` before its second (the rest after). Old or new, never an error."""
    origin = Origin(Signed(key), 1)
    for step in origin.publish(2):
        step()
    client = Install(key, fetcher=origin)
    if holding:
        assert client.serial() == 2
        origin.requests.clear()
    steps = origin.publish(3)
    for step in steps[:before_first]:
        step()
    origin.before = {1: lambda: [step() for step in steps[before_first:before_second]]}
    got = client.serial()
    for step in steps[before_second:]:
        step()
    assert got == (3 if before_first >= 4 else 2)  # the manifest.json it read decides, and nothing else
    assert origin.requests[0] == POINTER and LEGACY not in origin.requests  # the immutable file was always there
    assert client.marks.load().highest_serial == got
    assert client.serial() == 3  # the next check sees the new one


@pytest.mark.parametrize(("before_first", "before_second"),
                         [(a, b) for a in range(STEPS + 1) for b in range(a, STEPS + 1)])
def test_an_install_from_before_fails_exactly_when_it_reads_old_bytes_and_new_signatures(key, before_first,
                                                                                         before_second):
    """What the snapshots guard against: the mutable pair, fetched with a publish in between, is a mismatch
    exactly when manifest.json was read before its rewrite (step 4) and manifest.json.sig after its own (step 3)."""
    origin = Origin(Signed(key), 2)
    steps = origin.publish(3)
    for step in steps[:before_first]:
        step()
    origin.before = {1: lambda: [step() for step in steps[before_first:before_second]]}
    if before_first < 4 and before_second >= 3:
        with pytest.raises(VerificationError, match="0 valid signature"):
            legacy_check(key, origin)
    else:
        assert legacy_check(key, origin) == (3 if before_first >= 4 else 2)


def test_a_manifest_json_ten_signings_old_still_finds_its_signatures(key):
    origin = Origin(Signed(key), 1)
    client = Install(key, fetcher=origin)

    def ten_more() -> None:
        for serial in range(2, 2 + KEEP - 1):  # nine more: serial 1's copy is the oldest of the ten kept
            for step in origin.publish(serial):
                step()

    origin.before = {1: ten_more}
    assert client.serial() == 1
    assert sorted(p for p in origin.files if p.endswith(".sig") and "manifests" in p) == sorted(
        snapshot_sig(n) for n in range(1, KEEP + 1))


def test_past_ten_signings_the_copy_is_pruned_and_an_install_keeps_what_it_holds(key):
    """Pruned under a check that read manifest.json eleven signings ago: the mutable signatures do not fit it.
    An updater holding a verified manifest keeps it (and fetches the new one next time); a fresh one is refused,
    as every client was before (the cost of a cache serving manifest.json longer than ten signings apart)."""
    signed = Signed(key)
    origin = Origin(signed, 1)
    holding = Install(key, fetcher=origin)
    assert holding.serial() == 1

    def eleven_more(first: int):
        def publish() -> None:
            for serial in range(first, first + KEEP + 1):
                for step in origin.publish(serial):
                    step()
        return publish

    for step in origin.publish(2):
        step()
    origin.requests.clear()
    origin.before = {1: eleven_more(3)}
    assert holding.serial() == 1  # kept: manifest.json (2) read, its copy pruned, manifest.json.sig (13) no fit
    assert origin.requests == [POINTER, snapshot_sig(2), LEGACY]
    assert holding.marks.load().highest_serial == 1
    origin.before = {}
    assert holding.serial() == 13

    fresh = Install(key, fetcher=origin)
    origin.before = {len(origin.requests) + 1: eleven_more(14)}
    with pytest.raises(VerificationError, match="0 valid signature"):
        fresh.serial()


# --- a cache or a mirror: each file at any version ------------------------------------------------------------


def mix(signed: Signed, pointer: int, legacy: int, snapshots: str) -> Files:
    """manifest.json of serial `pointer`, manifest.json.sig of `legacy`; the immutable copies of serials 1-3 all
    present ("all"), or none (a site from before, or a mirror without them)."""
    files = Files()
    files.files[POINTER] = signed(pointer)[0]
    files.files[LEGACY] = signed(legacy)[1]
    if snapshots == "all":
        for serial in (1, 2, 3):
            files.files[snapshot_sig(serial)] = signed(serial)[1]
            files.files[f"stable/{snapshot_path(serial)}"] = signed(serial)[0]
    return files


MIXES = list(itertools.product((1, 2, 3), (1, 2, 3), ("all", "none")))


@pytest.mark.parametrize(("pointer", "legacy", "snapshots"), MIXES)
@pytest.mark.parametrize("holding", [None, 2], ids=["fresh", "holding-2"])
def test_any_mix_of_files_yields_a_verified_manifest_never_an_older_one(key, pointer, legacy, snapshots, holding):
    signed = Signed(key)
    client = Install(key, fetcher=mix(signed, 2, 2, "all"))
    if holding:
        assert client.serial() == 2
    files = client.fetcher = mix(signed, pointer, legacy, snapshots)
    consistent = snapshots == "all" or pointer == legacy
    if holding is None and not consistent:
        with pytest.raises(VerificationError, match="0 valid signature"):  # a site from before: as ever
            client.serial()
        return
    got = client.serial()
    if holding is None:
        assert got == pointer
    elif pointer < holding:
        assert got == holding and files.requests == [POINTER]  # older bytes: not even their signatures fetched
    else:
        assert got == (pointer if consistent else holding)
    assert client.marks.load().highest_serial == max(got, holding or 0)
    if snapshots == "all" and pointer >= (holding or 0):
        assert LEGACY not in files.requests


def test_an_older_manifest_json_after_a_newer_one_is_kept_silently_and_the_next_fresh_one_taken(key):
    """Two edges of a CDN, one behind: 3, then 2 (kept: 3), then 3 again, then 4. Serials never go down."""
    signed = Signed(key)
    client = Install(key, fetcher=mix(signed, 3, 3, "all"))
    seen = [client.serial()]
    for pointer in (2, 1, 3):
        client.fetcher = mix(signed, pointer, pointer, "all")
        seen.append(client.serial())
    assert seen == [3, 3, 3, 3]
    files = client.fetcher = mix(signed, 3, 3, "all")
    files.files[POINTER], files.files[snapshot_sig(4)] = signed(4)[0], signed(4)[1]
    assert client.serial() == 4


def test_a_fresh_updater_never_accepts_an_older_manifest_than_this_install_has_seen(key):
    """Another process of this install saw serial 3 (update/state.json): a fresh updater served 2 refuses it."""
    signed = Signed(key)
    Install(key, fetcher=mix(signed, 3, 3, "all"), shared_state=True).serial()
    assert state.load().highest_serial == 3
    with pytest.raises(ManifestError, match="serial 2 is older than the 3 already seen"):
        Install(key, fetcher=mix(signed, 2, 2, "all"), shared_state=True).serial()
    assert state.load().highest_serial == 3


def test_a_304_reuses_the_verified_pair_and_fetches_no_signature(key):
    signed = Signed(key)
    files = mix(signed, 2, 2, "all")
    client = Install(key, fetcher=files)
    assert client.serial() == 2
    files.files[LEGACY] = signed(3)[1]  # whatever the mutable signatures are now
    files.requests.clear()
    assert client.serial() == 2 and files.requests == [POINTER]


# --- what is still refused ------------------------------------------------------------------------------------


def test_bytes_that_fail_their_immutable_signatures_are_refused_even_by_an_install_holding_a_manifest(key):
    """An honest site never pairs them wrongly, so the silent keep is only for the mutable pair's mixes."""
    signed = Signed(key)
    client = Install(key, fetcher=mix(signed, 2, 2, "all"))
    client.serial()
    files = client.fetcher = mix(signed, 3, 3, "all")
    files.files[POINTER] = signed(3)[0].replace(b'"releases": []', b'"releases": [ ]')
    with pytest.raises(VerificationError, match="0 valid signature"):
        client.serial()
    assert files.requests == [POINTER, snapshot_sig(3)]
    assert client.marks.load().highest_serial == 2


def test_unsigned_bytes_claiming_a_high_serial_are_refused_fresh_and_cost_a_holding_install_nothing(key):
    """Nothing but the signatures vouches for the peeked serial: a claim of 99 with no copy of 99 and the mutable
    signatures of another manifest is refused by a fresh updater; one that holds serial 2 keeps it (as a 304
    would have), and its high-water mark stays 2."""
    signed = Signed(key)
    forged = signed(2)[0].replace(b'"serial": 2', b'"serial": 99')
    fresh = mix(signed, 2, 2, "all")
    fresh.files[POINTER] = forged
    with pytest.raises(VerificationError):
        Install(key, fetcher=fresh).serial()
    assert fresh.requests == [POINTER, snapshot_sig(99), LEGACY]

    client = Install(key, fetcher=mix(signed, 2, 2, "all"))
    client.serial()
    client.fetcher.files[POINTER] = forged
    assert client.serial() == 2 and client.marks.load().highest_serial == 2


def test_a_held_manifest_is_kept_only_while_it_verifies(key):
    """Expired, it is no answer: the fresh bytes' own error is."""
    now = datetime.now(UTC)
    signed = Signed(key, expires=now + timedelta(hours=1))
    clock = [now]
    client = Install(key, fetcher=mix(signed, 2, 2, "all"), now=lambda: clock[0])
    client.serial()
    clock[0] = now + timedelta(hours=2)
    client.fetcher = mix(signed, 1, 1, "all")  # an older one, expired too
    with pytest.raises(ManifestError, match="older than the 2 already seen"):
        client.serial()
    client.fetcher = mix(signed, 3, 2, "none")  # a mix of the mutable pair
    with pytest.raises(VerificationError, match="0 valid signature"):
        client.serial()


@pytest.mark.parametrize("body", [b"not json\n", b'{"serial": "3"}\n', b'{"serial": true}\n', b"[3]\n"])
def test_bytes_without_a_serial_meet_the_normal_verification(key, body):
    signed = Signed(key)
    files = mix(signed, 2, 2, "all")
    files.files[POINTER] = body
    with pytest.raises(PilotError) as refused:
        Install(key, fetcher=files).serial()
    assert files.requests == [POINTER, LEGACY]  # no immutable file named after what is not a serial
    assert isinstance(refused.value, (VerificationError, ManifestError))


def test_a_retry_after_on_the_immutable_signatures_ends_the_check_at_once(key):
    files = mix(Signed(key), 2, 2, "all")
    files.retry_after.add(snapshot_sig(2))
    with pytest.raises(DownloadError) as refused:
        Install(key, fetcher=files).serial()
    assert refused.value.retry_after == 30.0 and files.requests == [POINTER, snapshot_sig(2)]


# --- the same over real HTTP: a server serving chosen versions, HttpFetcher, ETags and 304s -------------------


def test_over_http_every_mix_a_cache_can_serve_verifies(key, tmp_path):
    signed = Signed(key)
    chosen: dict[str, int | None] = {}

    def choose(path: str) -> bytes | None:
        relpath = path.removeprefix("/pilot/")
        if relpath == POINTER:
            return signed(chosen["pointer"])[0]
        if relpath == LEGACY:
            return signed(chosen["legacy"])[1]
        if relpath.startswith("stable/manifests/") and relpath.endswith(".json.sig") and chosen["snapshots"]:
            serial = int(relpath.split("/")[-1].split(".")[0])
            return signed(serial)[1] if serial <= 3 else None
        return None

    with StaticServer(tmp_path) as server:
        serve_chosen(server, choose)
        client = Install(key, fetcher=HttpFetcher(retries=0))
        client.settings = Settings(manifest_url=f"{server.url}/pilot/{POINTER}", channel="stable",
                                   boot_timeout=60.0, fetch_deadline=60.0, first_check_delay=None)
        plan = [  # (manifest.json, manifest.json.sig, immutable copies served) -> the serial verified
            ((2, 2, True), 2),
            ((2, 3, True), 2),  # 304: the pair verified before
            ((3, 2, True), 3),  # new bytes, stale mutable signatures: the immutable ones fit
            ((2, 3, True), 3),  # a lagging edge: older bytes are not taken, what is held stays
            ((3, 3, False), 3),  # a mirror without the copies: the mutable pair, consistent (304 anyway)
        ]
        for (pointer, legacy, snapshots), expected in plan:
            chosen.update(pointer=pointer, legacy=legacy, snapshots=snapshots)
            assert client.serial() == expected, (pointer, legacy, snapshots)
        served = [path.removeprefix("/pilot/") for path in server.requests]
    assert served == [POINTER, snapshot_sig(2), POINTER, POINTER, snapshot_sig(3), POINTER, POINTER]
    assert client.seen == sorted(client.seen)
