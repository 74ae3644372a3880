"""The update pipeline: fetch and verify the manifest, choose, download, pre-flight, swap, exec.

Shared by `pilot self-update` and the daemon's checker. Network access goes through a
Fetcher (pilot.update.fetch, or FileSource for offline installs), so each step is the same
whichever way the bytes arrive.
"""

from __future__ import annotations

import hashlib
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from packaging.version import Version

from pilot.buildinfo import BuildInfo
from pilot.config import Config
from pilot.errors import DownloadError, InstallError, UpdateError
from pilot.launcher import failpoint
from pilot.update import install, sentinel
from pilot.update.manifest import Choice, Manifest, check_artifact_url, choose_update, release_root
from pilot.update.restart import exec_archive
from pilot.update.verify import KeySet, keyset_path, verify_manifest

MANIFEST_CAP = 1024 * 1024
SIGNATURES_CAP = 64 * 1024
KEYSET_CAP = 64 * 1024
PRODUCT = "pilot"
AFTER_RESTART_ARGV = ("self-update", "--after-restart")


@dataclass(frozen=True)
class CheckResult:
    current: Version
    manifest: Manifest
    choice: Choice | None
    skipped_bad: tuple[Version, ...] = ()

    @property
    def latest(self) -> Version | None:
        latest = self.manifest.latest
        return latest.version if latest else None

    @property
    def update_available(self) -> bool:
        return self.choice is not None


@dataclass(frozen=True)
class CachedManifest:
    etag: str | None
    data: bytes
    signatures: bytes


@dataclass(frozen=True)
class Prepared:
    """A downloaded, verified and self-tested archive waiting beside the install."""

    choice: Choice
    candidate: Path
    build_id: str

    def discard(self) -> None:
        self.candidate.unlink(missing_ok=True)  # a no-op once swap_in moved it into place


class FileSource:
    """A Fetcher over local files, for `--from-file PYZ --manifest DIR_OR_FILE`: same checks, no network."""

    def __init__(self, manifest: Path, archive: Path) -> None:
        self.manifest = manifest
        self.archive = archive

    def fetch(self, url: str, *, max_bytes: int, etag: str | None = None):
        from pilot.update.fetch import Response

        path = Path(url)
        try:
            with path.open("rb") as stream:
                data = stream.read(max_bytes + 1)
        except OSError as error:
            raise DownloadError(f"cannot read {path}: {error.strerror}") from None
        if len(data) > max_bytes:
            raise DownloadError(f"{path} is larger than the {max_bytes}-byte cap")
        return Response(status=200, data=data, etag=None, url=url)

    def stream(self, url: str, *, size: int, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        try:
            with self.archive.open("rb") as stream:
                while chunk := stream.read(chunk_size):
                    yield chunk
        except OSError as error:
            raise DownloadError(f"cannot read {self.archive}: {error.strerror}") from None


def rollout_bucket(state: dict) -> int:
    """This install's stable place (0-99) in staged rollouts."""
    return int(hashlib.sha256(state["install_id"].encode()).hexdigest(), 16) % 100


class Updater:
    def __init__(self, *, build: BuildInfo, config: Config, fetcher, manifest_url: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.build = build
        self.config = config
        self.fetcher = fetcher
        self.manifest_url = manifest_url
        self.now = now
        self.paths = install.Paths.for_archive(build.archive)
        self.release_root = release_root(manifest_url)  # None offline: --from-file names its archive itself
        self._cached: CachedManifest | None = None  # in memory only: a 304 reuses bytes that are verified again

    # -- check -------------------------------------------------------------------------------

    def fetch_verified_manifest(self) -> Manifest:
        """Walk the key rotations from the embedded keys, verify the signatures with the last key set,
        then the schema, the key set version, freshness and the serial high-water mark."""
        cached = self._cached
        response = self.fetcher.fetch(self.manifest_url, max_bytes=MANIFEST_CAP, etag=cached.etag if cached else None)
        if response.status == 304 and cached is not None:
            data, signatures = cached.data, cached.signatures  # re-verified below like fresh bytes
        else:
            data = response.data
            signatures = self.fetcher.fetch(self.manifest_url + ".sig", max_bytes=SIGNATURES_CAP).data
        state = sentinel.load_state()
        verified = verify_manifest(
            data, signatures, anchor=KeySet.embedded(self.build), fetch_keyset=self._fetch_keyset, product=PRODUCT,
            channel=self.config.upgrade.channel, now=self.now(), highest_serial=state.get("highest_serial", 0),
            accepted_keyset=state.get("highest_keyset_version", 1))
        manifest, keyset = verified.manifest, verified.keyset
        self._remember_serial(manifest.serial, keyset.version)
        self._cached = CachedManifest(response.etag or (cached.etag if cached else None), data, signatures)
        return manifest

    def _fetch_keyset(self, version: int) -> tuple[bytes, bytes]:
        """keys/<version>.json and its .sig, from the release root beside the channel directory."""
        if self.release_root is not None:
            url = self.release_root + keyset_path(version)
        else:  # offline: SITE/keys/ beside SITE/<channel>/manifest.json
            url = str(Path(self.manifest_url).resolve().parent.parent / keyset_path(version))
        data = self.fetcher.fetch(url, max_bytes=KEYSET_CAP).data
        return data, self.fetcher.fetch(url + ".sig", max_bytes=SIGNATURES_CAP).data

    def _remember_serial(self, serial: int, keyset_version: int = 1) -> None:
        with sentinel.UpdateLock():
            state = sentinel.load_state()
            if serial > state.get("highest_serial", 0) or "install_id" not in state or \
                    keyset_version > state.get("highest_keyset_version", 1):
                state["highest_serial"] = max(serial, state.get("highest_serial", 0))
                state["highest_keyset_version"] = max(keyset_version, state.get("highest_keyset_version", 1))
                state.setdefault("install_id", secrets.token_hex(16))
                sentinel.save_state(state)

    def check(self, target: Version | None = None) -> CheckResult:
        manifest = self.fetch_verified_manifest()
        state = sentinel.load_state()
        current = Version(self.build.version)
        bad = tuple(Version(v) for v in state.get("bad_versions", ()))
        choice = choose_update(
            manifest, current=current, python_tag=self.build.python_tag, platform_tag=self.build.platform_tag,
            rollout_bucket=rollout_bucket(state), bad_versions=bad, target=target,
        )
        skipped = tuple(v for v in bad if v > current and (choice is None or v > choice.release.version))
        return CheckResult(current, manifest, choice, skipped)

    # -- install -----------------------------------------------------------------------------

    def download_verified(self, choice: Choice, candidate: Path, progress: install.Progress | None) -> dict:
        artifact = choice.artifact
        if self.release_root is not None:
            check_artifact_url(artifact.url, self.release_root)
        install.receive(self.fetcher.stream(artifact.url, size=artifact.size), candidate, artifact, progress)
        return install.check_metadata(candidate, version=str(choice.release.version), artifact=artifact)

    def prepare(self, choice: Choice, *, progress: install.Progress | None = None,
                on_step: Callable[[str], None] = lambda step: None) -> Prepared:
        """Download, verify and self-test the new archive beside the install; nothing is swapped yet."""
        install.ensure_writable(self.paths.install.parent)
        install.sweep_stale_temps(self.paths)  # what an update killed earlier left beside the install
        candidate = install.new_temp(self.paths.install.parent)
        try:
            on_step("downloading")
            metadata = self.download_verified(choice, candidate, progress)
            failpoint("after-download")
            on_step("verifying")
            install.preflight(candidate, version=str(choice.release.version), build_id=metadata["build_id"])
            failpoint("after-preflight")
        except OSError as error:  # a full disk or quota, an I/O error: the install is as it was
            candidate.unlink(missing_ok=True)
            raise InstallError(f"cannot write the new version beside the install: {error.strerror or error}",
                               hint=f"free some space in {self.paths.install.parent} and try again") from None
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        return Prepared(choice, candidate, metadata["build_id"])

    def apply(self, prepared: Prepared, *, restart: bool = True, resume_argv: tuple[str, ...] = AFTER_RESTART_ARGV,
              on_step: Callable[[str], None] = lambda step: None) -> str:
        """Swap a prepared archive in under the update lock; then exec it, or return 'installed'."""
        trial = sentinel.Trial(
            from_version=self.build.version, to_version=str(prepared.choice.release.version),
            from_build_id=self.build.build_id, to_build_id=prepared.build_id, install_path=self.paths.install,
            backup_path=self.paths.backup, resume_argv=resume_argv,
        )
        on_step("installing")
        try:
            with sentinel.UpdateLock():
                if restart:
                    sentinel.open_trial(trial)  # before the swap: a crash from here on is caught by the guard
                    failpoint("after-trial-open")
                install.swap_in(prepared.candidate, self.paths)
        finally:
            prepared.discard()
        install.prune_extractions({self.build.build_id, prepared.build_id})
        if not restart:
            sentinel.record_installed(trial)
            return "installed"
        on_step("restarting")
        self.restart(resume_argv)

    def install(self, choice: Choice, *, progress: install.Progress | None = None,
                on_step: Callable[[str], None] = lambda step: None, restart: bool = True,
                resume_argv: tuple[str, ...] = AFTER_RESTART_ARGV) -> str:
        """prepare + apply: what `pilot self-update` does."""
        prepared = self.prepare(choice, progress=progress, on_step=on_step)
        return self.apply(prepared, restart=restart, resume_argv=resume_argv, on_step=on_step)

    def restart(self, argv: tuple[str, ...]) -> NoReturn:
        signal.alarm(sentinel.boot_timeout())  # survives exec: a hung new version is killed or rolled back
        failpoint("before-exec")
        exec_archive(self.paths.install, list(argv))


def refusal_for_install_method(method: str) -> UpdateError | None:
    """Package managers own their installs: say the command that updates Pilot there."""
    commands = {
        "pip": "pip install --upgrade pilot",
        "pipx": "pipx upgrade pilot",
        "uv": "uv tool upgrade pilot",
        "homebrew": "brew upgrade pilot",
        "source": "git pull (this is a source checkout)",
    }
    if method not in commands:
        return None
    return UpdateError(f"Pilot was installed with {method}, which owns its files",
                       hint=f"update with: {commands[method]}")

