"""The weekly re-signing, run locally: .github/workflows/resign.yml's own steps, end to end, by
test_pipeline.py's WorkflowRunner (every `run:` step a pipeline.py call, the actions played by local
stand-ins), on a release tree whose channels are about to expire."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from pilot.update.manifest import parse_manifest, parse_timestamp
from pilot.update.verify import KeySet, verify_manifest
from tests.conftest import run_release_tool
from tests.release_tools.test_pipeline import WorkflowRunner, action_name, fetch, git, run_pipeline
from tests.support.archives import REPO
from tests.support.server import StaticServer

WORKFLOW = REPO / ".github" / "workflows" / "resign.yml"
DAY = 86400


def load_workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def publish_expiring(site: Path, archive: Path, key: Path, channel: str, base_url: str, days_left: int) -> None:
    """A channel published long enough ago that its 30-day manifest expires in `days_left` days."""
    env = {**os.environ, "PILOT_RELEASE_NOW": str(int(time.time()) - (30 - days_left) * DAY)}
    result = run_release_tool("publish", "--root", str(site), "--channel", channel, "--base-url", base_url,
                              "--key", str(key), str(archive), env=env)
    assert result.returncode == 0, result.stderr


def push_tree(site: Path, origin: Path, scratch: Path) -> None:
    """What earlier releases left on gh-pages."""
    shutil.copytree(site, scratch)
    git("init", "--quiet", cwd=scratch)
    git("add", "--all", cwd=scratch)
    git("-c", "user.name=Pilot", "-c", "user.email=pilot@example.test", "commit", "--quiet", "-m", "Release 1.0.0",
        cwd=scratch)
    git("push", "--quiet", origin.as_uri(), "HEAD:refs/heads/gh-pages", cwd=scratch)


# --- the workflow file ------------------------------------------------------------------------


def test_it_runs_weekly_and_by_hand_in_the_release_workflows_concurrency_group():
    workflow = load_workflow()
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(trigger) == {"schedule", "workflow_dispatch"}
    (cron,) = [entry["cron"] for entry in trigger["schedule"]]
    assert cron.split()[2:] == ["*", "*", "1"], "weekly: well inside the manifests' 30 days"
    release = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    assert workflow["concurrency"] == release["concurrency"], "never racing a release over gh-pages"
    assert workflow["jobs"]["deploy"]["needs"] == "resign"


def test_the_signing_key_and_the_git_token_reach_only_the_steps_that_use_them():
    workflow = load_workflow()
    jobs = workflow["jobs"]
    assert workflow["permissions"] == {}
    assert jobs["resign"]["permissions"] == {"contents": "write"}
    assert jobs["deploy"]["permissions"] == {"pages": "write", "id-token": "write"}
    assert "env" not in workflow and not any("env" in job for job in jobs.values())
    steps = [(name, step) for name, job in jobs.items() for step in job["steps"]]
    signing = [step for _, step in steps if "secrets." in json.dumps(step)]
    assert len(signing) == 1 and jobs["resign"]["environment"] == "resign"
    (step,) = signing
    assert step["env"] == {"PILOT_RELEASE_SIGNING_KEY": "${{ secrets.PILOT_RELEASE_SIGNING_KEY }}",
                           "PILOT_KEY_PASSPHRASE": "${{ secrets.PILOT_KEY_PASSPHRASE }}"}  # for an encrypted key
    assert shlex.split(step["run"])[2] == "resign" and "--private-key-env PILOT_RELEASE_SIGNING_KEY" in step["run"]
    for _, step in steps:
        if action_name(step) == "actions/checkout":
            assert step["with"]["persist-credentials"] is False
    token = [(name, shlex.split(step["run"])[2]) for name, step in steps if "github.token" in json.dumps(step)]
    assert token == [("resign", "restore"), ("resign", "save")]


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_scheduled_run_re_signs_every_channel_and_serves_it(tmp_path, release_key, v1):
    origin = tmp_path / "origin.git"
    git("init", "--bare", "--quiet", str(origin))
    served = tmp_path / "pages"
    served.mkdir()
    with StaticServer(served) as pages:
        site = tmp_path / "site"
        site.mkdir()
        publish_expiring(site, v1, release_key.private_path, "stable", pages.url, days_left=5)
        publish_expiring(site, v1, release_key.private_path, "beta", pages.url, days_left=2)
        push_tree(site, origin, tmp_path / "seed")

        runner = WorkflowRunner(load_workflow(), tmp_path / "runs", origin=origin, pages=pages,
                                secrets={"PILOT_RELEASE_SIGNING_KEY": release_key.private_path.read_text()})
        runner.run_job("resign", "refs/heads/main")
        runner.run_job("deploy", "refs/heads/main")

        anchor = KeySet(version=1, threshold=1, keys=(release_key.public,))
        for channel in ("beta", "stable"):
            data = fetch(f"{pages.url}/{channel}/manifest.json")
            signatures = fetch(f"{pages.url}/{channel}/manifest.json.sig")
            verified = verify_manifest(data, signatures, anchor=anchor, product="pilot", channel=channel,
                                       now=datetime.now(UTC), fetch_keyset=lambda n: pytest.fail("no rotation"))
            assert verified.manifest.serial == 2
            assert verified.manifest.expires_at - datetime.now(UTC) > timedelta(days=29)
            assert [str(r.version) for r in parse_manifest(data).releases] == ["1.0.0"]
    assert [sub for _, sub in runner.executed] == ["restore", "resign", "save"]
    assert git("log", "--format=%s", "gh-pages", cwd=origin).splitlines() == ["Re-sign every channel",
                                                                              "Release 1.0.0"]


@pytest.mark.slow
def test_resign_refuses_a_channel_its_key_did_not_sign_and_signs_none(tmp_path, release_key, other_key, v1):
    site = tmp_path / "site"
    # Channels go in sorted order (beta, stable): the bad one is the last, so a loop that checked and signed
    # each channel in turn would have re-signed beta before reaching stable.
    publish_expiring(site, v1, release_key.private_path, "beta", "https://example.test/pilot", days_left=5)
    publish_expiring(site, v1, other_key.private_path, "stable", "https://example.test/pilot", days_left=5)
    before = {path: path.read_bytes() for path in site.glob("*/manifest.json*")}
    result = run_pipeline("resign", "--site", str(site), "--private-key", str(release_key.private_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "pipeline: resign: the restored stable manifest is not one these release keys signed for pilot stable, "
        "refusing to sign over it (manifest.json: 0 valid signature(s) from key set 1, 1 required (the file was "
        "altered or signed by a key this build does not trust))"]
    assert {path: path.read_bytes() for path in site.glob("*/manifest.json*")} == before  # every one checked first


@pytest.mark.slow
def test_resign_fails_when_the_new_expiry_is_too_close(tmp_path, release_key, v1):
    site = tmp_path / "site"
    publish_expiring(site, v1, release_key.private_path, "stable", "https://example.test/pilot", days_left=5)
    result = run_pipeline("resign", "--site", str(site), "--private-key", str(release_key.private_path),
                          "--expires-in", "10d", "--min-days", "21")
    assert result.returncode == 1 and "fewer than --min-days 21" in result.stderr
    expires = parse_timestamp(json.loads((site / "stable" / "manifest.json").read_text())["expires_at"], "expiry")
    assert expires - datetime.now(UTC) < timedelta(days=11)
