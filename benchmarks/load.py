#!/usr/bin/env python3
"""Many concurrent update checks against nginx serving a real release tree: 304s, latency, bytes.

    python benchmarks/load.py [--clients 200] [--checks 20] [--deadline 120] [--json]

A release tree signed by `release-tools/release.py` (benchmarks/fleet.py's publish_tree: ten releases of
three platforms) is served by Debian's nginx (tests/support/nginx.py) on 127.0.0.1. Each client is a thread
with its own `HttpFetcher` (its own connection pool) that checks as the daemon's checker does: the manifest
with If-None-Match once it has an ETag, the signature file only after a 200, and every 200 verified with
`pilot.update.verify.verify_manifest` against the release key. Halfway, once every client has done half of
its checks, one more release is published: each client must then get exactly one more 200 and verify it.
So every client sees exactly two 200s and checks - 2 304s, and the run fails (exit 1) otherwise.

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

from fleet import machine, publish_release, publish_tree  # noqa: E402

from pilot.update.fetch import HttpFetcher  # noqa: E402
from pilot.update.manifest import MANIFEST_CAP  # noqa: E402
from pilot.update.verify import KeySet, load_public_key, verify_manifest  # noqa: E402
from tests.support.nginx import Nginx  # noqa: E402

SIGNATURES_CAP = 64 << 10


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--checks", type=int, default=20, help="checks per client (at least 4)")
    parser.add_argument("--releases", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=120.0, help="give up after this many seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.checks < 4:
        parser.error("--checks must be at least 4")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(load_test(args.clients, args.checks, args.releases)),
                              daemon=True)
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
