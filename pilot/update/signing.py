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


PASSPHRASE_ENV = "PILOT_KEY_PASSPHRASE"  # where the release tools (and CI) take an encrypted key's passphrase from
ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def is_encrypted(pem: bytes) -> bool:
    """A PKCS#8 PEM encrypted at rest (keygen --encrypt): it needs its passphrase to be read."""
    return ENCRYPTED_PEM in pem


def load_private_key(pem: bytes, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM; an encrypted one (PKCS#8, keygen --encrypt) needs its passphrase."""
    encrypted = is_encrypted(pem)
    if encrypted and not passphrase:
        raise VerificationError(f"an encrypted private key, and no passphrase was given (set {PASSPHRASE_ENV}, "
                                "or run the command in a terminal to be asked)")
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase if encrypted else None)
    except (ValueError, TypeError):
        if encrypted:
            raise VerificationError("an encrypted private key that this passphrase does not open") from None
        raise VerificationError("not a PEM private key (unencrypted, or encrypted with a passphrase)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise VerificationError("not an Ed25519 private key")
    return key


def private_key_pem(private: Ed25519PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8: what keygen writes (mode 0600) and load_private_key reads; with a passphrase, encrypted at rest
    (cryptography's BestAvailableEncryption)."""
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


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
