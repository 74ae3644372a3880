"""The update engine: the one owner of an update, its flow and every guard.

    check    fetch the signed manifest, verify it (pilot.update.verify.verify_manifest), choose a release
    begin    take the whole-update lock (across processes and threads); refuse while a new version's
             trial is open or when another process replaced the installed archive
    prepare  the same-version rule; download beside the install, verify size, sha256 and metadata;
             run the new archive's self-test; nothing is swapped yet
    apply    open the trial, swap under the update lock (the installed archive becomes the backup),
             then exec the new version, or leave it to start with the next command

`pilot self-update`, the headless daemon and the dashboard all go through here (the front
door is pilot.update). The network is a Fetcher (pilot.update.fetch); the self-test and the
exec are passed in, so the whole flow runs in tests without building archives.
"""

from __future__ import annotations

import hashlib
import os
import signal
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.version import Version

from pilot.buildinfo import BuildInfo, current_build, install_method
from pilot.config import Config, load_config, parse_duration, release_auth
from pilot.errors import (
    ConfigError,
    DownloadError,
    InstallError,
    ManifestError,
    PilotError,
    StateError,
    UpdateCancelled,
    UpdateError,
    UsageError,
    VerificationError,
)
from pilot.launcher import (
    BOOT_PROTOCOL,
    BOOT_TIMEOUT_ENV,
    BOOT_TIMEOUT_SECONDS,
    Refused,
    UpdateInProgress,
    UpdateLock,
    failpoint,
    interrupt_pending,
    interrupts_deferred,
    release_trial,
    update_dir,
    user_rollback,
)
from pilot.net import ReleaseAuth
from pilot.update import delta, early, install, sentinel, state
from pilot.update.fetch import Fetcher, FileSource
from pilot.update.manifest import (
    MANIFEST_CAP,
    Artifact,
    Choice,
    DeltaIndex,
    Manifest,
    Standing,
    check_artifact_url,
    choose_update,
    parse_version,
    peek_serial,
    release_root,
    snapshot_path,
)
from pilot.update.restart import exec_archive
from pilot.update.verify import KeySet, check_digest, keyset_path, verify_manifest

SIGNATURES_CAP = 64 * 1024
KEYSET_CAP = 64 * 1024
PRODUCT = "pilot"
AFTER_RESTART_ARGV = ("self-update", "--after-restart")
DEADLINE_ENV = "PILOT_UPDATE_DEADLINE"  # seconds one fetch may take in all (retries, redirects, body)
DEFAULT_DEADLINE = 300.0
FIRST_CHECK_ENV = "PILOT_FIRST_CHECK_DELAY"
EARLY_UNPACK_ENV = "PILOT_UNPACK_DURING_DOWNLOAD"
DELTA_ENV = "PILOT_DELTA"
DELTA_MODES = ("auto", "never")
Step = Callable[[str], None]
Cancelled = install.Cancelled
Progress = install.Progress


def quiet(step: str) -> None:
    pass


# --- settings: everything the update reads, parsed before any network ---------------------------


@dataclass(frozen=True)
class Settings:
    manifest_url: str | None  # open_updater refuses None; the daemon does not check without one
    channel: str
    boot_timeout: float
    fetch_deadline: float
    first_check_delay: float | None  # the checker's first delay (PILOT_FIRST_CHECK_DELAY), None: random
    unpack_during_download: str = "auto"  # PILOT_UNPACK_DURING_DOWNLOAD: auto | always | never (pilot.update.early)
    delta: str = "auto"  # PILOT_DELTA: auto (when the release has an index) | never (pilot.update.delta)
    auth: ReleaseAuth | None = None  # the private release host's header (PILOT_UPDATE_TOKEN, upgrade.token_file)

    @classmethod
    def read(cls, config: Config, env: Mapping[str, str], *, manifest_url: str | None = None,
             channel: str | None = None) -> Settings:
        """Refuse a bad value in one line now, not after a download (durations accept 90s, 2m, 1.5h)."""

        def seconds(name: str, default: float | None) -> float | None:
            value = env.get(name, "").strip()
            return parse_duration(value, name) if value else default

        url = manifest_url or config.upgrade.manifest_url
        if url is not None:
            check_manifest_url(url)
        def choice(name: str, allowed: tuple[str, ...]) -> str:
            value = env.get(name, "").strip().lower() or allowed[0]
            if value not in allowed:
                raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
            return value

        return cls(manifest_url=url, channel=channel or config.upgrade.channel, auth=release_auth(config, url, env),
                   boot_timeout=seconds(BOOT_TIMEOUT_ENV, BOOT_TIMEOUT_SECONDS),
                   fetch_deadline=seconds(DEADLINE_ENV, DEFAULT_DEADLINE),
                   first_check_delay=seconds(FIRST_CHECK_ENV, None),
                   unpack_during_download=choice(EARLY_UNPACK_ENV, early.MODES), delta=choice(DELTA_ENV, DELTA_MODES))


def snapshot_url(manifest_url: str, serial: int) -> str:
    """The immutable copy of the manifest of `serial` beside manifest.json: <channel>/manifests/<serial>.json."""
    return urllib.parse.urljoin(manifest_url, snapshot_path(serial))


def check_manifest_url(url: str) -> None:
    """A manifest URL the fetcher would refuse is a configuration error, found before any download."""
    from pilot.update.fetch import check_url

    if Path(url).is_file():  # --from-file: a local manifest
        return
    try:
        check_url(url)
    except UpdateError as error:
        raise ConfigError(f"the manifest URL: {error.message}", hint=error.hint) from None


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    current: Version
    manifest: Manifest
    choice: Choice | None
    skipped: tuple[tuple[Version, str], ...] = ()  # newer versions passed over, and why

    @property
    def latest(self) -> Version | None:
        latest = self.manifest.latest
        return latest.version if latest else None

    @property
    def update_available(self) -> bool:
        return self.choice is not None

    @property
    def version(self) -> Version | None:
        return self.choice.release.version if self.choice else None

    @property
    def standing(self) -> Standing:
        """The running version as the manifest sees it: below min_supported_version, yanked or halted."""
        return self.manifest.standing(self.current)

    @property
    def required(self) -> bool:
        """Below min_supported_version: the update comes before anything else (a daemon applies it by itself)."""
        return self.standing.required

    def standing_line(self, how: str = "with `pilot self-update`") -> str | None:
        """What every command and the dashboard say about the running version, None when all is well."""
        target = self.version if self.version is not None and self.version != self.current else None
        return self.standing.line(target, how)


@dataclass(frozen=True)
class Prepared:
    """A downloaded, verified and self-tested archive waiting beside the install."""

    choice: Choice
    candidate: Path
    build_id: str
    boot_protocol: int
    download: delta.Report | None = None  # how it came: by delta or whole, bytes fetched and reused

    def discard(self) -> None:
        self.candidate.unlink(missing_ok=True)  # a no-op once swap_in moved it into place


@dataclass(frozen=True)
class CachedManifest:
    etag: str | None
    data: bytes
    signatures: bytes
    serial: int = 0  # of the verified manifest these bytes are


# --- the engine -------------------------------------------------------------------------------


class InstallMarks:
    """The serial and key set high-water marks this install keeps in update/state.json: the Updater's own.
    (A simulation of many installs in one process gives each updater marks of its own instead.)"""

    def load(self) -> state.UpdateState:
        return state.load()

    def remember(self, serial: int, keyset_version: int) -> None:
        state.remember_manifest(serial, keyset_version)


class Updater:
    def __init__(self, *, build: BuildInfo, settings: Settings, fetcher: Fetcher,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 self_test: Callable[..., None] = install.preflight,
                 execute: Callable[..., None] = exec_archive, marks: InstallMarks | None = None) -> None:
        self.build = build
        self.settings = settings
        self.fetcher = fetcher
        self.now = now
        self.self_test = self_test
        self.execute = execute
        self.marks = InstallMarks() if marks is None else marks
        self.paths = install.Paths.for_archive(build.archive)
        self._cached: CachedManifest | None = None  # in memory only: a 304 reuses bytes that are verified again

    @property
    def release_root(self) -> str | None:
        """None offline: --from-file names its archive itself."""
        return release_root(self.settings.manifest_url) if self.settings.manifest_url else None

    # -- check -------------------------------------------------------------------------------

    def check(self, target: Version | str | None = None) -> CheckResult:
        """The release to install: the newest one offered, or `target` (`--to`, a listed version)."""
        target = parse_target(target)
        manifest = self.fetch_verified_manifest()
        known = state.load()
        current = Version(self.build.version)
        bad = {Version(v): "failed to start here before" for v in known.bad_versions}
        declined = {Version(v): "was rolled back on request" for v in known.user_rollbacks}
        skipped_why = {**declined, **bad}
        choice = choose_update(
            manifest, current=current, python_tag=self.build.python_tag, platform_tag=self.build.platform_tag,
            rollout_bucket=rollout_bucket(state.install_id()), bad_versions=tuple(skipped_why), target=target,
        )
        listed = {r.version for r in manifest.releases if not r.yanked}
        skipped = tuple(sorted((v, why) for v, why in skipped_why.items() if v > current and v in listed
                               and (choice is None or v > choice.release.version)))
        result = CheckResult(current, manifest, choice, skipped)
        if target is None:  # what every command then says about this version (state.remember_standing)
            state.remember_standing(self.build.version, result.standing_line(), required=result.required)
        return result

    def fetch_verified_manifest(self) -> Manifest:
        """The channel's manifest, verified (pilot.update.verify.verify_manifest) with signatures no cache can
        have paired with other bytes: those of the immutable <channel>/manifests/<serial>.json.sig, the serial
        peeked from the bytes fetched (and vouched for by nothing but those signatures).

        A site or mirror without that file (404, or any failure without Retry-After) falls back to the mutable
        manifest.json.sig, as before. A cache or mirror mixing old and new files costs no error while this
        updater holds a verified manifest (the ETag cache): bytes claiming an older serial than it are never
        accepted, and bytes that fail against the mutable signatures are a mix, not news; either way it keeps
        the manifest it holds, verified again, its ETag unchanged so that the next check fetches afresh. The
        high-water marks are only ever raised, so nothing here can accept an older manifest."""
        url, cached = self.settings.manifest_url, self._cached
        response = self.fetcher.fetch(url, max_bytes=MANIFEST_CAP, etag=cached.etag if cached else None)
        if response.status == 304 and cached is not None:
            verified = self._verify(cached.data, cached.signatures)  # verified again like fresh bytes
            self._accept(verified, replace(cached, etag=response.etag or cached.etag))
            return verified.manifest
        data, serial = response.data, peek_serial(response.data)
        if cached is not None and serial is not None and serial < cached.serial:
            kept = self._kept(cached)  # an older manifest.json than the one held: a lagging cache, or a replay
            if kept is not None:
                return kept
        signatures, immutable = self._fetch_signatures(url, serial)
        try:
            verified = self._verify(data, signatures)
        except (ManifestError, VerificationError):
            # Against the immutable file a failure is the bytes' own; against the mutable one it may be a mix.
            kept = None if immutable or cached is None or serial is None else self._kept(cached)
            if kept is None:
                raise
            return kept
        self._accept(verified, CachedManifest(response.etag or (cached.etag if cached else None), data, signatures,
                                              verified.manifest.serial))
        return verified.manifest

    def _fetch_signatures(self, url: str, serial: int | None) -> tuple[bytes, bool]:
        """(the signatures, whether they came from the immutable file of `serial`)."""
        if serial is not None:
            try:
                return self.fetcher.fetch(snapshot_url(url, serial) + ".sig", max_bytes=SIGNATURES_CAP).data, True
            except DownloadError as error:
                if error.retry_after is not None:  # the server asks for a pause: no second request now
                    raise
        return self.fetcher.fetch(url + ".sig", max_bytes=SIGNATURES_CAP).data, False

    def _verify(self, data: bytes, signatures: bytes):
        known = self.marks.load()
        return verify_manifest(
            data, signatures, anchor=KeySet.embedded(self.build), fetch_keyset=self._fetch_keyset, product=PRODUCT,
            channel=self.settings.channel, now=self.now(), highest_serial=known.highest_serial,
            accepted_keyset=known.highest_keyset_version)

    def _kept(self, cached: CachedManifest) -> Manifest | None:
        """The manifest this updater holds, if it still verifies (signatures, expiry, high-water marks)."""
        try:
            return self._verify(cached.data, cached.signatures).manifest
        except PilotError:
            return None

    def _accept(self, verified, cached: CachedManifest) -> None:
        self.marks.remember(verified.manifest.serial, verified.keyset.version)
        self._cached = cached

    def _fetch_keyset(self, version: int) -> tuple[bytes, bytes]:
        """keys/<version>.json and its .sig, from the release root beside the channel directory."""
        root = self.release_root
        if root is not None:
            url = root + keyset_path(version)
        else:  # offline: SITE/keys/ beside SITE/<channel>/manifest.json
            url = str(Path(self.settings.manifest_url).resolve().parent.parent / keyset_path(version))
        data = self.fetcher.fetch(url, max_bytes=KEYSET_CAP).data
        return data, self.fetcher.fetch(url + ".sig", max_bytes=SIGNATURES_CAP).data

    # -- what is installed -------------------------------------------------------------------

    def installed_version(self) -> str | None:
        """The version of the archive at the install path, which another process may have replaced."""
        try:
            return install.read_metadata(self.paths.install).get("version")
        except UpdateError:
            return None

    def ensure_writable(self) -> None:
        """Both places an update writes, checked before anything is fetched."""
        try:
            os.makedirs(update_dir(), exist_ok=True)
            writable = os.access(update_dir(), os.W_OK | os.X_OK)
        except OSError as error:
            raise StateError(f"cannot use {update_dir()}: {error.strerror or error}",
                             hint="check PILOT_HOME and its permissions") from None
        if not writable:
            raise StateError(f"cannot write to {update_dir()}, where Pilot keeps its update state",
                             hint="check PILOT_HOME and its permissions")
        install.ensure_writable(self.paths.install.parent)

    # -- one update --------------------------------------------------------------------------

    def begin(self) -> Update:
        """Take the whole-update lock and check that an update may start now."""
        self.ensure_writable()
        lock = UpdateInProgress()
        if not lock.acquire():
            raise UpdateError("another update is running", hint="wait for it to finish, then try again")
        try:
            if sentinel.open_trial_record() is not None:
                raise UpdateError("a new version is still starting (its trial boot is open)",
                                  hint="run `pilot self-update --status` in a moment")
            installed = self.installed_version()
            if installed is None:
                raise UpdateError(f"{self.paths.install} is no longer a readable Pilot archive",
                                  hint="reinstall Pilot, or roll back: pilot self-update --rollback")
            if installed != self.build.version:
                raise UpdateError(f"pilot {installed} was installed by another process while this "
                                  f"{self.build.version} runs", hint="run the command again")
        except BaseException:
            lock.release()
            raise
        return Update(self, lock)

    def update(self, target: Version | str | None = None, *,
               confirm: Callable[[CheckResult], None] = lambda r: None, progress: Progress | None = None,
               on_step: Step = quiet, restart: bool = True, cancelled: Cancelled = install.never,
               on_note: Step = quiet, resume_argv: tuple[str, ...] = AFTER_RESTART_ARGV) -> UpdateOutcome:
        """What `pilot self-update` does: check, then prepare and apply the chosen release.

        Offline (a FileSource) the target is the given archive's own version, unless one is named."""
        if target is None and isinstance(self.fetcher, FileSource):
            target = install.read_metadata(self.fetcher.archive).get("version")
        with self.begin() as update:
            result = self.check(target)
            if result.choice is None:
                return UpdateOutcome("up_to_date", result)
            if str(result.choice.release.version) == self.build.version:
                return UpdateOutcome("already_installed", result)
            confirm(result)
            prepared = update.prepare(result.choice, progress=progress, on_step=on_step, cancelled=cancelled,
                                      on_note=on_note)
            done = update.apply(prepared, restart=restart, on_step=on_step, cancelled=cancelled,
                                resume_argv=resume_argv)
            return UpdateOutcome(done, result, prepared.download)

    def restart_into_installed(self, argv: tuple[str, ...], *, cancelled: Cancelled = install.never) -> None:
        """Exec the archive another process installed (the daemon is older than it). Returns only on a stop."""
        try:
            protocol = install.read_metadata(self.paths.install).get("boot_protocol", 1)
        except UpdateError:
            raise InstallError(f"{self.paths.install} is not a readable Pilot archive any more") from None
        self.execute(self.paths.install, list(argv), stop_requested=lambda: cancelled() or interrupt_pending(),
                     keep_stop_signals_blocked=protocol >= BOOT_PROTOCOL)

@dataclass(frozen=True)
class UpdateOutcome:
    done: str  # up_to_date, already_installed, installed (the next command starts it), stopped
    result: CheckResult
    download: delta.Report | None = None


@dataclass
class Update:
    """One update in progress: it holds the whole-update lock until it is closed (or exec'd away)."""

    updater: Updater
    lock: UpdateInProgress

    def __enter__(self) -> Update:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self.lock.release()

    def prepare(self, choice: Choice, *, progress: Progress | None = None, on_step: Step = quiet,
                cancelled: Cancelled = install.never, on_note: Step = quiet) -> Prepared:
        """Download, verify and self-test the new archive beside the install; nothing is swapped yet."""
        updater, paths = self.updater, self.updater.paths
        if str(choice.release.version) == updater.build.version:
            raise UpdateError(f"pilot {updater.build.version} is already installed")
        install.sweep_stale_temps(paths)  # what an update killed earlier left beside the install
        early.sweep_staging()  # and in the extraction root
        candidate = install.new_temp(paths.install.parent)
        try:
            on_step("downloading")
            metadata, report = self._download(choice, candidate, progress, cancelled)
            on_note(report.line() if report.note is None else f"{report.line()}: {report.note}")
            failpoint("after-download")
            on_step("verifying")
            updater.self_test(candidate, version=str(choice.release.version), build_id=metadata["build_id"],
                              cancelled=cancelled, dashboard=state.load().dashboard_user)
            failpoint("after-preflight")
        except OSError as error:  # a full disk or quota, an I/O error: the install is as it was
            candidate.unlink(missing_ok=True)
            raise InstallError(f"cannot write the new version beside the install: {error.strerror or error}",
                               hint=f"free some space in {paths.install.parent} and try again") from None
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        return Prepared(choice, candidate, metadata["build_id"], int(metadata.get("boot_protocol", 1)), report)

    def _download(self, choice: Choice, candidate: Path, progress: Progress | None,
                  cancelled: Cancelled) -> tuple[dict, delta.Report]:
        """The new archive into candidate: by delta when its index allows, else whole; checked either way."""
        artifact = choice.artifact
        root = self.updater.release_root
        if root is not None:
            check_artifact_url(artifact.url, root)
        report, same = self._delta(artifact, candidate, progress, cancelled)
        mode = "never" if report.method == "delta" else self.updater.settings.unpack_during_download
        unpacking = early.EarlyUnpack(candidate, artifact.size, mode)
        try:
            if report.method != "delta":
                install.receive(self.updater.fetcher.stream(artifact.url, size=artifact.size), candidate, artifact,
                                progress, cancelled, written=unpacking.written)
            metadata = install.check_metadata(candidate, version=str(choice.release.version), artifact=artifact)
        except BaseException:
            unpacking.abandon()  # what it unpacked was never verified: gone with the download
            raise
        unpacking.finish(metadata["build_id"])  # the hash matched: its copy becomes the build's extraction
        early.reuse_extraction(candidate, metadata["build_id"], self.updater.build.build_id, same)
        return metadata, report

    def _delta(self, artifact: Artifact, candidate: Path, progress: Progress | None,
               cancelled: Cancelled) -> tuple[delta.Report, frozenset[str]]:
        """A delta download into candidate (method "delta") and the payload members it copied from the
        installed archive, or a "full" report saying why it was not used."""
        fetcher, spec = self.updater.fetcher, artifact.delta_index
        whole = delta.Report("full", artifact.size, 0, artifact.size)
        if spec is None or not hasattr(fetcher, "fetch_range") or self.updater.settings.delta == "never":
            return whole, frozenset()
        spent = [0]  # what an attempt fetched: a whole download after it counts it too
        try:
            return self._assemble(artifact, spec, candidate, progress, cancelled, spent)
        except UpdateCancelled:
            raise
        except UpdateError as why:  # delta.Unavailable, or a refused URL, download or hash: the whole file may do
            note = why.message
        except OSError as error:  # the installed archive unreadable, say
            note = error.strerror or str(error)
        return whole._replace(bytes_downloaded=artifact.size + spent[0],
                              note=f"no delta ({note}), so the whole archive"), frozenset()

    def _assemble(self, artifact: Artifact, spec: DeltaIndex, candidate: Path, progress: Progress | None,
                  cancelled: Cancelled, spent: list[int]) -> tuple[delta.Report, frozenset[str]]:
        fetcher, root = self.updater.fetcher, self.updater.release_root
        if root is not None:
            check_artifact_url(spec.url, root, "the delta index URL")
        if spec.size > delta.INDEX_CAP:
            raise delta.Unavailable(f"the signed delta index is {spec.size} bytes, more than any of Pilot's")
        response = fetcher.fetch(spec.url, max_bytes=spec.size)
        spent[0] += len(response.data)
        check_digest(len(response.data), hashlib.sha256(response.data).hexdigest(), size=spec.size,
                     sha256=spec.sha256, what="the delta index")
        index = delta.parse_index(response.data, size=artifact.size, sha256=artifact.sha256,
                                  resolve=lambda name: urllib.parse.urljoin(spec.url, name))
        if root is not None:
            check_artifact_url(index.listing_url, root, "the delta listing URL")

        def fetch_range(url: str, start: int, length: int) -> bytes:
            data = fetcher.fetch_range(url, start=start, length=length)
            spent[0] += len(data)
            return data

        def fetched(count: int) -> None:
            if cancelled():
                raise UpdateCancelled("the update was cancelled during the download; nothing changed")
            if progress:
                progress(count, wanted)

        with self.updater.paths.install.open("rb") as installed:
            def read(offset: int, length: int) -> bytes:
                return os.pread(installed.fileno(), length, offset)

            size = os.fstat(installed.fileno()).st_size
            installed_pieces = delta.installed_pieces(read, size)
            steps = delta.plan(index, installed_pieces,
                               lambda start, length: fetch_range(index.listing_url, start, length))
            wanted = sum(end - start for start, end in delta.remote_ranges(steps))
            if wanted > delta.MAX_FETCHED_FRACTION * artifact.size:
                raise delta.Unavailable(f"it would fetch {wanted * 100 // artifact.size}% of the archive")
            with candidate.open("w+b") as out:  # read back: the directories are rebuilt from it, then it is hashed
                counts = delta.assemble(
                    steps, out.fileno(), zips=index.zips, attributes=installed_pieces.attributes,
                    read_installed=read, sha256=artifact.sha256, progress=fetched,
                    fetch_artifact=lambda start, length: fetch_range(artifact.url, start, length))
                os.fsync(out.fileno())
                same = delta.copied_members(steps, lambda offset, length: os.pread(out.fileno(), length, offset),
                                            artifact.size)
        return delta.Report("delta", spent[0], counts.reused, artifact.size), same

    def apply(self, prepared: Prepared, *, restart: bool = True, resume_argv: tuple[str, ...] = AFTER_RESTART_ARGV,
              on_step: Step = quiet, cancelled: Cancelled = install.never) -> str:
        """Swap the prepared archive in, then exec it (returns only when a stop came first: "stopped"),
        or with restart=False leave it to start under the boot guard with the next command ("installed").
        Either way the update is over when it returns: the lock is released."""
        try:
            record = self._swap(prepared, resume_argv if restart else None, on_step)
            install.prune_extractions({self.updater.build.build_id, prepared.build_id})
            if not restart:
                state.record(record, "installed", notice=False)
                return "installed"
            on_step("restarting")
            try:
                self._exec(resume_argv, prepared.boot_protocol, lambda: cancelled() or interrupt_pending())
            except (OSError, KeyboardInterrupt):  # the exec failed, or a stop arrived as it was given up
                release_trial(record)
                raise
            release_trial(record)  # a stop came first: the new version is installed and starts next time
            return "stopped"
        finally:
            self.close()

    def _swap(self, prepared: Prepared, exec_argv: tuple[str, ...] | None, on_step: Step) -> dict:
        """Open the trial and put the new archive in place, keeping the installed one as the backup."""
        updater, build = self.updater, self.updater.build
        trial = sentinel.trial(
            from_version=build.version, to_version=str(prepared.choice.release.version),
            from_build_id=build.build_id, to_build_id=prepared.build_id, install_path=updater.paths.install,
            backup_path=updater.paths.backup, download=prepared.download.as_json() if prepared.download else None,
        )
        on_step("installing")
        record: dict | None = None
        try:
            with interrupts_deferred(), UpdateLock():  # a stop signal waits until the install is whole again
                record = sentinel.open_trial(trial, exec_argv=exec_argv, timeout=updater.settings.boot_timeout)
                failpoint("after-trial-open")
                try:
                    install.swap_in(prepared.candidate, updater.paths)
                except BaseException:
                    if prepared.candidate.exists():  # the rename did not happen: the old archive is installed
                        sentinel.void_trial(record)
                    raise
        except KeyboardInterrupt:
            if record is not None:
                release_trial(record)  # swapped: the new version starts with the next command instead
            raise
        except OSError as error:
            swapped = not prepared.candidate.exists()
            if swapped and record is not None:
                release_trial(record)  # in place but not synced to disk: it starts, under the guard, next time
            where = "the new version starts with your next command" if swapped else \
                f"the previous version is still installed at {updater.paths.install}"
            raise InstallError(f"cannot put the new version in place: {error.strerror or error}", hint=where) from None
        finally:
            prepared.discard()
        return record

    def _exec(self, argv: tuple[str, ...], protocol: int, stop: Callable[[], bool]) -> None:
        signal.alarm(max(1, int(self.updater.settings.boot_timeout)))  # survives exec: a hang is rolled back
        failpoint("before-exec")
        try:
            self.updater.execute(self.updater.paths.install, list(argv), stop_requested=stop,
                                 keep_stop_signals_blocked=protocol >= BOOT_PROTOCOL)
        finally:
            signal.alarm(0)


def parse_target(target: Version | str | None) -> Version | None:
    """`--to VERSION`: a canonical PEP 440 version, or a usage error in one line."""
    if target is None or isinstance(target, Version):
        return target
    try:
        return parse_version(str(target), "--to")
    except PilotError as error:
        raise UsageError(error.message) from None


def rollout_bucket(install_id: str) -> int:
    """This install's stable place (0-99) in staged rollouts."""
    return int(hashlib.sha256(install_id.encode()).hexdigest(), 16) % 100


# --- the front door's constructors ------------------------------------------------------------


def refusal_for_install_method(method: str) -> UpdateError | None:
    """Package managers own their installs: say the command that updates Pilot there."""
    if method == "source":
        return UpdateError("this Pilot runs from a source checkout, not from its archive",
                           hint="update it with: git pull")
    commands = {
        "pip": "pip install --upgrade pilot",
        "pipx": "pipx upgrade pilot",
        "uv": "uv tool upgrade pilot",
        "homebrew": "brew upgrade pilot",
    }
    if method not in commands:
        return None
    return UpdateError(f"Pilot was installed with {method}, which owns its files",
                       hint=f"update with: {commands[method]}")


def updatable_build() -> BuildInfo:
    """The running archive, or the one-line refusal of an install a package manager owns."""
    refusal = refusal_for_install_method(install_method())
    build = current_build()
    if refusal is not None or build is None:
        raise refusal or UpdateError("self-update works only on the Pilot .pyz archive")
    return build


def open_updater(*, config: Config | None = None, manifest_url: str | None = None, channel: str | None = None,
                 fetcher: Fetcher | None = None, background: bool = False, build: BuildInfo | None = None,
                 env: Mapping[str, str] | None = None) -> Updater:
    """The engine for this running archive, with every setting parsed and refused up front.

    background: the daemon's checker, which never waits inside a fetch for a server's Retry-After
    (it schedules its next check then instead)."""
    build = build or updatable_build()
    config = config or load_config()
    settings = Settings.read(config, os.environ if env is None else env, manifest_url=manifest_url, channel=channel)
    if settings.manifest_url is None:
        raise ConfigError("no manifest URL is configured",
                          hint=f"set upgrade.manifest_url in {config.config_file}, or PILOT_MANIFEST_URL")
    if fetcher is None:
        from pilot.update.fetch import HttpFetcher

        fetcher = HttpFetcher(deadline=settings.fetch_deadline, wait_for_retry_after=not background,
                              auth=settings.auth)
    return Updater(build=build, settings=settings, fetcher=fetcher)


def roll_back() -> tuple[str, str]:
    """`pilot self-update --rollback`: swap the install and its backup.

    Returns (the version now installed, the one kept as backup). Needs no manifest and no
    setting: recovery must work whatever else is wrong."""
    paths = install.Paths.for_archive(updatable_build().archive)
    install.ensure_writable(paths.install.parent)
    try:
        return user_rollback(str(paths.install))
    except Refused as refusal:
        raise UpdateError(str(refusal)) from None


def open_background_updater(config: Config) -> Updater | None:
    """The daemon's engine, or None where it cannot update itself (a package manager's install, no
    manifest URL). Bad update settings are refused here, so the daemon does not start with them."""
    try:
        build = updatable_build()
    except UpdateError:
        return None
    if not config.upgrade.manifest_url:
        return None
    return open_updater(config=config, build=build, background=True)


__all__ = ["CheckResult", "Prepared", "Settings", "Update", "UpdateOutcome", "Updater", "open_background_updater",
           "open_updater", "refusal_for_install_method", "roll_back", "rollout_bucket", "updatable_build"]
