"""install.sh: the one-line installer `release.py publish` writes at the release site's root.

It is release-tools/install.sh with this site's address, channel and trust anchor filled in: the
keys whose signatures a fresh client would require on the manifest (the key set the manifest names,
which is the archives' embedded set until a rotation publishes another) and their threshold.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

TEMPLATE = Path(__file__).with_name("install.sh")
INSTALLER = "install.sh"  # at the site's root: curl -fsSL SITE/install.sh | sh
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # DER SubjectPublicKeyInfo of a raw Ed25519 key


def key_lines(keys: list[tuple[str, bytes]]) -> str:
    """install.sh's KEYS: a line per key, its keyid and the key as base64 DER (what openssl -pubin reads)."""
    return "\n".join(f"{keyid} {base64.b64encode(ED25519_SPKI_PREFIX + raw).decode()}" for keyid, raw in keys)


def render(*, site: str, channel: str, keys: list[tuple[str, bytes]], threshold: int, pythons: list[str]) -> bytes:
    """The script for site (its root URL, no trailing slash); keys: (keyid, raw 32-byte public key); pythons: the
    python tags the archives serve, oldest first (as pilot.launcher.build_pythons gives them).
    ValueError for a value that cannot go into it (a quote in the site's URL)."""
    from pilot.launcher import dotted, python_span

    versions = " ".join(dotted(tag) for tag in reversed(pythons))  # the newest interpreter is tried first
    values = {"SITE": site, "CHANNEL": channel, "VERSIONS": versions, "THRESHOLD": str(threshold),
              "SPAN": python_span(pythons), "KEYS": key_lines(keys)}
    for name, value in values.items():
        if "'" in value:
            raise ValueError(f"{name} {value!r}: a quote cannot go into install.sh")
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    unfilled = re.search(r"@[A-Z]+@", text)
    if unfilled:
        raise ValueError(f"install.sh: {unfilled[0]} is not filled in")
    return text.encode()


def with_keys(script: bytes, keys: list[tuple[str, bytes]], threshold: int) -> bytes:
    """A script render wrote (publish) with its release keys and threshold replaced (a key rotation or
    revocation); keys as for render. ValueError when its THRESHOLD= or KEYS= line is missing."""
    text = script.decode()
    lines = key_lines(keys)
    text, thresholds = re.subn(r"^THRESHOLD=\d+", f"THRESHOLD={threshold}", text, count=1, flags=re.M)
    text, found = re.subn(r"^KEYS='[^']*'", lambda _: f"KEYS='{lines}'", text, count=1, flags=re.M)
    if thresholds != 1 or found != 1:
        raise ValueError(f"{INSTALLER}: its THRESHOLD= or KEYS= line is missing (publish writes it anew)")
    return text.encode()
