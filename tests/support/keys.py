"""Deterministic test signing keys: the same keys every run, so cached archives stay valid."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pilot.update.verify import PublicKey, public_key_of


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
    private_path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    private_path.chmod(0o600)
    public_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return TestKey(name, private, private_path, public_path)
