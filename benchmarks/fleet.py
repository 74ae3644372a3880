#!/usr/bin/env python3
"""What a fleet of Pilot daemons asks of the release origin in a day: requests per second, 304s, bytes.

    python benchmarks/fleet.py [--clients 1000000] [--retry-after none|seconds|date|all] [--json]

Every client runs the daemon checker's own schedule (pilot.daemon.checker): the first check
`random_first_delay` after its start, then `next_delay` after each outcome, with the server's Retry-After
through `bounded_retry_after`, just as `UpdateChecker.step` does. Only the network is simulated: each
check is a conditional GET of the manifest (a client holding the current manifest's ETag gets 304,
headers only; else 200 and then the signature file, as `Updater.fetch_verified_manifest` does), and a
failed check is what `HttpFetcher(wait_for_retry_after=False)` does: with a Retry-After, one request and
that delay; without one, its `retries` more tries `backoff * 2**n` seconds apart, all counted at the origin.

The day: clients start at random over one check interval before it (that warm-up is not counted, and its
first checks are the 200s every daemon start costs), one publish (the ETag changes once), and a one-hour
outage in which the origin answers 503, without Retry-After, with `Retry-After: <seconds>`, or with
`Retry-After: <HTTP-date of the outage's end>` (the fetcher turns a date into the seconds left until it).
Sizes: the manifest and its signature as `release-tools/release.py publish` writes them for a channel of
several releases (built in a temp dir, --releases), and response headers as measured from nginx.

Targets (exit status 1 if missed): the peak request rate in the two intervals after the outage is at most
3 x the steady mean rate, and at least 95 % of the successful checks are answered 304. The simulation is an
event calendar of one-second buckets of client ids, pure Python, split over --processes (the clients are
independent: the origin's answers depend only on the time), and its figures are counted per 1-second and per
10-second bucket; the peak target is taken over 10-second buckets, which a 20,000-client run can resolve too.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import multiprocessing
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from array import array
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pilot.daemon.checker import (  # noqa: E402  (the repository's own code, not an installed copy)
    CheckOutcome,
    bounded_retry_after,
    next_delay,
    random_first_delay,
)
from pilot.launcher import PUBLISHED_PLATFORMS, PUBLISHED_PYTHONS  # noqa: E402
from pilot.update.fetch import HttpFetcher  # noqa: E402

DAY = 86400
HOUR = 3600
RELEASE_TOOL = REPO / "release-tools" / "release.py"
PLATFORMS = PUBLISHED_PLATFORMS  # a channel as the release publishes it: one archive per platform, each for every
PYTHONS = PUBLISHED_PYTHONS  # interpreter (listed under each python tag)
# Response sizes beyond the body, from nginx on loopback (benchmarks/load.py prints them: bytes_sent minus
# body_bytes_sent of its log, with ETag, Last-Modified and keep-alive): a 304's headers, a 200's headers, and
# a 503 page with its headers (an estimate: nginx's own 503 page is 197 bytes of HTML).
HEADERS_304 = 182
HEADERS_200 = 250
RESPONSE_503 = 350
REQUEST = 200  # a GET with User-Agent, Accept-Encoding and If-None-Match, as the client sends it
PEAK_FACTOR = 3.0
MIN_304 = 0.95
OK = CheckOutcome(at=0.0, result="checked")
RETRY_AFTER_MODES = ("none", "seconds", "date")


@dataclass(frozen=True)
class Scenario:
    clients: int = 1_000_000
    interval: float = 1800.0  # upgrade.check_interval's default
    # Late in the day, so that the part every Retry-After shares (simulated once, see _share) is long; the
    # publish before it, so that the steady rate (before both) and the recovery (two intervals) fit in the day.
    publish_at: float = 8 * HOUR
    outage_start: float = 20 * HOUR
    outage: float = HOUR
    retry_after: str = "none"  # none | seconds | date
    retry_after_seconds: float = 300.0
    seed: int = 1

    @property
    def outage_end(self) -> float:
        return self.outage_start + self.outage

    @property
    def warmup(self) -> int:
        return math.ceil(2 * self.interval)  # starts over one interval, then one more to settle



# ----------------------------------------------------------------------------- one process's share


@dataclass
class Counts:
    """Per one-second bucket of the measured day (index 0 = second 0), summed over clients."""

    requests: array
    checks_304: int = 0
    checks_200: int = 0
    checks_failed: int = 0
    requests_503: int = 0

    @classmethod
    def empty(cls) -> Counts:
        return cls(array("l", bytes(8 * DAY)))

    def add(self, other: Counts) -> None:
        for i, n in enumerate(other.requests):
            if n:
                self.requests[i] += n
        self.checks_304 += other.checks_304
        self.checks_200 += other.checks_200
        self.checks_failed += other.checks_failed
        self.requests_503 += other.requests_503


class Fleet:
    """One process's share of the clients on an event calendar of one-second buckets of client ids.

    A client in bucket b checks at b + 0.5 (the bucket's middle, so that dropping the fraction of each
    delay is unbiased: the error is within half a second and does not add up). No per-client time is
    kept: reading it back from a list of a million floats costs more than the checker's own arithmetic."""

    def __init__(self, scenario: Scenario, first: int, count: int) -> None:
        self.scenario = scenario
        self.rng = random.Random(f"{scenario.seed}:{first}")  # deterministic for a seed and a split
        fetcher = HttpFetcher()  # the checker's fetcher's defaults: 1 + retries tries, backoff * 2**n apart
        self.attempts = [0.0] + [sum(fetcher.backoff * 2 ** n for n in range(k + 1)) for k in range(fetcher.retries)]
        self.warmup = scenario.warmup
        self.horizon = scenario.warmup + DAY  # nothing after the day is counted
        self.calendar: list[list[int] | None] = [[] for _ in range(self.horizon)]
        self.failures = [0] * count  # failed checks in a row; read in the outage only
        self.current = bytearray(count)  # 1: the client holds the ETag of the manifest now published
        self.counts = Counts.empty()
        self.next_bucket = 0
        self.published = False
        for c in range(count):  # daemons started at random over one interval, before the day
            self.schedule(c, -self.warmup + self.rng.uniform(0, scenario.interval) + random_first_delay(self.rng))

    def schedule(self, c: int, at: float) -> None:
        if (slot := int(at + self.warmup)) < self.horizon:
            self.calendar[slot].append(c)  # type: ignore[union-attr]

    def advance(self, until: float = DAY) -> Fleet:
        """Run every check before second `until` of the day."""
        s = self.scenario
        stop = min(self.horizon, int(until) + self.warmup)
        for b in range(self.next_bucket, stop):
            bucket, self.calendar[b] = self.calendar[b], None  # nothing may be scheduled into the past
            second = b - self.warmup
            if not self.published and second >= s.publish_at:
                self.published, self.current = True, bytearray(len(self.current))  # a new ETag: nobody holds it
            if not bucket:
                continue
            if s.outage_start <= second < s.outage_end:
                self.outage(bucket, second)
            else:
                self.answered(bucket, second)
        self.next_bucket = max(self.next_bucket, stop)
        return self

    def fork(self, scenario: Scenario) -> Fleet:
        """A copy of this fleet's state that goes on under `scenario` (another Retry-After, same past)."""
        twin = copy.copy(self)
        twin.scenario = scenario
        twin.calendar = [None if b is None else list(b) for b in self.calendar]
        twin.failures, twin.current = list(self.failures), bytearray(self.current)
        twin.rng = random.Random()
        twin.rng.setstate(self.rng.getstate())
        twin.counts = copy.deepcopy(self.counts)
        return twin

    def answered(self, bucket: list[int], second: int) -> None:
        """The hot path: every check of this second answered (304, or 200 and then the signature)."""
        current, calendar, rng, horizon = self.current, self.calendar, self.rng, self.horizon
        interval = self.scenario.interval
        at = second + 0.5 + self.warmup
        fresh = 0
        for c in bucket:
            if not current[c]:
                current[c] = 1
                fresh += 1
            if (slot := int(at + next_delay(OK, 0, interval, rng))) < horizon:
                calendar[slot].append(c)  # type: ignore[union-attr]
        if second >= 0:
            self.counts.requests[second] += len(bucket) + fresh
            self.counts.checks_304 += len(bucket) - fresh
            self.counts.checks_200 += fresh

    def outage(self, bucket: list[int], second: int) -> None:
        """Each check's tries: 503 until the outage ends; the checker then waits as next_delay says."""
        s, counts, failures, rng = self.scenario, self.counts, self.failures, self.rng
        if s.retry_after == "date":  # the seconds left until the date, as the fetcher computes them
            outcome = CheckOutcome(at=0.0, error="HTTP 503", retry_after=bounded_retry_after(s.outage_end - second))
        elif s.retry_after == "seconds":
            outcome = CheckOutcome(at=0.0, error="HTTP 503", retry_after=bounded_retry_after(s.retry_after_seconds))
        else:
            outcome = CheckOutcome(at=0.0, error="HTTP 503")
        # With a Retry-After the fetcher gives up at once; without, it tries again `retries` times first.
        tries = [second + 0.5 + offset for offset in (self.attempts if outcome.retry_after is None else (0.0,))]
        failed = [at for at in tries if at < s.outage_end]
        for at in failed:
            if at < DAY:
                counts.requests[int(at)] += len(bucket)
        counts.requests_503 += len(failed) * len(bucket)
        if len(failed) < len(tries):  # a retry after the outage's end is answered
            for c in bucket:
                self.answer_one(c, tries[len(failed)])
            return
        counts.checks_failed += len(bucket)
        calendar, horizon, interval = self.calendar, self.horizon, s.interval
        at = failed[-1] + self.warmup
        for c in bucket:
            failures[c] = n = failures[c] + 1
            if (slot := int(at + next_delay(outcome, n, interval, rng))) < horizon:
                calendar[slot].append(c)  # type: ignore[union-attr]

    def answer_one(self, c: int, at: float) -> None:
        fresh = not self.current[c]
        self.current[c] = 1
        self.failures[c] = 0
        if at < DAY:
            self.counts.requests[int(at)] += 1 + fresh
        self.counts.checks_200 += fresh
        self.counts.checks_304 += not fresh
        self.schedule(c, at + next_delay(OK, 0, self.scenario.interval, self.rng))


def _share(args: tuple[tuple[Scenario, ...], int, int]) -> list[Counts]:
    """One share of the clients under each scenario; the day up to the outage, the same for all, runs once."""
    scenarios, first, count = args
    base = Fleet(scenarios[0], first, count).advance(scenarios[0].outage_start)
    return [base.fork(scenario).advance().counts for scenario in scenarios]


def run(scenarios: tuple[Scenario, ...], processes: int) -> list[Counts]:
    """Scenarios that differ only in their Retry-After, each over every client; summed over the shares."""
    assert len({replace(s, retry_after="none") for s in scenarios}) == 1, "only the Retry-After may differ"
    clients = scenarios[0].clients
    per = math.ceil(clients / processes)
    shares = [(scenarios, first, min(per, clients - first)) for first in range(0, clients, per)]
    if processes == 1:
        parts = [_share(share) for share in shares]
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.map(_share, shares)
    totals = parts[0]
    for part in parts[1:]:
        for total, counts in zip(totals, part, strict=True):
            total.add(counts)
    return totals


# ----------------------------------------------------------------------------- figures


def per_second(requests: array, width: int) -> list[float]:
    return [sum(requests[i:i + width]) / width for i in range(0, len(requests) - width + 1, width)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Sizes:
    manifest: int
    signatures: int
    releases: int

    @property
    def response_200(self) -> int:
        return self.manifest + self.signatures + 2 * HEADERS_200


def figures(scenario: Scenario, counts: Counts, sizes: Sizes) -> dict:
    requests = counts.requests
    steady = requests[:int(min(scenario.publish_at, scenario.outage_start))]  # settled by second 0
    steady_mean = sum(steady) / len(steady)
    after = slice(int(scenario.outage_end), int(scenario.outage_end + 2 * scenario.interval))
    rate = {}
    for width in (1, 10):
        day = per_second(requests, width)
        recovery = per_second(requests[after], width)
        rate[f"{width}s"] = {"p99": round(percentile(day, 0.99), 1), "max": round(max(day), 1),
                             "peak_after_outage": round(max(recovery), 1)}
    successful = counts.checks_304 + counts.checks_200
    fraction_304 = counts.checks_304 / successful if successful else 0.0
    down = counts.checks_304 * HEADERS_304 + counts.checks_200 * sizes.response_200 + counts.requests_503 * RESPONSE_503
    peak_ratio = rate["10s"]["peak_after_outage"] / steady_mean
    return {
        "scenario": asdict(scenario),
        "requests_per_day": sum(requests),
        "requests_per_second": {"mean": round(sum(requests) / DAY, 1), "steady_mean": round(steady_mean, 1),
                                **rate},
        "checks": {"answered_304": counts.checks_304, "answered_200": counts.checks_200,
                   "failed": counts.checks_failed, "requests_503": counts.requests_503,
                   "fraction_304": round(fraction_304, 4)},
        "bytes_per_day": {"to_clients": down, "from_clients": sum(requests) * REQUEST},
        "sizes": {**asdict(sizes), "headers_304": HEADERS_304, "headers_200": HEADERS_200,
                  "response_503": RESPONSE_503},
        "targets": {"peak_after_outage_over_steady_mean": round(peak_ratio, 2),
                    "peak_ok": peak_ratio <= PEAK_FACTOR, "fraction_304_ok": fraction_304 >= MIN_304},
    }


# ----------------------------------------------------------------------------- a real release tree


def fake_archive(path: Path, version: str, platform_tag: str, public_key: Path) -> Path:
    """A zip with the build metadata an archive of build/build.py carries (the keys it trusts among them)
    and little else: neither the manifest's size nor a check depends on the rest."""
    from pilot.update.verify import load_public_key

    key = load_public_key(public_key.read_bytes())
    metadata = {"product": "pilot", "version": version, "python_tags": list(PYTHONS), "python_tag": PYTHONS[0],
                "platform_tag": platform_tag, "trusted_keys": [{"keyid": key.keyid, "public": key.raw.hex()}],
                "threshold": 1, "build_id": hashlib.sha256(f"{version} {platform_tag}".encode()).hexdigest()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pilot-build.json", json.dumps(metadata))
        zf.writestr("__main__.py", f"# pilot {version}\n")
    return path


def release_tool(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    result = subprocess.run([sys.executable, str(RELEASE_TOOL), *args], capture_output=True, text=True, env=env,
                            timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"release.py {args[0]} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


BASE_URL = "https://downloads.example.org/pilot"


def publish_tree(root: Path, releases: int) -> Path:
    """`releases` releases of one archive per platform in root/site, signed by a fresh key in root/keys."""
    release_tool("keygen", "--out", str(root / "keys"), "--name", "fleet")
    for n in range(releases):
        publish_release(root, f"1.{n}.0")
    return root / "site"


def publish_release(root: Path, version: str) -> None:
    """`release.py publish` of one archive per platform to root/site's stable channel."""
    work = root / "archives"
    work.mkdir(parents=True, exist_ok=True)
    public_key = root / "keys" / "fleet.pub"
    artifacts = [str(fake_archive(work / f"{version}-{tag}.pyz", version, tag, public_key)) for tag in PLATFORMS]
    release_tool("publish", "--root", str(root / "site"), "--key", str(root / "keys" / "fleet.key"),
                 "--base-url", BASE_URL, *artifacts)


def measure_sizes(releases: int) -> Sizes:
    with tempfile.TemporaryDirectory(prefix="pilot-fleet-") as tmp:
        site = publish_tree(Path(tmp), releases)
        manifest = site / "stable" / "manifest.json"
        return Sizes(manifest.stat().st_size, (site / "stable" / "manifest.json.sig").stat().st_size, releases)


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"


def show(result: dict) -> str:
    s, r, c, b = result["scenario"], result["requests_per_second"], result["checks"], result["bytes_per_day"]
    t = result["targets"]
    lines = [
        f"{s['clients']:,} clients, check every {s['interval']:g} s, outage {s['outage']:g} s from "
        f"{s['outage_start']:g} s (Retry-After: {s['retry_after']}), publish at {s['publish_at']:g} s",
        f"  requests/s at the origin: mean {r['mean']}, steady {r['steady_mean']}, "
        f"p99 {r['1s']['p99']} (1 s buckets) / {r['10s']['p99']} (10 s), "
        f"peak after the outage {r['1s']['peak_after_outage']} (1 s) / {r['10s']['peak_after_outage']} (10 s)",
        f"  checks: {c['answered_304']:,} x 304, {c['answered_200']:,} x 200, {c['failed']:,} failed "
        f"({c['requests_503']:,} requests answered 503); 304 fraction {c['fraction_304']:.2%}",
        f"  bytes/day: {b['to_clients'] / 1e9:.2f} GB to clients, {b['from_clients'] / 1e9:.2f} GB from them",
        f"  targets: peak after outage / steady mean = {t['peak_after_outage_over_steady_mean']} (<= {PEAK_FACTOR}: "
        f"{'yes' if t['peak_ok'] else 'NO'}), 304 fraction >= {MIN_304:.0%}: {'yes' if t['fraction_304_ok'] else 'NO'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=Scenario.clients)
    parser.add_argument("--interval", type=float, default=Scenario.interval, help="seconds between checks")
    parser.add_argument("--retry-after", choices=(*RETRY_AFTER_MODES, "all"), default="all")
    parser.add_argument("--releases", type=int, default=10, help="releases in the channel whose manifest is served")
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    began = time.monotonic()
    sizes = measure_sizes(args.releases)
    modes = RETRY_AFTER_MODES if args.retry_after == "all" else (args.retry_after,)
    scenarios = tuple(Scenario(clients=args.clients, interval=args.interval, retry_after=mode, seed=args.seed)
                      for mode in modes)
    results = [figures(scenario, counts, sizes)
               for scenario, counts in zip(scenarios, run(scenarios, args.processes), strict=True)]
    report = {"machine": machine(), "seconds": round(time.monotonic() - began, 1), "runs": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['machine']}; {report['seconds']} s")
        print("\n".join(show(result) for result in results))
    met = all(r["targets"]["peak_ok"] and r["targets"]["fraction_304_ok"] for r in results)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
