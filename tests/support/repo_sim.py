"""A release repository an attacker controls: manifests signed in-process, served over real loopback HTTP.

RepoSim lays out the same tree as release-tools/release.py (SITE/stable/manifest.json,
.sig, releases/<version>/...) but builds and signs manifests in the test process, so a
test can publish anything: a manifest signed by the wrong keys, an expired or replayed
one, a release whose artifact is another version's. `route(path, responder)` answers one
path with a responder below instead of the file: trickle, endless, redirect, a status.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import ssl
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from pilot.launcher import artifact_name, build_pythons, python_tag
from pilot.update.install import read_metadata
from pilot.update.manifest import format_timestamp
from pilot.update.signing import encode_signatures, sign
from tests.support.keys import TestKey
from tests.support.server import StaticServer

Responder = Callable[[SimpleHTTPRequestHandler], None]
CHANNEL = "stable"
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class RepoSim:
    def __init__(self, root: Path, server: StaticServer, key: TestKey) -> None:
        self.root = root
        self.server = server
        self.signers = [key]
        self.serial = 0
        self.routes: dict[str, Responder] = {}
        server.override = self._dispatch

    # -- where things are

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def manifest_url(self) -> str:
        return f"{self.url}/{CHANNEL}/manifest.json"

    @property
    def manifest(self) -> Path:
        return self.root / CHANNEL / "manifest.json"

    @property
    def signatures(self) -> Path:
        return self.root / CHANNEL / "manifest.json.sig"

    # -- content

    def place(self, archive: Path, *, version: str | None = None, name: str | None = None) -> dict:
        """Copy an archive into releases/<version>/ and return its artifact entry (as release.py would)."""
        meta = read_metadata(archive)
        version = version or meta["version"]
        name = name or artifact_name(version, meta["platform_tag"])
        target = self.root / "releases" / version / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive, target)
        data = target.read_bytes()
        # The entry for the interpreter these tests run under (release.py lists one for each the archive serves).
        tag = python_tag() if python_tag() in build_pythons(meta) else meta["python_tag"]
        return {"python_tag": tag, "platform_tag": meta["platform_tag"],
                "url": f"{self.url}/releases/{version}/{name}", "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "build_id": meta["build_id"]}

    def release(self, archive: Path, *, version: str | None = None, **fields) -> dict:
        version = version or read_metadata(archive)["version"]
        artifact = self.place(archive, version=version)
        return {"version": version, "released_at": format_timestamp(datetime.now(UTC) - timedelta(hours=1)),
                "artifacts": [artifact], **fields}

    def document(self, releases: Iterable[dict], *, serial: int | None = None, issued: datetime | None = None,
                 expires: datetime | None = None, **fields) -> dict:
        """A well-formed manifest; serial defaults to one above the last published."""
        if serial is None:
            serial = self.serial + 1
        issued = issued or datetime.now(UTC) - timedelta(hours=1)
        expires = expires or datetime.now(UTC) + timedelta(days=30)
        return {"schema_version": 1, "product": "pilot", "channel": CHANNEL, "serial": serial, "keyset_version": 1,
                "issued_at": format_timestamp(issued), "expires_at": format_timestamp(expires),
                "releases": list(releases), **fields}

    def sign(self, data: bytes, signers: Iterable[TestKey] | None = None) -> bytes:
        return encode_signatures([sign(k.private, data) for k in (self.signers if signers is None else signers)])

    def publish(self, manifest: dict | bytes, *, signers: Iterable[TestKey] | None = None,
                signatures: bytes | None = None) -> tuple[bytes, bytes]:
        """Write manifest.json (a document, or exact bytes) and its .sig; returns both, for replaying later."""
        data = manifest if isinstance(manifest, bytes) else (json.dumps(manifest, indent=2) + "\n").encode()
        if isinstance(manifest, dict) and isinstance(manifest.get("serial"), int):
            self.serial = max(self.serial, manifest["serial"])
        signatures = self.sign(data, signers) if signatures is None else signatures
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        self.signatures.write_bytes(signatures)
        self.manifest.write_bytes(data)
        return data, signatures

    def publish_releases(self, *archives: Path, **document_fields) -> dict:
        """The honest case: each archive as a release, newest first, signed by the trusted key."""
        document = self.document([self.release(a) for a in reversed(archives)], **document_fields)
        self.publish(document)
        return document

    # -- behaviour

    def route(self, path: str, responder: Responder) -> None:
        self.routes[path] = responder

    def _dispatch(self, handler: SimpleHTTPRequestHandler) -> bool:
        responder = self.routes.get(handler.path)
        if responder is None:
            return False
        with contextlib.suppress(_GONE):  # the client hung up, as it should when it refuses what it is sent
            responder(handler)
        handler.close_connection = True
        return True


class TLSServer(StaticServer):
    """StaticServer over TLS with a certificate for 127.0.0.1 and localhost from `ca` (a trustme.CA)."""

    def __init__(self, root: Path, ca) -> None:
        super().__init__(root)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


# --- responders ---------------------------------------------------------------------------------


def respond(data: bytes, status: int = 200, headers: dict[str, str] | None = None,
            content_length: bool = True) -> Responder:
    def answer(handler: SimpleHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if content_length:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def trickle(data: bytes, every: float = 0.2, step: int = 1) -> Responder:
    """Send `step` bytes every `every` seconds: each read succeeds, so only an overall deadline ends it."""
    def answer(handler: SimpleHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for start in range(0, len(data), step):
            handler.wfile.write(data[start:start + step])
            handler.wfile.flush()
            time.sleep(every)

    return answer


def endless(prefix: bytes = b"", filler: bytes = b" " * 65536, limit: int = 256 << 20) -> Responder:
    """A body with no Content-Length that does not end (up to `limit`, so a broken client cannot hang the test)."""
    def answer(handler: SimpleHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(prefix)
        sent = len(prefix)
        while sent < limit:
            handler.wfile.write(filler)
            sent += len(filler)

    return answer


def redirect(location: str, status: int = 302) -> Responder:
    return respond(b"", status=status, headers={"Location": location})


def failing(statuses: list[int], then: Responder | None = None, headers: dict[str, str] | None = None) -> Responder:
    """Answer the first requests with these statuses, then with `then` (default: the file)."""
    remaining = list(statuses)

    def answer(handler: SimpleHTTPRequestHandler) -> None:
        if remaining:
            respond(b"try again later\n", status=remaining.pop(0), headers=headers)(handler)
        elif then is not None:
            then(handler)
        else:
            SimpleHTTPRequestHandler.do_GET(handler)

    return answer
