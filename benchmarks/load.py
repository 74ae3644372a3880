#!/usr/bin/env python3
"""Many concurrent update checks against nginx serving a real release tree: 304s, latency, bytes.

    python benchmarks/load.py [--clients 200] [--checks 20] [--deadline 120] [--json]

A release tree signed by `release-tools/release.py` (benchmarks/fleet.py's publish_tree: ten releases of
four platforms) is served by Debian's nginx (tests/support/nginx.py) on 127.0.0.1. Each client is a thread
with its own `HttpFetcher` (its own connection pool) that checks as the daemon's checker does: the manifest
with If-None-Match once it has an ETag, the signature file only after a 200, and every 200 verified with
`pilot.update.verify.verify_manifest` against the release key. Halfway, once every client has done half of
its checks, one more release is published: each client must then get exactly one more 200 and verify it.
So every client sees exactly two 200s and checks - 2 304s, and the run fails (exit 1) otherwise.

    python benchmarks/load.py --publishes 20 [--clients 200] [--legacy-clients 100] [--server nginx|python]

Publishing under load (consistent snapshots): while `release.py resign` re-signs the channel `--publishes`
times in a row (each signing writes manifests/<serial>.json and .sig, then manifest.json.sig and manifest.json),
every client checks again and again, a few milliseconds apart, until the last signing is done, then once more.
`--clients` check through `Updater.fetch_verified_manifest` (the client's own code: manifest.json, then the
immutable manifests/<serial>.json.sig; each its own high-water marks and ETag cache), `--legacy-clients` as
installs from before do (manifest.json paired with manifest.json.sig). The run fails unless the first kind had
no error at all, saw non-decreasing serials and ended on the last one; the second kind's mismatches are counted
(they are what the snapshots prevent), not failed on.

Latency is the wall time of one conditional GET (or of the GET and the signature's after a 200) in the
client, on the same 2 cores as nginx and the other clients' threads: it includes waiting for the GIL.
The bytes per answer are nginx's own ($bytes_sent in its access log): benchmarks/fleet.py uses them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from fleet import machine, percentile, publish_release, publish_tree, release_tool  # noqa: E402

from pilot.buildinfo import BuildInfo, TrustedKey  # noqa: E402
from pilot.update.fetch import HttpFetcher  # noqa: E402
from pilot.update.manifest import MANIFEST_CAP  # noqa: E402
from pilot.update.updater import SIGNATURES_CAP, Settings, Updater  # noqa: E402
from pilot.update.verify import KeySet, load_public_key, verify_manifest  # noqa: E402
from tests.support.marks import MemoryMarks  # noqa: E402
from tests.support.nginx import Nginx  # noqa: E402


@dataclass
class Client:
    """One checker: its ETag, its tallies and its latencies."""

    url: str
    anchor: KeySet
    fetcher: HttpFetcher = field(default_factory=lambda: HttpFetcher(retries=0))
    etag: str | None = None
    answered_304: int = 0
    verified_200: int = 0
    latencies: list[float] = field(default_factory=list)
    latencies_304: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def check(self) -> None:
        began = time.perf_counter()
        try:
            response = self.fetcher.fetch(self.url, max_bytes=MANIFEST_CAP, etag=self.etag)
            if response.status == 304:
                self.answered_304 += 1
                self.latencies_304.append(time.perf_counter() - began)
            else:
                signatures = self.fetcher.fetch(self.url + ".sig", max_bytes=SIGNATURES_CAP).data
                verify_manifest(response.data, signatures, anchor=self.anchor, fetch_keyset=self._no_keysets,
                                product="pilot", channel="stable", now=None)
                self.verified_200 += 1
                self.etag = response.etag
        except Exception as error:  # tallied: the run reports every failure instead of stopping at one
            self.errors.append(f"{type(error).__name__}: {error}")
        self.latencies.append(time.perf_counter() - began)

    @staticmethod
    def _no_keysets(version: int) -> tuple[bytes, bytes]:
        raise AssertionError(f"the tree has no key set {version}")


def run_clients(clients: list[Client], checks: int, between_halves) -> float:
    """Every client does `checks` checks, `between_halves()` running once all have done the first half."""
    half = checks // 2
    barrier = threading.Barrier(len(clients), action=between_halves)

    def work(client: Client) -> None:
        for _ in range(half):
            client.check()
        barrier.wait()
        for _ in range(checks - half):
            client.check()

    threads = [threading.Thread(target=work, args=(client,), daemon=True) for client in clients]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def load_test(clients: int, checks: int, releases: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="pilot-load-") as tmp:
        root = Path(tmp)
        site = publish_tree(root, releases)
        anchor = KeySet(version=1, threshold=1, keys=(load_public_key((root / "keys" / "fleet.pub").read_bytes()),))
        with Nginx(site) as nginx:
            url = f"{nginx.url}/stable/manifest.json"
            fleet = [Client(url, anchor) for _ in range(clients)]
            seconds = run_clients(fleet, checks, lambda: publish_release(root, f"1.{releases}.0"))
            served = nginx.requests(at_least=sum(len(c.latencies) for c in fleet) + sum(c.verified_200 for c in fleet))
        return report(fleet, checks, seconds, served, (site / "stable" / "manifest.json").stat().st_size)


def milliseconds(latencies: list[float]) -> dict[str, float]:
    return {"p50": round(1000 * statistics.median(latencies), 2), "p99": round(1000 * percentile(latencies, 0.99), 2),
            "max": round(1000 * max(latencies), 2)}


def report(fleet: list[Client], checks: int, seconds: float, served: list, manifest_size: int) -> dict:
    latencies = [latency for client in fleet for latency in client.latencies]
    latencies_304 = [latency for client in fleet for latency in client.latencies_304]
    answered_304 = sum(c.answered_304 for c in fleet)
    verified = sum(c.verified_200 for c in fleet)
    by_status: dict[int, list[int]] = {}
    for entry in served:
        by_status.setdefault(entry.status, []).append(entry.bytes_sent - entry.body_bytes)
    errors = [error for client in fleet for error in client.errors]
    as_expected = not errors and all(c.verified_200 == 2 and c.answered_304 == checks - 2 for c in fleet)
    return {
        "clients": len(fleet), "checks_per_client": checks, "seconds": round(seconds, 2),
        "checks_per_second": round(len(latencies) / seconds, 1),
        "answered_304": answered_304, "verified_200": verified, "errors": len(errors), "first_errors": errors[:3],
        "fraction_304": round(answered_304 / len(latencies), 4),
        "latency_ms": milliseconds(latencies),  # every check, 200s with their signature and verification
        "latency_304_ms": milliseconds(latencies_304) if latencies_304 else None,
        "nginx_header_bytes": {str(status): round(statistics.mean(sizes))
                               for status, sizes in sorted(by_status.items())},
        "manifest_bytes": manifest_size,
        "as_expected": as_expected,
    }


# --- publishing under load: the immutable snapshots against the mutable pair ---------------------------------


class FleetUpdater(Updater):
    """The client's own fetch and verification, with high-water marks of its own (a thread is one install here:
    threads of one process share one update/state.json, which would make one install of them all)."""

    def __init__(self, url: str, anchor: KeySet) -> None:
        keys = tuple(TrustedKey(key.keyid, key.raw) for key in anchor.keys)
        build = BuildInfo(version="1.0.0", python_tag="cp311", platform_tag="linux_x86_64", build_id="0" * 64,
                          archive=Path("/nonexistent/pilot"), trusted_keys=keys, threshold=anchor.threshold,
                          source_commit=None, manifest_url=None)
        settings = Settings(manifest_url=url, channel="stable", boot_timeout=60.0, fetch_deadline=60.0,
                            first_check_delay=None)
        super().__init__(build=build, settings=settings, fetcher=HttpFetcher(retries=0), marks=MemoryMarks())


@dataclass
class Checker:
    """One install checking again and again: through the updater (new) or the mutable pair (legacy)."""

    check_once: object  # () -> the serial verified
    serials: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    checks: int = 0

    def check(self) -> None:
        self.checks += 1
        try:
            self.serials.append(self.check_once())
        except Exception as error:  # tallied: a verification error is what is counted
            self.errors.append(f"{type(error).__name__}: {error}")

    @property
    def decreases(self) -> int:
        return sum(1 for a, b in zip(self.serials, self.serials[1:], strict=False) if b < a)


def legacy_check(client: Client) -> object:
    """The pair an install from before fetches: manifest.json (If-None-Match), then manifest.json.sig after a 200."""
    verified: list[int] = []

    def check() -> int:
        response = client.fetcher.fetch(client.url, max_bytes=MANIFEST_CAP, etag=client.etag)
        if response.status == 304:
            return verified[-1]
        signatures = client.fetcher.fetch(client.url + ".sig", max_bytes=SIGNATURES_CAP).data
        serial = verify_manifest(response.data, signatures, anchor=client.anchor, fetch_keyset=client._no_keysets,
                                 product="pilot", channel="stable", now=None).manifest.serial
        client.etag = response.etag
        verified.append(serial)
        return serial

    return check


def serve(site: Path, kind: str):
    if kind == "nginx":
        return Nginx(site)
    from tests.support.server import StaticServer

    return StaticServer(site)


def publish_under_load(clients: int, legacy_clients: int, publishes: int, server: str, pause: float) -> dict:
    import random

    with tempfile.TemporaryDirectory(prefix="pilot-snapshots-") as tmp:
        root = Path(tmp)
        site = publish_tree(root, 2)
        anchor = KeySet(version=1, threshold=1, keys=(load_public_key((root / "keys" / "fleet.pub").read_bytes()),))
        with serve(site, server) as running:
            url = f"{running.url}/stable/manifest.json"
            new = [Checker(FleetUpdater(url, anchor).fetch_verified_manifest) for _ in range(clients)]
            for checker in new:
                checker.check_once = (lambda f: lambda: f().serial)(checker.check_once)
            old = [Checker(legacy_check(Client(url, anchor))) for _ in range(legacy_clients)]
            done = threading.Event()
            publish_times: list[float] = []

            def publisher() -> None:
                try:
                    for _ in range(publishes):
                        began = time.perf_counter()
                        release_tool("resign", "--root", str(site), "--key", str(root / "keys" / "fleet.key"))
                        publish_times.append(time.perf_counter() - began)
                finally:
                    done.set()

            def work(checker: Checker, rng: random.Random) -> None:
                while not done.is_set():
                    checker.check()
                    time.sleep(rng.uniform(0, pause))
                checker.check()  # after the last signing: everyone must end on it

            threads = [threading.Thread(target=work, args=(c, random.Random(i)), daemon=True)
                       for i, c in enumerate(new + old)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            publishing = threading.Thread(target=publisher, daemon=True)
            publishing.start()
            publishing.join()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - began
        final = json.loads((site / "stable" / "manifest.json").read_bytes())["serial"]
    return snapshot_report(new, old, publishes, publish_times, seconds, final, server)


def snapshot_report(new: list[Checker], old: list[Checker], publishes: int, publish_times: list[float],
                    seconds: float, final: int, server: str) -> dict:
    def tally(fleet: list[Checker]) -> dict:
        errors = [error for checker in fleet for error in checker.errors]
        return {"clients": len(fleet), "checks": sum(c.checks for c in fleet), "errors": len(errors),
                "verification_errors": sum(e.startswith(("VerificationError", "ManifestError")) for e in errors),
                "first_errors": errors[:3], "decreasing_serials": sum(c.decreases for c in fleet),
                "ended_on_the_last": sum(bool(c.serials) and c.serials[-1] == final for c in fleet)}

    figures = {"server": server, "publishes": len(publish_times), "seconds": round(seconds, 2),
               "seconds_per_publish": round(statistics.mean(publish_times), 3) if publish_times else None,
               "final_serial": final, "new": tally(new), "legacy": tally(old)}
    ok = figures["new"]
    figures["as_expected"] = (len(publish_times) == publishes and ok["errors"] == 0 and ok["decreasing_serials"] == 0
                              and ok["ended_on_the_last"] == len(new))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--checks", type=int, default=20, help="checks per client (at least 4)")
    parser.add_argument("--releases", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=120.0, help="give up after this many seconds")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--publishes", type=int, default=0,
                        help="publishing under load: re-sign this many times while every client checks")
    parser.add_argument("--legacy-clients", type=int, default=100,
                        help="with --publishes: clients that pair manifest.json with manifest.json.sig")
    parser.add_argument("--server", choices=("nginx", "python"), default="nginx",
                        help="with --publishes: nginx, or tests/support/server.py's StaticServer")
    parser.add_argument("--pause", type=float, default=0.05, help="with --publishes: at most this many seconds "
                        "between a client's checks (a random part of it)")
    args = parser.parse_args(argv)
    if args.checks < 4:
        parser.error("--checks must be at least 4")
    result: dict = {}
    if args.publishes:
        def scenario() -> dict:
            return publish_under_load(args.clients, args.legacy_clients, args.publishes, args.server, args.pause)
    else:
        def scenario() -> dict:
            return load_test(args.clients, args.checks, args.releases)
    worker = threading.Thread(target=lambda: result.update(scenario()), daemon=True)
    worker.start()
    worker.join(args.deadline)
    if worker.is_alive():
        print(f"load test: not done after {args.deadline:g} s", file=sys.stderr)
        return 1  # the clients are daemon threads; nginx is stopped by its atexit handler
    if not result:
        return 1  # the worker's traceback is on stderr
    result["machine"] = machine()
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.publishes:
        new, old = result["new"], result["legacy"]
        print(f"{result['machine']}\n{result['publishes']} signings ({result['seconds_per_publish']} s each) in "
              f"{result['seconds']} s on {result['server']}: {new['clients']} clients through the immutable "
              f"snapshots, {new['checks']} checks, {new['errors']} errors, {new['decreasing_serials']} serials going "
              f"down, {new['ended_on_the_last']} ended on serial {result['final_serial']}; {old['clients']} clients "
              f"pairing manifest.json with manifest.json.sig, {old['checks']} checks, {old['errors']} errors "
              f"({old['verification_errors']} verification)")
    else:
        latency = result["latency_ms"]
        print(f"{result['machine']}\n{result['clients']} clients x {result['checks_per_client']} checks in "
              f"{result['seconds']} s ({result['checks_per_second']} checks/s): {result['answered_304']} x 304, "
              f"{result['verified_200']} x 200 verified, {result['errors']} errors; 304 fraction "
              f"{result['fraction_304']:.2%}; latency p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
              f"max {latency['max']} ms (304s alone: {result['latency_304_ms']}); nginx header bytes by status "
              f"{result['nginx_header_bytes']}")
    return 0 if result["as_expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
