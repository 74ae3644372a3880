"""The release manifest: bytes -> Manifest, freshness checks, and which release to install.

Pure: no I/O, no clock of its own (callers pass `now`). Everything here raises
ManifestError with a line fit for the user.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from packaging.version import InvalidVersion, Version

from pilot.errors import ManifestError
from pilot.update.schema import quote_untrusted, validate

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MAX_DEPTH = 32
# The one size limit of a channel's manifest.json: a client reads no more of it (pilot.update.updater), and
# release.py refuses to publish more (and warns past MANIFEST_WARN_FRACTION of it: time to `prune`).
MANIFEST_CAP = 1024 * 1024
MANIFEST_WARN_FRACTION = 0.75


@dataclass(frozen=True)
class DeltaIndex:
    url: str
    size: int
    sha256: str
    chunk_size: int


@dataclass(frozen=True)
class Artifact:
    python_tag: str
    platform_tag: str
    url: str
    size: int
    sha256: str
    build_id: str | None = None
    delta_index: DeltaIndex | None = None

    @property
    def tag(self) -> str:
        return f"{self.python_tag}-{self.platform_tag}"


@dataclass(frozen=True)
class Release:
    version: Version
    released_at: datetime
    artifacts: tuple[Artifact, ...]
    notes: str = ""
    yanked: bool = False
    yanked_reason: str | None = None
    rollout_percent: int = 100

    @property
    def halted(self) -> bool:
        """`release.py halt`: rolled out to nobody, so no new install takes it; those on it are told."""
        return self.rollout_percent == 0

    @property
    def good(self) -> bool:
        """Neither yanked nor halted: a release an install may be moved to."""
        return not self.yanked and not self.halted

    def artifact_for(self, python_tag: str, platform_tag: str) -> Artifact | None:
        for artifact in self.artifacts:
            if (artifact.python_tag, artifact.platform_tag) == (python_tag, platform_tag):
                return artifact
        return None


@dataclass(frozen=True)
class Manifest:
    product: str
    channel: str
    serial: int
    issued_at: datetime
    expires_at: datetime
    releases: tuple[Release, ...]
    keyset_version: int = 1
    min_supported_version: Version | None = None

    @property
    def latest(self) -> Release | None:
        """The newest release that is neither yanked nor halted, whatever its platforms."""
        return max((r for r in self.releases if r.good), key=lambda r: r.version, default=None)

    def release(self, version: Version) -> Release | None:
        return next((r for r in self.releases if r.version == version), None)

    def required(self, current: Version) -> bool:
        """Whether `current` is below the channel's min_supported_version: it must update before anything else."""
        return self.min_supported_version is not None and current < self.min_supported_version

    def standing(self, current: Version) -> Standing:
        """What this signed manifest says of the version an install runs."""
        running = self.release(current)
        return Standing(
            version=current,
            minimum=self.min_supported_version if self.required(current) else None,
            yanked=running is not None and running.yanked,
            halted=running is not None and not running.yanked and running.halted,
            reason=(running.yanked_reason or None) if running is not None and running.yanked else None,
            channel=self.channel,
        )


@dataclass(frozen=True)
class Standing:
    """The running version as the manifest sees it: below the minimum, yanked, or halted (or none of these)."""

    version: Version
    minimum: Version | None = None  # min_supported_version, when the running version is below it
    yanked: bool = False
    halted: bool = False
    reason: str | None = None  # yanked_reason
    channel: str = "stable"

    @property
    def required(self) -> bool:
        return self.minimum is not None

    @property
    def troubled(self) -> bool:
        return self.required or self.yanked or self.halted

    def line(self, target: Version | None, how: str = "with `pilot self-update`") -> str | None:
        """One line for every command's status and the dashboard; None when there is nothing to say.
        `target`: the release the update would move to (possibly an older, good one), if any; `how` to."""
        if not self.troubled:
            return None
        if self.required:
            what = (f"pilot {self.version} is below {self.minimum}, the oldest version the {self.channel} "
                    "channel supports")
        elif self.yanked:
            why = f": {quote_untrusted(self.reason, 200)}" if self.reason else ""
            what = f"pilot {self.version} was yanked by its publisher{why}"
        else:
            what = f"pilot {self.version} was halted by its publisher (no new installs)"
        if target is None:
            return f"{what}; no release to move to is offered yet"
        move = "update to" if target > self.version else "go back to"
        return f"{what}: {move} {target} {how}"


@dataclass(frozen=True)
class Choice:
    release: Release
    artifact: Artifact


def load_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, bounded nesting."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{what}: not UTF-8 (byte {error.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise ManifestError(f"{what}: not valid JSON ({error.msg} at {where})") from None
    except (RecursionError, ValueError) as error:
        raise ManifestError(f"{what}: {error}") from None
    if _depth(value) > MAX_DEPTH:
        raise ManifestError(f"{what}: nested too deeply")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {quote_untrusted(key)}")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """How deeply `value` nests, up to MAX_DEPTH + 1; iterative, so no document can exhaust the stack."""
    deepest, pending = 0, [(value, 1)]
    while pending and deepest <= MAX_DEPTH:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_timestamp(text: str, what: str) -> datetime:
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ManifestError(f"{what}: {quote_untrusted(text)} is not a real date") from None


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_version(text: str, what: str = "version") -> Version:
    """A canonical PEP 440 public version, as the schema's `version` pattern allows."""
    validate(text, "version", what=what)
    try:
        return Version(text)
    except InvalidVersion:  # pragma: no cover - the pattern admits only valid versions
        raise ManifestError(f"{what}: {quote_untrusted(text)} is not a PEP 440 version") from None


SERIAL_LIMIT = 9007199254740991  # manifest.schema.json's largest counter
# Every signing also writes <channel>/manifests/<serial>.json and .sig (release.py sign_and_write): the same bytes
# and signatures under a name that never changes, so that no cache can pair a manifest with another's signatures.
SNAPSHOTS = "manifests"


def snapshot_path(serial: int) -> str:
    """Where the immutable copy of the manifest of this serial lies, relative to the channel's manifest.json."""
    return f"{SNAPSHOTS}/{int(serial)}.json"


def peek_serial(data: bytes) -> int | None:
    """The serial unverified bytes claim, to choose which immutable signature file to fetch beside them:
    strict JSON (load_json) whose top level is an object with an integer serial in the schema's range.
    None for anything else; such bytes then meet the normal verification, which names what is wrong.
    Nothing is trusted on its strength: the signatures it leads to must still verify these exact bytes."""
    if len(data) > MANIFEST_CAP:
        return None
    try:
        document = load_json(data, "manifest")
    except ManifestError:
        return None
    serial = document.get("serial") if isinstance(document, dict) else None
    return serial if type(serial) is int and 1 <= serial <= SERIAL_LIMIT else None


def parse_manifest(data: bytes) -> Manifest:
    """Validate against manifest.schema.json, then the rules a schema cannot say."""
    document = load_json(data, "manifest")
    validate(document)
    releases = tuple(_release(item, f"manifest.releases[{i}]") for i, item in enumerate(document["releases"]))
    seen: set[Version] = set()
    for release in releases:
        if release.version in seen:
            raise ManifestError(f"manifest: version {release.version} is listed twice")
        seen.add(release.version)
    manifest = Manifest(
        product=document["product"],
        channel=document["channel"],
        serial=document["serial"],
        issued_at=parse_timestamp(document["issued_at"], "manifest.issued_at"),
        expires_at=parse_timestamp(document["expires_at"], "manifest.expires_at"),
        releases=releases,
        keyset_version=document.get("keyset_version", 1),
        min_supported_version=(
            Version(document["min_supported_version"]) if "min_supported_version" in document else None
        ),
    )
    if manifest.expires_at <= manifest.issued_at:
        raise ManifestError("manifest: expires_at is not after issued_at")
    return manifest


def _release(item: dict, what: str) -> Release:
    artifacts = tuple(_artifact(a) for a in item["artifacts"])
    tags = [a.tag for a in artifacts]
    if len(set(tags)) != len(tags):
        raise ManifestError(f"{what}: two artifacts for the same interpreter and platform")
    return Release(
        version=Version(item["version"]),
        released_at=parse_timestamp(item["released_at"], f"{what}.released_at"),
        artifacts=artifacts,
        notes=item.get("notes", ""),
        yanked=item.get("yanked", False),
        yanked_reason=item.get("yanked_reason"),
        rollout_percent=item.get("rollout_percent", 100),
    )


def _artifact(item: dict) -> Artifact:
    delta = item.get("delta_index")
    return Artifact(
        python_tag=item["python_tag"],
        platform_tag=item["platform_tag"],
        url=item["url"],
        size=item["size"],
        sha256=item["sha256"],
        build_id=item.get("build_id"),
        delta_index=DeltaIndex(**delta) if delta else None,
    )


def check_manifest(
    manifest: Manifest, *, product: str, channel: str, now: datetime | None, highest_serial: int
) -> None:
    """Refuse a manifest for something else, an expired one (freeze; not checked when now is None)
    or a replayed older one (rollback)."""
    if manifest.product != product:
        raise ManifestError(f"the manifest is for {quote_untrusted(manifest.product)}, not {product}")
    if manifest.channel != channel:
        raise ManifestError(f"the manifest is for channel {quote_untrusted(manifest.channel)}, not {channel}")
    if manifest.serial < highest_serial:
        raise ManifestError(
            f"the manifest's serial {manifest.serial} is older than the {highest_serial} already seen "
            "(a replayed manifest)"
        )
    if now is not None and now >= manifest.expires_at:
        raise ManifestError(
            f"the {manifest.channel} manifest expired at {format_timestamp(manifest.expires_at)}: its publisher "
            "has not re-signed it in time (or a mirror serves an old copy)",
            hint="nothing is wrong with this install, which keeps its version; tell the publisher "
                 "(release.py resign), then check again")


def choose_update(
    manifest: Manifest,
    *,
    current: Version,
    python_tag: str,
    platform_tag: str,
    rollout_bucket: int = 0,
    bad_versions: Iterable[Version] = (),
    target: Version | None = None,
) -> Choice | None:
    """The release to install, or None when the current version is the newest one on offer.

    Automatic choice takes the newest version above `current` that is good (not yanked, not halted),
    not recorded as bad on this install and rolled out to this install's bucket. Two signed statements
    widen it: below `min_supported_version`, a release at or above it is taken even outside this bucket
    (the lowest such, when none above it is rolled out here); and when the running release is yanked or
    halted, with nothing newer on offer, the newest good release below it (a move back, never by
    itself otherwise). An explicit `target` (`--to`) may name any listed version, even an older, a
    bad or a halted one, but never a yanked one.
    """
    if target is not None:
        release = next((r for r in manifest.releases if r.version == target), None)
        if release is None:
            raise ManifestError(f"version {target} is not in the {manifest.channel} manifest")
        if release.yanked:
            raise ManifestError(f"version {target} was yanked: {release.yanked_reason or 'no reason given'}")
        return Choice(release, _artifact_or_error(release, python_tag, platform_tag))
    release = _automatic_choice(manifest, current, rollout_bucket, set(bad_versions))
    return None if release is None else Choice(release, _artifact_or_error(release, python_tag, platform_tag))


def _automatic_choice(manifest: Manifest, current: Version, bucket: int, bad: set[Version]) -> Release | None:
    usable = [r for r in manifest.releases if r.good and r.version not in bad]
    here = [r for r in usable if bucket < r.rollout_percent]
    newest = max((r for r in here if r.version > current), key=lambda r: r.version, default=None)
    minimum = manifest.min_supported_version
    if manifest.required(current) and (newest is None or newest.version < minimum):
        return min((r for r in usable if r.version >= minimum), key=lambda r: r.version, default=newest)
    if newest is not None:
        return newest
    running = manifest.release(current)
    if running is None or running.good:
        return None
    return max((r for r in here if r.version < current), key=lambda r: r.version, default=None)


def release_root(manifest_url: str) -> str | None:
    """The release tree a manifest may point into: its URL's parent's parent (SITE/ for SITE/stable/manifest.json).

    None when the manifest is not an http(s) URL (an offline `--from-file` install names its archive itself)."""
    parts = urllib.parse.urlsplit(manifest_url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    segments = parts.path.split("/")[:-1]  # drop manifest.json
    root_path = "/".join(segments[:-1]) + "/" if len(segments) > 1 else "/"  # drop the channel
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc.lower(), root_path, "", ""))


_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)


def check_artifact_url(url: str, root: str, what: str = "the artifact URL") -> None:
    """Refuse an artifact URL (or a delta index's, `what`) outside the release root: another scheme, host or
    port, credentials, `.`/`..` segments (also percent-encoded), encoded or back slashes, or a path not under
    the root's."""
    problem = _escape_problem(url, root)
    if problem:
        raise ManifestError(f"{what} {quote_untrusted(url, 120)} {problem}",
                            hint=f"artifacts must be served under {root}")


def _escape_problem(url: str, root: str) -> str | None:
    try:
        art, base = urllib.parse.urlsplit(url), urllib.parse.urlsplit(root)
        art_port, base_port = art.port, base.port
    except ValueError:
        return "is malformed"
    defaults = {"http": 80, "https": 443}
    if art.scheme.lower() != base.scheme.lower():
        return f"uses {quote_untrusted(art.scheme)} where the manifest uses {base.scheme}"
    if "@" in art.netloc:
        return "carries credentials"
    if (art.hostname or "").lower() != (base.hostname or "").lower() or \
            (art_port or defaults.get(art.scheme.lower())) != (base_port or defaults.get(base.scheme.lower())):
        return "points at another host than the manifest"
    if "\\" in art.path or _ENCODED_SEPARATOR.search(art.path):
        return "hides a path separator"
    segments = urllib.parse.unquote(art.path).split("/")
    if any(segment in (".", "..") for segment in segments):
        return "climbs out of its directory (a . or .. segment)"
    if not urllib.parse.unquote(art.path).startswith(urllib.parse.unquote(base.path)):
        return "is outside the release root"
    return None


def _artifact_or_error(release: Release, python_tag: str, platform_tag: str) -> Artifact:
    artifact = release.artifact_for(python_tag, platform_tag)
    if artifact is None:
        offered = ", ".join(a.tag for a in release.artifacts)
        raise ManifestError(
            f"version {release.version} has no build for {python_tag}-{platform_tag} (it has {offered})"
        )
    return artifact
