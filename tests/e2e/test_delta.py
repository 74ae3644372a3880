"""Delta updates end to end: real archives, the real CLI, nginx (a server we did not write) and RangeServer.

Each test installs a real archive, publishes releases with release-tools/release.py (which writes each
artifact's `.index` and `.pieces` beside it and signs the index in the manifest), runs
`pilot self-update --yes --no-restart --json` and checks three things: the installed archive is
byte-identical to the signed one, what the CLI says about the download (`--json`'s `download`, the one
`pilot: downloaded ...` line) and what actually went over the wire, from the server's own record of
every answer (nginx's access log, RangeServer.served): the body bytes of each, and each Range asked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pilot.launcher import PAYLOAD_MEMBER
from tests.e2e.conftest import Install, sha256
from tests.support.archives import CACHE, ArchiveFactory, run_build
from tests.support.nginx import Nginx, needs_nginx
from tests.support.ranges import RangeServer, Served

pytestmark = pytest.mark.slow

SMALL = 64 * 1024  # what a delta of the same code may cost on the wire, manifest and all
SINGLE_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
SIGNED_FILES = ("/stable/manifest.json", "/stable/manifest.json.sig")
ANOTHER_COMMIT = 1_900_000_000  # a SOURCE_DATE_EPOCH no test build otherwise has (2030-03-17)


# --- servers: nginx or RangeServer, chosen by indirect parametrisation -------------------------------------


@pytest.fixture
def server(site, request):
    """What serves the release tree (the conftest's `server`, which release_site and install_factory use):
    RangeServer("honours") unless the test asks for nginx with parametrize("server", ["nginx"], indirect=True)."""
    kind = getattr(request, "param", "honours")
    if kind == "nginx":
        with Nginx(site) as running:
            yield running
    else:
        with RangeServer(site, kind) as running:
            yield running


EITHER_SERVER = pytest.mark.parametrize("server", [pytest.param("nginx", marks=needs_nginx), "honours"],
                                        indirect=True)


def answers(server) -> list[Served]:
    """Every answer the server has sent, once its record stopped changing (nginx logs a request just after
    it answered it; RangeServer counts a body's bytes as it writes them, even to a client that hung up)."""
    last = None
    for _ in range(200):
        now = server.requests() if isinstance(server, Nginx) else [Served(**vars(s)) for s in server.served]
        seen = [(s.path, s.status, s.body_bytes) for s in now]
        if seen == last:
            return now
        last = seen
        time.sleep(0.05)
    return now


def body_bytes(served: list[Served], *, skip: tuple[str, ...] = ()) -> int:
    return sum(s.body_bytes for s in served if s.path not in skip)


def signed_part(served: list[Served]) -> int:
    """What the update's check fetched: the manifest, its signatures (the immutable copy a client verifies it with,
    or the mutable one) and any key set (not the download)."""
    return sum(s.body_bytes for s in served if s.path in SIGNED_FILES or s.path.startswith(("/keys/",
                                                                                             "/stable/manifests/")))


def ranged(served: list[Served]) -> list[Served]:
    return [s for s in served if s.range is not None]


# --- running the update ------------------------------------------------------------------------------------


def update(pilot: Install, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = pilot.run("self-update", "--yes", "--no-restart", "--json", extra_env=env)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(result.stdout)


def download_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("pilot: downloaded")]


def installed(pilot: Install, archive: Path, version: str) -> None:
    """The install is the signed archive, byte for byte, and nothing else is left beside it."""
    assert sha256(pilot.path) == sha256(archive)
    assert pilot.stray_files() == []
    assert pilot.version() == f"pilot {version}"


def by_delta(pilot: Install, archive: Path, server, version: str, from_version: str = "1.0.0") -> dict:
    """Update, check it went by delta and that the wire agrees with what the CLI says; the figures."""
    result, report = update(pilot)
    assert (report["done"], report["version"], report["from_version"]) == ("installed", version, from_version)
    download = report["download"]
    assert download["method"] == "delta", download
    assert download["note"] is None
    assert download["size"] == archive.stat().st_size
    lines = download_lines(result)
    assert len(lines) == 1 and lines[0].endswith("(delta)"), result.stderr
    assert "no delta" not in result.stderr
    installed(pilot, archive, version)

    served = answers(server)
    assert all(s.status in (200, 206) and s.complete for s in served), served
    # The client counts the index, the listing's ranges and the artifact's ranges: everything but the check.
    assert body_bytes(served) - signed_part(served) == download["bytes_downloaded"], served
    artifact = f"/releases/{version}/{archive.name}"
    fetched = [s for s in served if s.path == artifact]
    assert fetched and all(s.status == 206 for s in fetched), fetched  # never the whole file
    assert download["bytes_reused"] + body_bytes(fetched) == download["size"]
    for answer in ranged(served):  # one range a request: GitHub answers several with 501
        match = SINGLE_RANGE.fullmatch(answer.range)
        assert match, answer.range
        first, last = map(int, match.groups())
        assert first <= last and answer.body_bytes == last - first + 1, answer
    return {"wire": body_bytes(served), "downloaded": download["bytes_downloaded"],
            "reused": download["bytes_reused"], "requests": len(served), "ranges": len(ranged(served)),
            "size": download["size"]}


def report_figures(name: str, figures: dict) -> None:
    """The measured figures, for the run's output (-s) and for whoever reads a failure."""
    print(f"\n[delta] {name}: {json.dumps(figures)}", file=sys.stderr)


# --- archives ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def v3(archives) -> Path:
    return archives.build("3.0.0")


@pytest.fixture(scope="session")
def v2_one_module_changed(archives) -> Path:
    """2.0.0 in which one module of the code (pilot/notify.py) changed: its source and so its bytecode."""
    source = (Path(__file__).resolve().parents[2] / "pilot" / "notify.py").read_text()
    return archives.build("2.0.0", overlay={"pilot/notify.py": source + "\nDELTA_TEST_CHANGE = 1\n"})


@pytest.fixture(scope="session")
def v2_at_another_commit(release_key) -> Path:
    """2.0.0 of the same code built as if committed at another time (SOURCE_DATE_EPOCH), as a real release
    is: only its build time should differ from the v2 fixture."""
    factory = ArchiveFactory([release_key.public_path])
    recipe = {"source": factory.fingerprint, "version": "2.0.0", "epoch": ANOTHER_COMMIT,
              "keys": [hashlib.sha256(release_key.public_path.read_bytes()).hexdigest()]}
    slot = CACHE / ("epoch-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:18])
    done = slot / "archive.txt"
    if done.exists() and Path(done.read_text().strip()).exists():
        return Path(done.read_text().strip())
    shutil.rmtree(slot, ignore_errors=True)
    path = run_build("2.0.0", slot / "dist", trusted_keys=[release_key.public_path],
                     env={**os.environ, "SOURCE_DATE_EPOCH": str(ANOTHER_COMMIT)})
    done.write_text(str(path))
    return path


@pytest.fixture(scope="session")
def v2_sharing_nothing(v2, session_dir) -> Path:
    """v2 with every member compressed again at another level, the payload's too: the same release, signed,
    that runs and self-tests like v2, but whose pieces are (nearly) all new to a v1 install."""
    target = session_dir / "sharing-nothing" / v2.name
    if target.exists():
        return target
    target.parent.mkdir(parents=True)
    with zipfile.ZipFile(v2) as source:
        infos = source.infolist()
        preamble = v2.read_bytes()[:min(info.header_offset for info in infos)]
        with target.open("wb") as out:
            out.write(preamble)
            with zipfile.ZipFile(out, "w") as zf:
                for info in infos:
                    data = source.read(info)
                    if info.filename == PAYLOAD_MEMBER:
                        data = _recompressed(data)
                    zf.writestr(info, data, compress_type=info.compress_type, compresslevel=1)
    target.chmod(0o755)
    return target


def _recompressed(payload: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(payload)) as inner, zipfile.ZipFile(out, "w") as zf:
        for info in inner.infolist():
            zf.writestr(info, inner.read(info), compress_type=info.compress_type, compresslevel=1)
    return out.getvalue()


# --- the delta itself --------------------------------------------------------------------------------------


@EITHER_SERVER
def test_a_release_of_the_same_code_comes_by_delta_in_kilobytes(v1, v2, release_site, install_factory, server):
    release_site.publish(v2)
    pilot = install_factory(v1)
    figures = by_delta(pilot, release_site.artifact("2.0.0"), server, "2.0.0")
    report_figures("v1 -> v2", figures)
    assert figures["wire"] < SMALL, figures
    assert sha256(release_site.artifact("2.0.0")) == sha256(v2)
    _, report = update(pilot)  # the new version finds nothing newer, and fetches nothing but the check
    assert report["done"] == "up_to_date" and report["download"] is None


@EITHER_SERVER
def test_a_release_that_changes_one_module_comes_by_delta(v1, v2_one_module_changed, release_site,
                                                          install_factory, server):
    release_site.publish(v2_one_module_changed)
    pilot = install_factory(v1)
    figures = by_delta(pilot, v2_one_module_changed, server, "2.0.0")
    report_figures("one module changed", figures)
    assert figures["wire"] < SMALL, figures


@pytest.mark.parametrize("server", ["nginx"], indirect=True)
@needs_nginx
def test_a_client_several_releases_behind_goes_straight_to_the_newest_by_delta(v1, v2, v3, release_site,
                                                                               install_factory, server):
    release_site.publish(v2)
    release_site.publish(v3)
    pilot = install_factory(v1)
    figures = by_delta(pilot, v3, server, "3.0.0")
    report_figures("v1 -> v3 (v2 skipped)", figures)
    assert figures["wire"] < SMALL, figures
    assert not [s for s in answers(server) if s.path.startswith("/releases/2.0.0/")]  # v2 is never fetched


@pytest.mark.parametrize("server", ["nginx"], indirect=True)
@needs_nginx
def test_a_release_built_at_another_commit_still_comes_by_delta(v1, v2_at_another_commit, release_site,
                                                                install_factory, server):
    """A real release is another commit, so another SOURCE_DATE_EPOCH: members that did not change must
    keep their bytes (their zip timestamps must not follow the commit), or no delta ever saves anything."""
    release_site.publish(v2_at_another_commit)
    pilot = install_factory(v1)
    figures = by_delta(pilot, v2_at_another_commit, server, "2.0.0")
    report_figures("v1 -> v2 built at another commit time", figures)
    assert figures["wire"] < SMALL, figures


@pytest.mark.parametrize("server", ["nginx"], indirect=True)
@needs_nginx
def test_a_release_that_shares_nothing_costs_at_most_the_whole_archive_and_a_little(v1, v2_sharing_nothing,
                                                                                    release_site, install_factory,
                                                                                    server):
    """Every piece new: the plan would fetch more than half the archive, so it downloads the whole file once,
    having spent only the index and the listing on finding that out."""
    release_site.publish(v2_sharing_nothing)
    pilot = install_factory(v1)
    result, report = update(pilot)
    download = report["download"]
    assert download["method"] == "full" and "of the archive" in download["note"], download
    [line] = download_lines(result)
    assert re.fullmatch(r"pilot: downloaded .* \(whole archive\): no delta \(it would fetch \d+% of the "
                        r"archive\), so the whole archive", line), line
    installed(pilot, v2_sharing_nothing, "2.0.0")
    served = answers(server)
    size = v2_sharing_nothing.stat().st_size
    wire = body_bytes(served, skip=SIGNED_FILES)
    report_figures("sharing nothing", {"wire": body_bytes(served), "size": size, "ratio": round(wire / size, 4)})
    assert wire <= 1.05 * size
    assert [s.status for s in served if s.path.endswith(".pyz")] == [200]  # no range of it was fetched at all


# --- fallbacks: every misbehaving server ends in the whole download, said once -----------------------------


FALLBACKS = {
    "ignores": ("ignores", 416, r"does not serve byte ranges \(HTTP 200 to a Range request\)"),
    "refuses-416": ("refuses", 416, r"refuses byte ranges \(HTTP 416\)"),
    "refuses-501": ("refuses", 501, r"refuses byte ranges \(HTTP 501\)"),
    "drops": ("drops", 416, r"ended after \d+ of \d+ bytes"),
    "corrupts": ("corrupts", 416, r"does not match its signed hash"),
}
SUFFIXES = {"listing": ".pieces", "artifact": ".pyz"}


def misbehave_on(server: RangeServer, suffix: str, behaviour: str, refuse_status: int) -> None:
    """RangeServer misbehaving on the files ending in suffix only, honouring ranges of every other one."""
    server.refuse_status = refuse_status

    def choose(handler) -> bool:
        server.behaviour = behaviour if handler.path.endswith(suffix) else "honours"
        return False  # RangeServer then answers, the way just chosen

    server.override = choose


@pytest.mark.parametrize("where", SUFFIXES)
@pytest.mark.parametrize("case", FALLBACKS)
def test_a_server_that_gets_ranges_wrong_ends_in_the_whole_download_said_once(v1, v2, release_site,
                                                                               install_factory, server, case, where):
    behaviour, status, reason = FALLBACKS[case]
    release_site.publish(v2)
    misbehave_on(server, SUFFIXES[where], behaviour, status)
    pilot = install_factory(v1)
    result, report = update(pilot)
    download = report["download"]
    assert download["method"] == "full", download
    assert re.search(reason, download["note"]), download["note"]
    assert download["note"].startswith("no delta (") and download["note"].endswith("), so the whole archive")
    lines = [line for line in result.stderr.splitlines() if "no delta" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pilot: downloaded ") and "(whole archive): no delta (" in lines[0], lines[0]
    assert re.search(reason, lines[0]), lines[0]
    installed(pilot, v2, "2.0.0")

    served = answers(server)
    size = v2.stat().st_size
    # A whole file answering a Range is hung up on unread; what the server had pushed into the sockets'
    # buffers by then (on loopback: 32 KB to 3 MB, whatever the file's size) is counted apart. The listing's
    # 53 KB fit in those buffers at once; the artifact's 11 MB do not, and are never all sent.
    unread = [s for s in ranged(served) if s.status == 200]
    assert all(not s.complete for s in unread if s.path.endswith(".pyz")), unread
    wire = body_bytes(served, skip=SIGNED_FILES) - body_bytes(unread)
    report_figures(f"fallback {case} on the {where}", {"wire": body_bytes(served), "size": size, "over": wire - size,
                                                        "unread_200": body_bytes(unread), "requests": len(served)})
    assert wire <= 1.05 * size + SMALL, served
    asked = [s.range for s in ranged(served) if s.path.endswith(SUFFIXES[where])]
    if behaviour in ("ignores", "refuses"):
        assert len(asked) == 1, asked  # the answer would be the same: not asked again
    elif behaviour == "corrupts":
        assert len(asked) == len(set(asked)), asked  # a wrong byte is not asked for again
    else:  # a dropped connection is retried (1 + 3 tries), then nothing more of the delta
        assert len(set(asked)) == 1 and len(asked) <= 4, asked
    whole = [s for s in served if s.path.endswith(".pyz") and s.range is None]
    assert [(s.status, s.body_bytes) for s in whole] == [(200, size)]  # the fallback: one whole download


def test_delta_never_downloads_the_whole_archive_without_asking_for_the_index(v1, v2, release_site,
                                                                              install_factory, server):
    release_site.publish(v2)
    pilot = install_factory(v1)
    result, report = update(pilot, PILOT_DELTA="never")
    assert report["download"] == {"method": "full", "bytes_downloaded": v2.stat().st_size, "bytes_reused": 0,
                                  "size": v2.stat().st_size, "note": None}
    assert download_lines(result) == [f"pilot: downloaded {_amount(v2)} of {_amount(v2)} (whole archive)"]
    installed(pilot, v2, "2.0.0")
    served = answers(server)
    assert not [s for s in served if s.path.endswith((".index", ".pieces")) or s.range is not None], served


def _amount(path: Path) -> str:
    from pilot.update.delta import _amount as amount

    return amount(path.stat().st_size)


# --- a stop during the delta -------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_during_the_delta_leaves_the_install_as_it_was_and_a_later_update_works(
        v1, v2, release_site, install_factory, server, signum):
    release_site.publish(v2)
    pilot = install_factory(v1)
    before = sha256(pilot.path)
    arrived, released = threading.Event(), threading.Event()

    def stall(handler) -> bool:  # the first range of the artifact never comes
        if handler.path.endswith(".pyz") and handler.headers.get("Range") and not released.is_set():
            arrived.set()
            released.wait(60)
            return True
        return False

    server.override = stall
    process = pilot.popen("self-update", "--yes", "--no-restart", "--json")
    try:
        assert arrived.wait(60), "the update never asked for a range of the artifact"
        assert len(pilot.stray_files()) == 1, pilot.stray_files()  # the new archive, being assembled
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        released.set()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signum, stdout + stderr
    assert "Traceback" not in stderr, stderr
    assert json.loads(stdout)["error"].startswith("interrupted"), stdout
    assert sha256(pilot.path) == before
    assert not pilot.backup.exists()
    assert pilot.stray_files() == []
    assert pilot.version() == "pilot 1.0.0"

    server.override = None
    server.served.clear()  # count the next update's answers alone
    figures = by_delta(pilot, v2, server, "2.0.0")
    assert figures["wire"] < SMALL, figures
