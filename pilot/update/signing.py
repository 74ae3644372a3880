"""The publisher's side of Pilot's signatures: Ed25519 private keys, their PEM files and detached signatures.

Only the release tools and the tests sign; a client never holds a private key, so nothing
in the update path imports this module. Verification (public keys, key sets, thresholds,
rotations, manifests) is pilot.update.verify, whose types this module produces.
"""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pilot.errors import VerificationError
from pilot.update.verify import PublicKey, Signature


def generate_key() -> Ed25519PrivateKey:
    """A new signing key from the operating system's randomness."""
    return Ed25519PrivateKey.generate()


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise VerificationError("not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise VerificationError("not an Ed25519 private key")
    return key


def private_key_pem(private: Ed25519PrivateKey) -> bytes:
    """PKCS#8, unencrypted: what keygen writes (mode 0600) and load_private_key reads."""
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_key_pem(private: Ed25519PrivateKey) -> bytes:
    """SubjectPublicKeyInfo: what build.py --trusted-key and pilot.update.verify.load_public_key read."""
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_of(private: Ed25519PrivateKey) -> PublicKey:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey.from_raw(raw)


def sign(private: Ed25519PrivateKey, data: bytes) -> Signature:
    return Signature(public_key_of(private).keyid, private.sign(data))


def encode_signatures(signatures: list[Signature]) -> bytes:
    """The `.sig` file published beside a signed file."""
    document = {"signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in signatures]}
    return (json.dumps(document, indent=2) + "\n").encode()
