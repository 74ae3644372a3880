"""The workflows that hold the signing key, audited: what can reach it must not be left open.

zizmor (build/dev.lock installs it) audits .github/workflows/release.yml and resign.yml offline, with no
GitHub token, no configuration file and no ignore comments honoured, so a high-severity
finding cannot be waived from inside the repository: fix it instead. And every `uses:` names
its action by full commit SHA, the release tag beside it in a comment, because a tag can be
moved to other code after the fact and a commit cannot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig

import pytest
import yaml

from tests.support.archives import REPO

WORKFLOWS = [REPO / ".github" / "workflows" / name for name in ("release.yml", "resign.yml")]
# `uses: owner/repo[/path]@<40 hex>  # v1.2.3`, as a step key or the first key of a step.
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)\s*(?:#\s*(?P<comment>.*?))?\s*$")
PINNED = re.compile(r"[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}")
RELEASE_TAG = re.compile(r"v\d+(?:\.\d+){0,2}\b")


def zizmor() -> str:
    """The zizmor of this environment (build/dev.lock), else one on PATH."""
    found = shutil.which("zizmor", path=sysconfig.get_path("scripts")) or shutil.which("zizmor")
    if found is None:
        pytest.fail("zizmor is not installed in this environment: `python3 build/dev.py test` installs it from "
                    "build/dev.lock (or: pip install --require-hashes -r build/dev.lock)")
    return found


def audit(tmp_path, workflow) -> list[dict]:
    """zizmor's findings for the workflow (its JSON output), offline."""
    env = {k: v for k, v in os.environ.items() if k not in {"GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN",
                                                              "GH_HOST", "ZIZMOR_CONFIG"}}
    command = [zizmor(), "--offline", "--no-config", "--no-ignores", "--no-exit-codes", "--format", "json",
               "--color", "never", "--cache-dir", str(tmp_path / "cache"), str(workflow)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env={**env, "ZIZMOR_OFFLINE": "1"},
                                cwd=REPO, timeout=120)
    except OSError as error:  # e.g. a binary for another platform: exec format error
        pytest.skip(f"zizmor cannot run on this platform: {error}")
    assert result.returncode == 0, f"zizmor failed (exit {result.returncode}): {result.stderr[-2000:]}"
    findings = json.loads(result.stdout)
    assert isinstance(findings, list), result.stdout[:500]
    return findings


def describe(finding: dict) -> str:
    """One line: `unpinned-uses (High, High confidence) line 130: unpinned action reference: <why>`."""
    locations = finding.get("locations") or [{}]
    primary = next((loc for loc in locations if loc.get("symbolic", {}).get("kind") == "Primary"), locations[0])
    row = primary.get("concrete", {}).get("location", {}).get("start_point", {}).get("row")
    where = f"line {row + 1}" if isinstance(row, int) else "(no location)"
    determinations = finding["determinations"]
    annotation = primary.get("symbolic", {}).get("annotation")
    return (f"{finding['ident']} ({determinations['severity']}, {determinations['confidence']} confidence) {where}: "
            f"{finding['desc']}" + (f": {annotation}" if annotation else ""))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_zizmor_finds_nothing_of_high_severity_in_the_workflow(tmp_path, workflow):
    findings = audit(tmp_path, workflow)
    high = [describe(f) for f in findings if f["determinations"]["severity"] == "High"]
    others = [describe(f) for f in findings if f["determinations"]["severity"] != "High"]
    assert not high, (f"zizmor (offline) found in .github/workflows/{workflow.name}:\n  " + "\n  ".join(high)
                      + ("\nand, below high:\n  " + "\n  ".join(others) if others else ""))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_every_action_the_workflow_uses_is_pinned_by_commit_sha_with_its_tag_beside_it(workflow):
    text = workflow.read_text()
    lines = [(number, match) for number, line in enumerate(text.splitlines(), 1) if (match := USES_LINE.match(line))]
    workflow = yaml.safe_load(text)
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "uses" in step]
    uses += [job["uses"] for job in workflow["jobs"].values() if "uses" in job]  # reusable workflows
    assert sorted(match["ref"] for _, match in lines) == sorted(uses), "every uses: on a line of its own"
    assert uses, "the workflow uses no action at all?"

    unpinned = [f"line {number}: {match['ref']}" for number, match in lines
                if not (match["ref"].startswith("./") or PINNED.fullmatch(match["ref"]))]
    untagged = [f"line {number}: {match['ref']}" for number, match in lines
                if PINNED.fullmatch(match["ref"]) and not RELEASE_TAG.match(match["comment"] or "")]
    assert not unpinned, "pin these by full commit SHA (`owner/repo@<40 hex>  # vX.Y.Z`):\n  " + "\n  ".join(unpinned)
    assert not untagged, "say which release each SHA is (`  # vX.Y.Z` after it):\n  " + "\n  ".join(untagged)
