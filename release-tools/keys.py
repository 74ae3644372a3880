"""Key roles for the release tools: root keys sign key sets, release keys sign manifests.

Root keys are offline, a threshold of them, used only to publish a key set (`release.py revoke`,
or `rotate-keys --root-key`); release keys are online (a CI secret) and sign only manifests
(publish, yank, resign, ...). An archive built with `build.py --root-key` accepts a key set only
under the root threshold, so a stolen release key can sign manifests until the root revokes it,
never a key set. An archive built without root keys keeps the one role of before: each key set
is signed by the set before it and its own (`rotate-keys`), and nothing changes for it.

Private keys may be encrypted at rest (`keygen --encrypt`): the passphrase comes from
PILOT_KEY_PASSPHRASE or, in a terminal, a prompt; never from the command line.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from pilot.errors import PilotError
from pilot.update.signing import PASSPHRASE_ENV, encode_signatures, is_encrypted, load_private_key, public_key_of, sign
from pilot.update.verify import KeySet, keyset_path, parse_signatures, verify_rotation

MIN_PASSPHRASE = 8


class KeyRefusal(PilotError):
    """A key that cannot be used as asked: one line, exit status 1."""


# --- keys encrypted at rest -------------------------------------------------------------------


def passphrase(path: Path, *, new: bool = False, prompt: bool = True) -> bytes:
    """PILOT_KEY_PASSPHRASE, else asked on the terminal (twice for a new key); refused without either.
    prompt=False (the CI pipeline): PILOT_KEY_PASSPHRASE only, never a question."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        secret = value
    elif not prompt:
        raise KeyRefusal(f"{path}: it is encrypted and needs a passphrase: set {PASSPHRASE_ENV}")
    elif not sys.stdin.isatty():
        raise KeyRefusal(f"{path}: {'encrypting it' if new else 'it is encrypted and'} needs a passphrase: set "
                         f"{PASSPHRASE_ENV}, or run the command in a terminal to be asked")
    else:
        secret = ask(f"passphrase for {path}: ", path)
        if new and ask(f"the same passphrase again for {path}: ", path) != secret:
            raise KeyRefusal(f"{path}: the two passphrases differ; nothing was written")
    if new and len(secret) < MIN_PASSPHRASE:
        raise KeyRefusal(f"{path}: a passphrase needs at least {MIN_PASSPHRASE} characters")
    return secret.encode()


def ask(prompt: str, path: Path) -> str:
    """getpass; Ctrl-D or Ctrl-C at its prompt is a refusal in one line, not a traceback."""
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise KeyRefusal(f"{path}: no passphrase given") from None


def read_private_key(pem: bytes, path: Path, *, prompt: bool = True):
    """A private key file's key (path: what names it in a refusal); an encrypted one opened with its passphrase,
    asked on a terminal unless prompt=False."""
    return load_private_key(pem, passphrase(path, prompt=prompt) if is_encrypted(pem) else None)


# --- key sets ---------------------------------------------------------------------------------


def unique(private_keys: list) -> list:
    """The private keys given, each once (by keyid), in the order first given."""
    seen: dict[str, object] = {}
    for key in private_keys:
        seen.setdefault(public_key_of(key).keyid, key)
    return list(seen.values())


def root_of(root_private: list) -> KeySet:
    """The root keys given, every one of which must sign: the check when no archive says which root keys it trusts."""
    keys = tuple(public_key_of(k) for k in unique(root_private))
    return KeySet(version=1, threshold=len(keys), keys=keys)


def embedded_keys(meta: dict, path: Path) -> KeySet | None:
    """Key set 1 and, as its .root, the root keys an archive's build metadata embeds, read as the archive itself
    reads them (KeySet.embedded of its BuildInfo); None for an archive that trusts no key (it verifies nothing).
    Metadata that no client could read is one line naming the archive."""
    from pilot.buildinfo import BuildInfo
    from pilot.errors import VerificationError

    try:
        build = BuildInfo.from_dict(meta, path)
        return KeySet.embedded(build) if build.trusted_keys else None
    except (LookupError, ValueError, TypeError, AttributeError):
        raise VerificationError(f"{path.name}: not a Pilot archive (its embedded keys are unreadable)") from None
    except VerificationError as error:
        raise VerificationError(f"{path.name}: {error.one_line()}") from None


def archive_roots(site: Path) -> dict[Path, KeySet | None]:
    """The root keys and threshold each archive under SITE/releases/ embeds (None: built without root keys, or
    trusting no key at all): what the installs of those archives will check a new key set against."""
    from pilot.update.install import read_metadata

    roots: dict[Path, KeySet | None] = {}
    for path in sorted((site / "releases").glob("*/*.pyz")):
        try:
            meta = read_metadata(path)
        except PilotError:
            continue
        embedded = embedded_keys(meta, path)
        roots[path] = embedded.root if embedded is not None else None
    return roots


def distinct(roots) -> list[KeySet]:
    found: dict[tuple, KeySet] = {}
    for root in roots:
        if root is not None:
            found.setdefault((root.threshold, tuple(sorted(k.keyid for k in root.keys))), root)
    return list(found.values())


def check_roles(release_keys, roots: list[KeySet]) -> None:
    if {k.keyid for k in release_keys} & {k.keyid for root in roots for k in root.keys}:
        raise KeyRefusal("a root key cannot be a release key: root keys sign only key sets, release keys only "
                         "manifests")


def keyset_bytes(keyset: KeySet, product: str) -> bytes:
    return (json.dumps(keyset.to_json(product), indent=2) + "\n").encode()


def sign_keyset(data: bytes, signers: list) -> bytes:
    return encode_signatures([sign(key, data) for key in unique(signers)])


def check_link(previous: KeySet, data: bytes, signatures: bytes, *, roots: list[KeySet], legacy: bool) -> None:
    """keys/<n>.json as clients will check it: under each root key set an archive embeds (the root threshold),
    and, `legacy`, as an archive without root keys does (the threshold of the set before and its own)."""
    what = keyset_path(previous.version + 1)
    parsed = parse_signatures(signatures, what + ".sig")
    for root in roots:
        verify_rotation(replace(previous, root=root), data, parsed, what)
    if legacy:
        verify_rotation(replace(previous, root=None), data, parsed, what)


def roots_to_check(site: Path, root_private: list) -> tuple[list[KeySet], int]:
    """(the root key sets a new key set must satisfy, how many archives have no root keys): the archives' own,
    or, when no archive under SITE/releases/ has root keys, the root keys given (all of them must sign)."""
    roots = archive_roots(site)
    embedded = distinct(roots.values())
    return (embedded or ([root_of(root_private)] if root_private else [])), sum(r is None for r in roots.values())


def revocation(site: Path, current: int, previous: KeySet | None, release_keys: tuple, threshold: int,
               root_private: list, product: str) -> tuple[KeySet, bytes, bytes, int]:
    """Key set current+1: these release keys, signed by the root keys alone (none of the old release keys, which
    may be the stolen ones, is needed or counts), checked as every archive with root keys will check it.
    Returns the set, its bytes, its signatures and how many archives (without root keys) cannot follow it."""
    roots, without = roots_to_check(site, root_private)
    check_roles(release_keys, [*roots, root_of(root_private)])
    successor = KeySet(version=current + 1, threshold=threshold, keys=tuple(release_keys))
    data = keyset_bytes(successor, product)
    signatures = sign_keyset(data, root_private)
    anchor = previous or KeySet(version=current, threshold=1, keys=successor.keys)  # set 1: inside the archives
    check_link(anchor, data, signatures, roots=roots, legacy=False)
    return successor, data, signatures, without


def removed_keys(previous: KeySet | None, successor: KeySet) -> list[str]:
    if previous is None:
        return []
    kept = {k.keyid for k in successor.keys}
    return [k.keyid for k in previous.keys if k.keyid not in kept]
