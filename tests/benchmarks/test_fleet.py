"""benchmarks/fleet.py on 20,000 clients: the daemon checker's real schedule must keep the origin's peak after
a one-hour outage within 3 x its steady rate, and answer at least 95 % of the checks with 304, whatever
Retry-After the origin sends in the outage. A scheduling change that makes a fleet return in step fails here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from pilot.daemon import checker
from tests.support.archives import REPO

FLEET = REPO / "benchmarks" / "fleet.py"


@pytest.fixture(scope="module")
def fleet():
    spec = importlib.util.spec_from_file_location("pilot_benchmark_fleet", FLEET)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the classes are made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_fleet_meets_both_targets_in_every_outage(tmp_path):
    result = subprocess.run([sys.executable, str(FLEET), "--clients", "20000", "--releases", "2", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads(result.stdout)["runs"]
    assert [run["scenario"]["retry_after"] for run in runs] == ["none", "seconds", "date"]
    for run in runs:
        rate, checks = run["requests_per_second"], run["checks"]
        assert rate["10s"]["peak_after_outage"] <= 3 * rate["steady_mean"], run
        assert checks["fraction_304"] >= 0.95, run
        assert checks["answered_200"] == 20000  # the publish: one 200 for each client, the rest 304
        assert checks["failed"] > 0 and checks["requests_503"] >= checks["failed"]  # the outage happened
        assert run["sizes"]["manifest"] > 1000 and run["sizes"]["signatures"] > 64  # measured, not assumed


def test_the_simulation_runs_the_checkers_own_schedule(fleet, monkeypatch):
    """Without the spread on a failure's delay, a fleet told one Retry-After date returns in the same second."""
    scenario = fleet.Scenario(clients=20000, retry_after="date")
    sizes = fleet.Sizes(manifest=60000, signatures=225, releases=10)
    met = fleet.figures(scenario, fleet.run((scenario,), 1)[0], sizes)
    assert met["targets"]["peak_ok"], met
    monkeypatch.setattr(checker, "RETRY_SPREAD", 0.0)
    missed = fleet.figures(scenario, fleet.run((scenario,), 1)[0], sizes)
    assert not missed["targets"]["peak_ok"] and missed["requests_per_second"]["1s"]["peak_after_outage"] > 10_000


def test_a_day_without_outage_costs_one_200_per_client_per_publish(fleet):
    scenario = fleet.Scenario(clients=2000, outage=0.0)
    counts = fleet.run((scenario,), 1)[0]
    assert counts.checks_200 == 2000 and counts.checks_failed == 0
    per_client = (counts.checks_200 + counts.checks_304) / 2000
    assert 47 <= per_client <= 49  # a day of checks every 30 minutes +-10 %
    assert sum(counts.requests) == counts.checks_304 + 2 * counts.checks_200
