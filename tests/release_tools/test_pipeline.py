"""The release workflow, run locally: .github/workflows/release.yml's own steps, end to end.

`WorkflowRunner` executes the workflow file itself. Its `run:` steps must be calls of
release-tools/pipeline.py and nothing else (any other command fails the test), and they run
with the workflow's own arguments, `${{ }}` expressions and environment; the few actions it
uses are played by local stand-ins (a bare git repository for origin, a directory for the
artifact store, a loopback StaticServer for GitHub Pages), and an action it does not know
fails the test. So the workflow cannot drift from what this test checks. (How the actions are
pinned, and what zizmor finds, is tests/release_tools/test_workflow_audit.py's.)
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from pilot.launcher import PUBLISHED_PLATFORMS, PUBLISHED_PYTHONS, platform_tag
from pilot.update.manifest import parse_manifest
from pilot.update.verify import KeySet, load_public_key, parse_signatures, verify_threshold
from tests.support.archives import REPO, build_metadata
from tests.support.pythons import interpreters, need
from tests.support.server import StaticServer

pytestmark = pytest.mark.slow

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
PIPELINE = REPO / "release-tools" / "pipeline.py"
PIPELINE_CALL = ["python", "release-tools/pipeline.py"]
SUPPORTED_PYTHONS = ["3.11", "3.12", "3.13"]
# The build matrix's runners and the platform each one builds the archive for.
RUNNER_PLATFORMS = {"ubuntu-latest": "linux_x86_64", "ubuntu-24.04-arm": "linux_aarch64",
                    "macos-latest": "macos_arm64", "macos-15-intel": "macos_x86_64"}
LOCAL_TOKEN = "local-job-token"  # ${{ github.token }} in these runs
SERVER_URL = "https://github.com"  # ${{ github.server_url }}
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
SHELL_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
STEP_KEYS = {"run": {"name", "id", "run", "env"}, "uses": {"name", "id", "uses", "with"}}


def load_workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def python_versions(step: dict) -> list[str]:
    """actions/setup-python's python-version: one version, or one a line (the last is `python`)."""
    return str(step["with"]["python-version"]).split()


def action_name(step: dict) -> str:
    """actions/checkout for `uses: actions/checkout@<sha>`; "" for a run: step."""
    return step.get("uses", "").split("@")[0]


def run_pipeline(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PIPELINE), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


class WorkflowRunner:
    """Runs jobs of release.yml on this machine, one fresh workspace per job, like a runner does."""

    def __init__(self, workflow: dict, root: Path, *, secrets: dict[str, str], origin: Path,
                 pages: StaticServer, variables: dict[str, str] | None = None) -> None:
        self.workflow = workflow
        self.root = root
        self.secrets = secrets
        self.variables = variables or {}
        self.origin = origin
        self.pages = pages
        self.artifact_store = root / "artifact-store"
        self.pages_artifact = root / "pages-artifact"
        self.executed: list[tuple[str, str]] = []  # (job, pipeline subcommand) in order
        self.jobs_run = 0

    def run_job(self, name: str, ref: str, matrix: dict | None = None) -> None:
        job = self.workflow["jobs"][name]
        self.jobs_run += 1
        workspace = self.root / f"{self.jobs_run}-{name}" / "workspace"
        runner_temp = workspace.parent / "runner-temp"
        workspace.mkdir(parents=True)
        runner_temp.mkdir()
        # actions/checkout leaves a git repository whose origin is the project's repository.
        git("init", "--quiet", cwd=workspace)
        git("remote", "add", "origin", self.origin.as_uri(), cwd=workspace)
        # The loopback server stands in for Pages: the repository variable for a custom domain names it.
        context = {"github": {"ref": ref, "token": LOCAL_TOKEN, "server_url": SERVER_URL, "repository": "pilot/pilot"},
                   "vars": {"PILOT_RELEASE_BASE_URL": self.pages.url, **self.variables}, "secrets": self.secrets,
                   "matrix": matrix or {}, "runner": {"temp": str(runner_temp)}, "steps": {}}
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_"))}
        base_env.update(CI="true", GITHUB_REF=ref, GITHUB_WORKSPACE=str(workspace), RUNNER_TEMP=str(runner_temp))
        for index, step in enumerate(job["steps"]):
            kind = "uses" if "uses" in step else "run"
            assert set(step) <= STEP_KEYS[kind], f"{name} step {index}: keys the local runner does not play: {step}"
            if kind == "uses":
                outputs = self.action(name, step, workspace, context)
                if action_name(step) == "actions/setup-python":
                    base_env["PATH"] = f"{interpreters_dir(step, runner_temp)}{os.pathsep}{base_env['PATH']}"
            else:
                outputs = self.run_step(name, index, step, workspace, runner_temp, base_env, context)
            if "id" in step:
                context["steps"][step["id"]] = {"outputs": outputs}

    def run_step(self, job: str, index: int, step: dict, workspace: Path, runner_temp: Path, base_env: dict,
                 context: dict) -> dict:
        output_file = runner_temp / f"output-{index}"
        output_file.touch()
        env = {**base_env, "GITHUB_OUTPUT": str(output_file)}
        env.update({key: evaluate(str(value), context) for key, value in step.get("env", {}).items()})
        if "GIT_CONFIG_COUNT" in step.get("env", {}):
            check_git_credentials(env, runner_temp)
        lines = [line.strip() for line in step["run"].replace("\\\n", " ").splitlines()]
        commands = [line for line in lines if line and not line.startswith("#")]
        assert commands, f"{job} step {index} runs nothing"
        for line in commands:
            assert "${{" not in line, f"{job}: pass expressions through env:, not into the script: {line}"
            words = shlex.split(line)
            assert words[:2] == PIPELINE_CALL, f"{job}: a run: step may only call release-tools/pipeline.py: {line}"
            args = [expand(word, env) for word in words[2:]]
            self.executed.append((job, args[0]))
            result = run_pipeline(*args, env=env, cwd=workspace)
            assert result.returncode == 0, f"{job}: {line}\n{result.stdout}\n{result.stderr[-4000:]}"
        return dict(line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line)

    def action(self, job: str, step: dict, workspace: Path, context: dict) -> dict:
        uses = step["uses"]
        assert re.fullmatch(r"actions/[\w-]+@([0-9a-f]{40}|v\d+)", uses), f"an action the runner does not play: {uses}"
        action = action_name(step)
        inputs = {key: evaluate(str(value), context) for key, value in step.get("with", {}).items()}
        if action == "actions/checkout":
            # The workspace is already a repository with origin (pipeline.py runs from REPO); and no
            # checkout may leave the job's token in .git/config for later steps.
            assert inputs.get("persist-credentials") == "False", f"{job}: checkout without persist-credentials: false"
            return {}
        if action == "actions/setup-python":
            versions = python_versions(step)
            assert versions and set(versions) <= set(SUPPORTED_PYTHONS), inputs
            if job == "build":  # the archive is universal: every builder has every supported Python
                assert versions == SUPPORTED_PYTHONS, inputs
            return {}  # `python` is this interpreter, python3.X on PATH are this machine's
        if action == "actions/upload-artifact":
            files = sorted(workspace.glob(inputs["path"]))
            assert files or inputs.get("if-no-files-found") != "error", f"no files match {inputs['path']}"
            target = self.artifact_store / inputs["name"]
            assert not target.exists(), f"artifact {inputs['name']} uploaded twice"
            target.mkdir(parents=True)
            for path in files:
                shutil.copy2(path, target / path.name)
            return {}
        if action == "actions/download-artifact":
            assert inputs.get("merge-multiple") == "True", "the publish step expects one flat directory"
            target = workspace / inputs["path"]
            target.mkdir(parents=True, exist_ok=True)
            for artifact in sorted(self.artifact_store.iterdir()):
                if fnmatch.fnmatchcase(artifact.name, inputs["pattern"]):
                    for path in artifact.iterdir():
                        shutil.copy2(path, target / path.name)
            return {}
        if action == "actions/upload-pages-artifact":
            shutil.rmtree(self.pages_artifact, ignore_errors=True)
            shutil.copytree(workspace / inputs["path"], self.pages_artifact,
                            ignore=lambda _dir, names: [n for n in names if n.startswith(".")])
            return {}
        if action == "actions/deploy-pages":
            for child in self.pages.root.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            shutil.copytree(self.pages_artifact, self.pages.root, dirs_exist_ok=True)
            return {"page_url": self.pages.url + "/"}
        raise AssertionError(f"the local runner does not know {uses}: teach WorkflowRunner.action what it does")


def interpreters_dir(step: dict, scratch: Path) -> Path:
    """What actions/setup-python puts on PATH: python3.X for each version it installs, here this machine's own
    interpreters (a version manager's shims may not run a version that is not selected)."""
    found = interpreters()
    directory = scratch / "setup-python"
    directory.mkdir(exist_ok=True)
    for version in python_versions(step):
        tag = "cp" + version.replace(".", "")
        python = need(found.get(tag), tag)
        (directory / f"python{version}").symlink_to(python)
    return directory


def check_git_credentials(env: dict, scratch: Path) -> None:
    """A step that configures git through its environment (GIT_CONFIG_COUNT, ...) must give git the job's token
    for the server checkout clones from, and to no other host. Asked as git itself would ask, without any
    system or user configuration (the local origin is a file:// URL, which needs no credentials)."""

    def fill(url: str) -> str:
        home = scratch / "credential-home"
        home.mkdir(exist_ok=True)
        isolated = {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""}
        result = subprocess.run(["git", "credential", "fill"], input=f"url={url}\n\n", env=isolated,
                                capture_output=True, text=True, timeout=60)
        return result.stdout

    answer = fill(f"{SERVER_URL}/owner/repo.git")
    assert f"password={LOCAL_TOKEN}\n" in answer and "username=x-access-token\n" in answer, answer
    assert LOCAL_TOKEN not in fill("https://elsewhere.example/owner/repo.git")


def evaluate(text: str, context: dict) -> str:
    def lookup(match: re.Match) -> str:
        value = context
        kind, _, name = match[1].partition(".")
        if kind in ("secrets", "vars") and name not in context[kind]:
            return ""  # as on GitHub: a secret or variable that is not set is the empty string
        for part in match[1].split("."):
            assert isinstance(value, dict) and part in value, f"unknown expression ${{{{ {match[1]} }}}}"
            value = value[part]
        return str(value)

    return EXPRESSION.sub(lookup, text)


def expand(word: str, env: dict) -> str:
    def lookup(match: re.Match) -> str:
        name = match[1] or match[2]
        assert name in env, f"${name} is not set in the step's environment"
        return env[name]

    return SHELL_VARIABLE.sub(lookup, word)


def local_matrix(workflow: dict) -> dict:
    """The build matrix entry whose runner builds this machine's platform."""
    matrix = workflow["jobs"]["build"]["strategy"]["matrix"]
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert python in SUPPORTED_PYTHONS, f"this interpreter ({python}) is not a supported Python"
    runners = [os_name for os_name in matrix["os"] if RUNNER_PLATFORMS.get(os_name) == platform_tag()]
    if not runners:
        pytest.skip(f"no runner of the build matrix builds for this platform ({platform_tag()})")
    return {"os": runners[0]}


# --- the workflow file ------------------------------------------------------------------------


def test_workflow_builds_one_universal_archive_per_platform_and_publishes_on_version_tags():
    workflow = load_workflow()
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert trigger == {"push": {"tags": ["v*"]}}
    jobs = workflow["jobs"]
    assert set(jobs) == {"build", "publish", "deploy"}
    build = jobs["build"]
    matrix = build["strategy"]["matrix"]
    assert set(matrix) == {"os"}, "one build per platform: no other matrix axis"
    assert matrix["os"] == list(RUNNER_PLATFORMS)
    assert build["runs-on"] == "${{ matrix.os }}"
    (setup_python,) = [step for step in build["steps"] if action_name(step) == "actions/setup-python"]
    assert python_versions(setup_python) == SUPPORTED_PYTHONS
    (upload,) = [step for step in build["steps"] if action_name(step) == "actions/upload-artifact"]
    assert upload["with"]["name"] == "pilot-${{ matrix.os }}"
    assert jobs["publish"]["needs"] == "build" and jobs["deploy"]["needs"] == "publish"


def test_the_build_matrix_is_the_platforms_and_pythons_the_launcher_says_are_published():
    """pilot.launcher's PUBLISHED_PLATFORMS and PUBLISHED_PYTHONS (named by the wrong-interpreter line) are what
    release.yml builds: a runner per platform, every Python on each."""
    build = load_workflow()["jobs"]["build"]
    assert tuple(RUNNER_PLATFORMS[os_name] for os_name in build["strategy"]["matrix"]["os"]) == PUBLISHED_PLATFORMS
    (setup_python,) = [step for step in build["steps"] if action_name(step) == "actions/setup-python"]
    assert tuple("cp" + v.replace(".", "") for v in python_versions(setup_python)) == PUBLISHED_PYTHONS


def test_the_signing_key_and_the_git_token_reach_only_the_steps_that_use_them():
    workflow = load_workflow()
    jobs = workflow["jobs"]
    assert workflow["permissions"] == {}, "no permissions by default: each job asks for its own"
    assert jobs["build"]["permissions"] == {"contents": "read"}
    assert jobs["publish"]["permissions"] == {"contents": "write"}
    assert jobs["deploy"]["permissions"] == {"pages": "write", "id-token": "write"}
    assert "env" not in workflow and not any("env" in job for job in jobs.values()), "secrets go to steps, by name"

    steps = [(name, step) for name, job in jobs.items() for step in job["steps"]]
    # The signing key: in the environment of the one step that signs, read from there, never written to a file.
    signing = [(name, step) for name, step in steps if "secrets.PILOT_RELEASE_SIGNING_KEY" in json.dumps(step)]
    assert len(signing) == 1, signing
    ((name, step),) = signing
    assert name == "publish" and jobs["publish"]["environment"] == "release"
    assert step["env"]["PILOT_RELEASE_SIGNING_KEY"] == "${{ secrets.PILOT_RELEASE_SIGNING_KEY }}"
    assert shlex.split(step["run"])[2] == "publish" and "--private-key-env PILOT_RELEASE_SIGNING_KEY" in step["run"]
    assert "--private-key " not in step["run"]
    assert not any("--kind private" in step.get("run", "") for _, step in steps), "no step writes the signing key"
    assert step["env"]["PILOT_KEY_PASSPHRASE"] == "${{ secrets.PILOT_KEY_PASSPHRASE }}"  # for an encrypted key
    # Other secrets: only the public key, in the build job's write-key step.
    others = {secret for _, step in steps for secret in re.findall(r"secrets\.(\w+)", json.dumps(step))}
    assert others == {"PILOT_RELEASE_SIGNING_KEY", "PILOT_KEY_PASSPHRASE", "PILOT_RELEASE_PUBLIC_KEY"}

    # The job's token: no checkout keeps it; only publish's restore and save steps (git fetch and push) get it.
    for _, step in steps:
        if action_name(step) == "actions/checkout":
            assert step["with"]["persist-credentials"] is False, step
    token = [(name, shlex.split(step["run"])[2]) for name, step in steps if "github.token" in json.dumps(step)]
    assert token == [("publish", "restore"), ("publish", "save")]


# --- end to end -------------------------------------------------------------------------------


def test_a_tag_builds_signs_publishes_and_serves_a_release_clients_can_verify(tmp_path, release_key, other_key,
                                                                              archives):
    workflow = load_workflow()
    origin = tmp_path / "origin.git"
    git("init", "--bare", "--quiet", str(origin))
    served = tmp_path / "pages"
    served.mkdir()
    secrets = {"PILOT_RELEASE_PUBLIC_KEY": release_key.public_path.read_text(),
               "PILOT_RELEASE_SIGNING_KEY": release_key.private_path.read_text()}

    with StaticServer(served) as pages:
        # The offline root key, as a repository variable (public keys are no secret): the build embeds it.
        runner = WorkflowRunner(workflow, tmp_path / "runs", secrets=secrets, origin=origin, pages=pages,
                                variables={"PILOT_ROOT_PUBLIC_KEYS": other_key.public_path.read_text(),
                                           "PILOT_ROOT_THRESHOLD": "1"})
        matrix = local_matrix(workflow)

        # v1.0.0, the first release: no gh-pages branch yet. Its build job ran elsewhere: the
        # artifact store holds a cached archive built for the same key.
        first = runner.artifact_store / f"pilot-{matrix['os']}-v1.0.0"
        first.mkdir(parents=True)
        shutil.copy2(archives.build("1.0.0"), first)
        runner.run_job("publish", "refs/tags/v1.0.0")
        runner.run_job("deploy", "refs/tags/v1.0.0")
        assert json.loads(fetch(f"{pages.url}/stable/manifest.json"))["serial"] == 1
        shutil.rmtree(runner.artifact_store)

        # v1.2.3: every job, on top of the tree the first release left on gh-pages.
        runner.run_job("build", "refs/tags/v1.2.3", matrix)
        runner.run_job("publish", "refs/tags/v1.2.3")
        runner.run_job("deploy", "refs/tags/v1.2.3")

        # What a client does: fetch over HTTP, verify in-process against the key it trusts.
        manifest_bytes = fetch(f"{pages.url}/stable/manifest.json")
        signature_bytes = fetch(f"{pages.url}/stable/manifest.json.sig")
        keyset = KeySet(version=1, threshold=1, keys=(load_public_key(release_key.public_path.read_bytes()),))
        valid = verify_threshold(manifest_bytes, parse_signatures(signature_bytes, "manifest.json.sig"), keyset,
                                 "manifest.json")
        assert valid == {release_key.public.keyid}
        manifest = parse_manifest(manifest_bytes)
        assert (manifest.product, manifest.channel, manifest.serial) == ("pilot", "stable", 2)
        assert [str(r.version) for r in manifest.releases] == ["1.2.3", "1.0.0"]
        assert (manifest.expires_at - manifest.issued_at).days == 30

        downloads = tmp_path / "downloads"
        downloads.mkdir()
        for release in manifest.releases:  # one archive, listed under each interpreter it serves
            assert [a.python_tag for a in release.artifacts] == list(PUBLISHED_PYTHONS)
            assert len({(a.url, a.sha256) for a in release.artifacts}) == 1
            artifact = release.artifacts[0]
            assert artifact.url.startswith(pages.url + "/releases/")
            data = fetch(artifact.url)
            assert (len(data), hashlib.sha256(data).hexdigest()) == (artifact.size, artifact.sha256)
            (downloads / artifact.url.rsplit("/", 1)[1]).write_bytes(data)

        artifact = manifest.releases[0].artifacts[0]
        archive = downloads / artifact.url.rsplit("/", 1)[1]
        assert archive.name.startswith("pilot-1.2.3-")
        assert archive.name.endswith(f"{RUNNER_PLATFORMS[matrix['os']]}.pyz")
        built = build_metadata(archive)  # the release keys sign manifests; only the root key signs key sets
        assert [k["keyid"] for k in built["trusted_keys"]] == [release_key.public.keyid]
        assert ([k["keyid"] for k in built["root_keys"]], built["root_threshold"]) == ([other_key.public.keyid], 1)
        result = subprocess.run([sys.executable, str(archive), "--version"], capture_output=True, text=True,
                                timeout=120)
        assert (result.returncode, result.stdout.strip()) == (0, "pilot 1.2.3"), result.stderr

    # Every run: step went through pipeline.py; the test exercised each subcommand the workflow uses.
    assert [job for job, _ in runner.executed].count("build") == 3
    assert {sub for _, sub in runner.executed} == {"tag-version", "write-key", "build", "pages-url", "restore",
                                                  "publish", "save"}
    # gh-pages holds the tree as two fast-forward commits, one per release.
    log = git("log", "--format=%s", "gh-pages", cwd=origin).splitlines()
    assert log == ["Release 1.2.3", "Release 1.0.0"]
    files = git("ls-tree", "-r", "--name-only", "gh-pages", cwd=origin).splitlines()
    assert "stable/manifest.json" in files and "stable/manifest.json.sig" in files
    assert sum(name.endswith(".pyz") for name in files) == 2


# --- single steps -----------------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "version"), [
    ("refs/tags/v1.2.3", "1.2.3"), ("refs/tags/v2.0.0rc1", "2.0.0rc1"), ("refs/tags/v1.0.post1", "1.0.post1"),
    ("refs/tags/v10.0.0.dev3", "10.0.0.dev3"),
])
def test_tag_version_prints_the_version_a_release_tag_names(ref, version, tmp_path):
    output = tmp_path / "github-output"
    output.write_text("earlier=1\n")
    env = {**os.environ, "GITHUB_OUTPUT": str(output)}
    result = run_pipeline("tag-version", "--ref", ref, "--github-output", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{version}\n", "")
    assert output.read_text() == f"earlier=1\nversion={version}\n"


@pytest.mark.parametrize("ref", [
    "refs/tags/1.2.3", "refs/heads/v1.2.3", "refs/tags/v1.2.3-rc1", "refs/tags/v01.2.3", "refs/tags/v1.2.3+local",
    "refs/tags/v1!2.0", "refs/tags/vnext", "refs/tags/v", "refs/tags/V1.2.3", "refs/tags/v1.2.3 ",
])
def test_tag_version_refuses_a_tag_that_is_not_a_canonical_version_in_one_line(ref):
    result = run_pipeline("tag-version", "--ref", ref)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("pipeline: tag-version: ")


def test_pubkey_derives_the_public_key_keygen_wrote(tmp_path, release_key):
    out = tmp_path / "derived.pub"
    result = run_pipeline("pubkey", "--key", str(release_key.private_path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == release_key.public_path.read_bytes()
    assert f"keyid {release_key.public.keyid}" in result.stdout


def test_write_key_writes_a_secret_0600_and_refuses_the_wrong_kind_without_echoing_it(tmp_path, release_key):
    private_pem = release_key.private_path.read_text()
    env = {**os.environ, "SIGNING": private_pem.strip() + "\r\n", "EMPTY": ""}
    out = tmp_path / "temp" / "release.key"
    result = run_pipeline("write-key", "--from-env", "SIGNING", "--kind", "private", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == private_pem
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert private_pem.splitlines()[1] not in result.stdout + result.stderr

    again = run_pipeline("write-key", "--from-env", "SIGNING", "--kind", "private", "--out", str(out), env=env)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr

    wrong = run_pipeline("write-key", "--from-env", "SIGNING", "--kind", "public", "--out", str(tmp_path / "x.pub"),
                         env=env)
    assert wrong.returncode == 1 and len(wrong.stderr.splitlines()) == 1
    assert "does not hold an Ed25519 public key" in wrong.stderr
    assert private_pem.splitlines()[1] not in wrong.stdout + wrong.stderr
    assert not (tmp_path / "x.pub").exists()

    empty = run_pipeline("write-key", "--from-env", "EMPTY", "--kind", "public", "--out", str(tmp_path / "y.pub"),
                         env=env)
    assert empty.returncode == 1 and "EMPTY is unset or empty" in empty.stderr


def test_publish_refuses_archives_that_do_not_trust_the_signing_key(tmp_path, archives, other_key):
    dist = tmp_path / "dist"
    dist.mkdir()
    shutil.copy2(archives.build("1.0.0"), dist)  # built to trust release_key
    site = tmp_path / "site"
    result = run_pipeline("publish", "--site", str(site), "--channel", "stable", "--base-url", "http://127.0.0.1:1",
                          "--private-key", str(other_key.private_path), "--artifacts", str(dist))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert "does not match the private key" in result.stderr
    assert not site.exists()


def test_publish_signs_with_a_key_from_the_environment_and_leaves_no_copy_of_it(tmp_path, archives, release_key):
    dist = tmp_path / "dist"
    dist.mkdir()
    shutil.copy2(archives.build("1.0.0"), dist)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    private_pem = release_key.private_path.read_text()
    env = {**os.environ, "TMPDIR": str(scratch), "SIGNING": private_pem.strip() + "\r\n",
           "WRONG": release_key.public_path.read_text(), "EMPTY": ""}

    def publish(variable: str) -> subprocess.CompletedProcess:
        return run_pipeline("publish", "--site", str(tmp_path / "site"), "--channel", "stable", "--base-url",
                            "http://127.0.0.1:1", "--private-key-env", variable, "--artifacts", str(dist), env=env)

    result = publish("SIGNING")
    assert result.returncode == 0, result.stderr
    assert "ok: stable serial 1" in result.stdout
    assert list(scratch.iterdir()) == []  # the key's file lived in publish's own scratch directory, now gone
    assert private_pem.splitlines()[1] not in result.stdout + result.stderr

    for variable, said in [("WRONG", "WRONG does not hold an Ed25519 private key"),
                           ("EMPTY", "EMPTY is unset or empty")]:
        refused = publish(variable)
        assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert said in refused.stderr
        assert list(scratch.iterdir()) == []


def test_publish_refuses_to_sign_over_a_restored_manifest_the_key_did_not_sign(tmp_path, archives, release_key):
    dist = tmp_path / "dist"
    dist.mkdir()
    shutil.copy2(archives.build("1.0.0"), dist)
    site = tmp_path / "site"
    publish = ["publish", "--site", str(site), "--channel", "stable", "--base-url", "http://127.0.0.1:1",
               "--private-key", str(release_key.private_path), "--artifacts", str(dist)]
    first = run_pipeline(*publish)
    assert first.returncode == 0, first.stderr
    assert "ok: stable serial 1" in first.stdout

    manifest = site / "stable" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"serial": 1', '"serial": 7'))
    tampered = run_pipeline(*publish)
    assert tampered.returncode == 1 and len(tampered.stderr.splitlines()) == 1
    assert tampered.stderr.startswith("pipeline: publish: the restored stable manifest is not one these release "
                                      "keys signed for pilot stable, refusing to sign over it (manifest.json: 0 valid")
    assert '"serial": 7' in manifest.read_text()  # nothing re-signed


def test_publish_refuses_to_sign_over_a_restored_manifest_of_another_channel(tmp_path, archives, release_key):
    dist = tmp_path / "dist"
    dist.mkdir()
    shutil.copy2(archives.build("1.0.0"), dist)
    site = tmp_path / "site"

    def publish(channel: str) -> subprocess.CompletedProcess:
        return run_pipeline("publish", "--site", str(site), "--channel", channel, "--base-url", "http://127.0.0.1:1",
                            "--private-key", str(release_key.private_path), "--artifacts", str(dist))

    assert publish("stable").returncode == 0
    # Someone who can push to the branch puts the stable manifest, validly signed, where beta's belongs.
    shutil.copytree(site / "stable", site / "beta")
    before = (site / "beta" / "manifest.json").read_bytes()
    result = publish("beta")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "the restored beta manifest is not one these release keys signed" in result.stderr
    assert "(the manifest is for channel 'stable', not beta)" in result.stderr
    assert (site / "beta" / "manifest.json").read_bytes() == before  # nothing re-signed


def test_publish_with_two_keys_refuses_a_restored_manifest_only_one_of_them_signed(tmp_path, archives, release_key,
                                                                                   other_key):
    dist = tmp_path / "dist"
    dist.mkdir()
    shutil.copy2(archives.build("1.0.0"), dist)
    site = tmp_path / "site"
    publish = ["publish", "--site", str(site), "--channel", "stable", "--base-url", "http://127.0.0.1:1",
               "--private-key", str(release_key.private_path), "--artifacts", str(dist)]
    assert run_pipeline(*publish).returncode == 0
    before = (site / "stable" / "manifest.json").read_bytes()
    # One key alone must not get a manifest re-signed by every release key.
    result = run_pipeline(*publish, "--private-key", str(other_key.private_path))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "(manifest.json: 1 valid signature(s) from key set 1, 2 required" in result.stderr
    assert (site / "stable" / "manifest.json").read_bytes() == before


def test_publish_refuses_an_expires_in_that_is_no_duration_before_any_step(tmp_path):
    result = run_pipeline("publish", "--site", str(tmp_path / "site"), "--base-url", "http://127.0.0.1:1",
                          "--private-key", str(tmp_path / "none.key"), "--artifacts", str(tmp_path),
                          "--expires-in", "soon")
    assert result.returncode == 2
    assert "argument --expires-in: manifest lifetime: 'soon' is not a duration like 30m, 2h or 90s" in result.stderr
    assert not (tmp_path / "site").exists()


def test_restore_and_save_round_trip_the_tree_through_a_branch(tmp_path):
    origin = tmp_path / "origin.git"
    git("init", "--bare", "--quiet", str(origin))
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    git("init", "--quiet", cwd=workspace)
    git("remote", "add", "origin", origin.as_uri(), cwd=workspace)

    result = run_pipeline("restore", "--site", "site", "--branch", "gh-pages", cwd=workspace)
    assert result.returncode == 0 and "starting an empty release tree" in result.stdout, result.stderr
    (workspace / "site" / "stable").mkdir()
    (workspace / "site" / "stable" / "manifest.json").write_text("{}\n")
    (workspace / "site" / "stable" / ".manifest.json.partial").write_text("half")
    assert run_pipeline("save", "--site", "site", "--branch", "gh-pages", "--message", "one",
                        cwd=workspace).returncode == 0
    assert git("ls-tree", "-r", "--name-only", "gh-pages", cwd=origin) == "stable/manifest.json"

    # A second checkout restores it; a push that raced ahead makes its save fail instead of losing a release.
    other = tmp_path / "other"
    shutil.copytree(workspace / ".git", other / ".git")
    result = run_pipeline("restore", "--site", "site", "--branch", "gh-pages", cwd=other)
    assert result.returncode == 0, result.stderr
    assert (other / "site" / "stable" / "manifest.json").read_text() == "{}\n"
    (workspace / "site" / "a").write_text("a")
    assert run_pipeline("save", "--site", "site", "--branch", "gh-pages", "--message", "two",
                        cwd=workspace).returncode == 0
    (other / "site" / "b").write_text("b")
    raced = run_pipeline("save", "--site", "site", "--branch", "gh-pages", "--message", "three", cwd=other)
    assert raced.returncode == 1 and raced.stderr.startswith("pipeline: save: git push failed")
    assert git("log", "--format=%s", "gh-pages", cwd=origin).splitlines() == ["two", "one"]

    refused = run_pipeline("restore", "--site", "site", "--branch", "gh-pages", cwd=other)
    assert refused.returncode == 1 and "not empty" in refused.stderr


@pytest.mark.parametrize(("repository", "override", "url"), [
    ("Pilot-Dev/pilot", "", "https://pilot-dev.github.io/pilot"),
    ("pilot-dev/Pilot-Dev.github.io", "", "https://pilot-dev.github.io"),  # the owner's own site: the root
    ("pilot-dev/pilot", "https://releases.example.org/pilot/", "https://releases.example.org/pilot"),
])
def test_the_pages_url_is_derived_from_the_repository_unless_a_custom_domain_is_set(repository, override, url,
                                                                                     tmp_path):
    output = tmp_path / "output"
    result = run_pipeline("pages-url", "--repository", repository, "--override", override, "--github-output",
                          env={**os.environ, "GITHUB_OUTPUT": str(output)})
    assert (result.returncode, result.stdout) == (0, url + "\n"), result.stderr
    assert output.read_text() == f"base_url={url}\n"


@pytest.mark.parametrize(("repository", "override"), [("no-slash", ""), ("a/b/c", ""), ("a/b", "ftp://x")])
def test_a_pages_url_it_cannot_derive_is_one_line(repository, override):
    result = run_pipeline("pages-url", "--repository", repository, "--override", override)
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_encrypted_signing_key_in_ci_is_opened_with_the_passphrase_secret(tmp_path, release_key):
    from pilot.update.signing import load_private_key, private_key_pem

    encrypted = private_key_pem(load_private_key(release_key.private_path.read_bytes()), b"correct horse battery")
    env = {**os.environ, "KEY": encrypted.decode()}
    env.pop("PILOT_KEY_PASSPHRASE", None)
    refused = run_pipeline("write-key", "--from-env", "KEY", "--kind", "private",
                           "--out", str(tmp_path / "refused.key"), env=env)
    assert refused.returncode != 0 and "passphrase" in refused.stderr and refused.stderr.count("\n") == 1
    assert not (tmp_path / "refused.key").exists()
    opened = run_pipeline("write-key", "--from-env", "KEY", "--kind", "private", "--out", str(tmp_path / "ci.key"),
                          env={**env, "PILOT_KEY_PASSPHRASE": "correct horse battery"})
    assert opened.returncode == 0, opened.stderr
    assert release_key.public.keyid[:16] in opened.stdout
