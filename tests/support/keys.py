"""Deterministic test signing keys: the same keys every run, so cached archives stay valid."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pilot.update.signing import private_key_pem, public_key_of, public_key_pem
from pilot.update.verify import PublicKey


@dataclass(frozen=True)
class TestKey:
    name: str
    private: Ed25519PrivateKey
    private_path: Path
    public_path: Path

    @property
    def public(self) -> PublicKey:
        return public_key_of(self.private)


def make_key(name: str, directory: Path) -> TestKey:
    private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"pilot-test-key:{name}".encode()).digest())
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    private_path.write_bytes(private_key_pem(private))
    private_path.chmod(0o600)
    public_path.write_bytes(public_key_pem(private))
    return TestKey(name, private, private_path, public_path)
