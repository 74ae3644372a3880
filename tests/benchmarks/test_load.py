"""benchmarks/load.py, small: concurrent checkers with the real HttpFetcher against nginx serving a real release
tree. Every 200 must verify, and with one publish halfway every client gets exactly two 200s and 304s else."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.archives import REPO
from tests.support.nginx import needs_nginx

pytestmark = [pytest.mark.slow, needs_nginx]


def test_concurrent_checkers_get_304s_and_verify_every_200():
    clients, checks = 50, 6
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "load.py"), "--clients", str(clients),
                             "--checks", str(checks), "--releases", "2", "--deadline", "90", "--json"],
                            capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["errors"] == 0 and figures["as_expected"], figures
    assert figures["verified_200"] == 2 * clients  # the first check, and the one after the publish
    assert figures["answered_304"] == (checks - 2) * clients
    assert figures["fraction_304"] == round((checks - 2) / checks, 4)
    assert 100 < figures["nginx_header_bytes"]["304"] < 400  # a 304 is headers only: what fleet.py assumes
    assert figures["latency_304_ms"]["p99"] > 0
