"""pilot.update.verify: Ed25519 threshold signatures, signature envelopes, key sets and key rotation."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pilot.errors import VerificationError
from pilot.update.signing import (
    encode_signatures,
    is_encrypted,
    load_private_key,
    private_key_pem,
    public_key_of,
    sign,
)
from pilot.update.verify import (
    KeySet,
    PublicKey,
    Signature,
    check_digest,
    keyid_for,
    load_public_key,
    parse_keyset,
    parse_signatures,
    verify_rotation,
    verify_threshold,
)

DATA = b'{"schema_version": 1, "product": "pilot"}\n'


def private(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"verify-test:{name}".encode()).digest())


A, B, C, D, E, X = (private(n) for n in "ABCDEX")  # X is trusted by nobody


def keyset(*keys: Ed25519PrivateKey, threshold: int, version: int = 1) -> KeySet:
    return KeySet(version=version, threshold=threshold, keys=tuple(public_key_of(k) for k in keys))


def ids(*keys: Ed25519PrivateKey) -> set[str]:
    return {public_key_of(k).keyid for k in keys}


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def refusal(function, *args, **kwargs) -> str:
    with pytest.raises(VerificationError) as caught:
        function(*args, **kwargs)
    message = caught.value.one_line()
    assert "\n" not in message
    return message


# --- keys -------------------------------------------------------------------------------------


def test_keyid_is_the_sha256_of_the_raw_public_key():
    key = public_key_of(A)
    raw = A.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key == PublicKey(hashlib.sha256(raw).hexdigest(), raw) == PublicKey.from_raw(raw)
    assert keyid_for(raw) == key.keyid
    assert key.to_json() == {"keyid": key.keyid, "scheme": "ed25519", "public": raw.hex()}


def test_pem_keys_load_and_other_kinds_are_refused():
    private_pem = A.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    public_pem = A.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert load_public_key(public_pem) == public_key_of(A)
    assert public_key_of(load_private_key(private_pem)) == public_key_of(A)

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    ec_public = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    assert refusal(load_public_key, ec_public) == "not an Ed25519 public key"
    assert refusal(load_private_key, ec_private) == "not an Ed25519 private key"
    assert refusal(load_public_key, b"garbage") == "not a PEM public key"
    assert refusal(load_public_key, private_pem) == "not a PEM public key"
    assert refusal(load_private_key, public_pem) == (
        "not a PEM private key (unencrypted, or encrypted with a passphrase)")
    encrypted = A.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(b"secret"))
    assert refusal(load_private_key, encrypted).startswith("an encrypted private key, and no passphrase was given")
    assert refusal(load_private_key, encrypted, b"wrong") == (
        "an encrypted private key that this passphrase does not open")
    assert public_key_of(load_private_key(encrypted, b"secret")) == public_key_of(A)


def test_private_key_pem_encrypts_at_rest_with_a_passphrase():
    pem = private_key_pem(A, b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") and is_encrypted(pem)
    assert not is_encrypted(private_key_pem(A))
    assert public_key_of(load_private_key(pem, b"correct horse")) == public_key_of(A)


@pytest.mark.parametrize("threshold", [0, -1, 3])
def test_a_keyset_whose_threshold_cannot_be_met_is_refused(threshold):
    assert "cannot be met" in refusal(keyset, A, B, threshold=threshold)


def test_a_duplicated_key_does_not_raise_what_a_threshold_can_be_met_by():
    with pytest.raises(VerificationError):
        keyset(A, A, threshold=2)


# --- verify_threshold -------------------------------------------------------------------------

TWO_OF_THREE = keyset(A, B, C, threshold=2)


def test_two_of_three_valid_signatures_meet_the_threshold():
    assert verify_threshold(DATA, [sign(A, DATA), sign(B, DATA)], TWO_OF_THREE, "m") == ids(A, B)
    assert verify_threshold(DATA, [sign(k, DATA) for k in (C, B, A)], TWO_OF_THREE, "m") == ids(A, B, C)


def test_one_signature_is_not_enough():
    message = refusal(verify_threshold, DATA, [sign(A, DATA)], TWO_OF_THREE, "manifest.json")
    assert message.startswith("manifest.json: 1 valid signature(s) from key set 1, 2 required")


def test_no_signature_at_all_says_so():
    assert refusal(verify_threshold, DATA, [], TWO_OF_THREE, "m").startswith("m: no signature from key set 1")


def test_a_key_counts_once_however_many_signatures_name_it():
    again = Signature(public_key_of(A).keyid, A.sign(DATA))  # Ed25519 is deterministic: the same bytes
    assert "1 valid signature(s)" in refusal(verify_threshold, DATA, [sign(A, DATA), again], TWO_OF_THREE, "m")


def test_a_signature_by_an_unknown_key_counts_for_nothing():
    assert "1 valid signature(s)" in refusal(verify_threshold, DATA, [sign(A, DATA), sign(X, DATA)], TWO_OF_THREE, "m")
    signatures = [sign(X, DATA), sign(A, DATA), sign(B, DATA)]
    assert verify_threshold(DATA, signatures, TWO_OF_THREE, "m") == ids(A, B)


def test_a_signature_claiming_a_trusted_keyid_but_made_by_another_key_fails():
    forged = Signature(public_key_of(B).keyid, X.sign(DATA))
    assert "1 valid signature(s)" in refusal(verify_threshold, DATA, [sign(A, DATA), forged], TWO_OF_THREE, "m")


def test_a_signature_over_other_bytes_fails():
    signatures = [sign(A, DATA), sign(B, DATA + b" ")]
    assert "1 valid signature(s)" in refusal(verify_threshold, DATA, signatures, TWO_OF_THREE, "m")


@pytest.mark.parametrize("index", [0, 1, 17, len(DATA) - 1])
def test_one_flipped_byte_of_the_data_fails(index):
    signatures = [sign(A, DATA), sign(B, DATA), sign(C, DATA)]
    message = refusal(verify_threshold, flip(DATA, index), signatures, TWO_OF_THREE, "manifest.json")
    assert "0 valid signature(s)" in message and "altered" in message


@pytest.mark.parametrize("index", [0, 31, 63])
def test_one_flipped_byte_of_a_signature_fails(index):
    bad = Signature(public_key_of(B).keyid, flip(B.sign(DATA), index))
    assert "1 valid signature(s)" in refusal(verify_threshold, DATA, [sign(A, DATA), bad], TWO_OF_THREE, "m")


# --- the .sig envelope ------------------------------------------------------------------------


def test_signatures_round_trip_through_their_envelope():
    signatures = [sign(A, DATA), sign(B, DATA)]
    envelope = encode_signatures(signatures)
    document = json.loads(envelope)
    assert [s["keyid"] for s in document["signatures"]] == [public_key_of(A).keyid, public_key_of(B).keyid]
    assert base64.b64decode(document["signatures"][0]["sig"]) == A.sign(DATA)
    assert parse_signatures(envelope, "manifest.json.sig") == signatures


@pytest.mark.parametrize(
    "envelope",
    [
        b"",
        b"{}",
        b'{"signatures": []}',
        b'{"signatures": [{"keyid": "00", "sig": "AA=="}]}',
        b'{"signatures": "x"}',
        b'{"signatures": [], "signatures": []}',
        b"\xff",
    ],
)
def test_a_malformed_envelope_is_a_verification_error(envelope):
    assert refusal(parse_signatures, envelope, "manifest.json.sig").startswith("manifest.json.sig")


def test_an_envelope_with_a_short_or_non_canonical_signature_is_refused():
    keyid = public_key_of(A).keyid
    for sig in (base64.b64encode(b"x" * 63), base64.b64encode(b"x" * 65), b"@" * 86 + b"=="):
        envelope = json.dumps({"signatures": [{"keyid": keyid, "sig": sig.decode()}]}).encode()
        refusal(parse_signatures, envelope, "manifest.json.sig")


# --- key sets and rotation --------------------------------------------------------------------


def keyset_bytes(value: KeySet | dict) -> bytes:
    document = value.to_json() if isinstance(value, KeySet) else value
    return (json.dumps(document, indent=2) + "\n").encode()


def test_a_keyset_round_trips_through_json():
    original = keyset(C, D, E, threshold=2, version=2)
    assert parse_keyset(keyset_bytes(original), "keys/2.json") == original


def test_parse_keyset_refuses_a_keyid_that_is_not_its_keys_hash():
    document = keyset(C, D, threshold=1).to_json()
    document["keys"][1]["keyid"] = document["keys"][0]["keyid"]
    assert "does not match its public key" in refusal(parse_keyset, keyset_bytes(document), "keys/2.json")


def test_parse_keyset_refuses_a_key_listed_twice():
    document = keyset(C, threshold=1).to_json()
    document["keys"] *= 2
    assert "a key is listed twice" in refusal(parse_keyset, keyset_bytes(document), "keys/2.json")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(threshold=3), "threshold 3 cannot be met by 2 key(s)"),
        (lambda d: d.update(threshold=0), "threshold: must be at least 1"),
        (lambda d: d.update(type="manifest"), "type"),
        (lambda d: d["keys"][0].update(scheme="rsa"), "scheme"),
        (lambda d: d["keys"][0].update(public=d["keys"][0]["public"][:-2]), "public"),
        (lambda d: d.update(keys=[]), "needs at least 1 item"),
        (lambda d: d.update(version=True), "version: expected integer"),
    ],
)
def test_parse_keyset_refuses_a_malformed_keyset(change, expected):
    document = keyset(C, D, threshold=2, version=2).to_json()
    change(document)
    assert expected in refusal(parse_keyset, keyset_bytes(document), "keys/2.json")


OLD = keyset(A, B, C, threshold=2, version=1)
NEW = keyset(C, D, E, threshold=2, version=2)
NEW_BYTES = keyset_bytes(NEW)


def rotate(*signers: Ed25519PrivateKey, data: bytes = NEW_BYTES, current: KeySet = OLD) -> KeySet:
    return verify_rotation(current, data, [sign(k, data) for k in signers], "keys/2.json")


def test_a_rotation_signed_by_the_old_and_the_new_threshold_is_accepted():
    assert rotate(A, B, D, E) == NEW
    assert rotate(A, C, D) == NEW  # C is in both sets and counts towards both thresholds


def test_a_rotation_needs_the_threshold_of_the_old_set():
    assert "from key set 1, 2 required" in refusal(rotate, A, D, E)
    assert "from key set 1, 2 required" in refusal(rotate, D, E, X)  # the new keys alone cannot vouch for it


def test_a_rotation_needs_the_threshold_of_the_new_set():
    assert "from key set 2, 2 required" in refusal(rotate, A, B)
    assert "from key set 2, 2 required" in refusal(rotate, A, B, C)


def test_a_rotation_must_be_the_next_version():
    skipped = keyset_bytes(keyset(C, D, E, threshold=2, version=3))
    assert "version 3 does not follow key set 1" in refusal(rotate, A, B, C, D, E, data=skipped)
    same = keyset_bytes(keyset(C, D, E, threshold=2, version=1))
    assert "version 1 does not follow key set 1" in refusal(rotate, A, B, C, D, E, data=same)


def test_a_rotation_with_a_flipped_byte_fails():
    signatures = [sign(k, NEW_BYTES) for k in (A, B, C, D, E)]
    altered = NEW_BYTES.replace(b'"threshold": 2', b'"threshold": 1')
    assert altered != NEW_BYTES
    assert "0 valid signature(s)" in refusal(verify_rotation, OLD, altered, signatures, "keys/2.json")


def test_rotations_chain_from_the_anchor():
    third = keyset(E, X, threshold=1, version=3)
    third_bytes = keyset_bytes(third)
    second = rotate(A, B, D, E)
    assert verify_rotation(second, third_bytes, [sign(D, third_bytes), sign(E, third_bytes)], "k") == third
    # Set 1's keys no longer speak for set 3.
    with pytest.raises(VerificationError):
        verify_rotation(second, third_bytes, [sign(k, third_bytes) for k in (A, B, C, X)], "k")


# --- key roles: root keys sign key sets, release keys sign manifests -------------------------


ROOT_A, ROOT_B = (Ed25519PrivateKey.from_private_bytes(hashlib.sha256(n).digest()) for n in (b"root-a", b"root-b"))
ROOT = keyset(ROOT_A, ROOT_B, threshold=2, version=1)
WITH_ROOT = KeySet(version=1, threshold=2, keys=OLD.keys, root=ROOT)


def test_with_root_keys_a_key_set_needs_the_root_threshold_and_nothing_else():
    successor = rotate(ROOT_A, ROOT_B, current=WITH_ROOT)
    assert successor == NEW and successor.root == ROOT  # the root keys carry on down the chain
    third_bytes = keyset_bytes(keyset(E, X, threshold=1, version=3))
    assert verify_rotation(successor, third_bytes, [sign(k, third_bytes) for k in (ROOT_A, ROOT_B)], "k").root == ROOT


def test_with_root_keys_release_keys_cannot_sign_a_key_set():
    line = refusal(rotate, A, B, C, D, E, current=WITH_ROOT)  # the old and the new release keys, all of them
    assert line == ("keys/2.json is not signed by the root keys: 0 valid root signature(s), 2 required "
                    "(a release key cannot sign a key set)")
    assert "1 valid root signature(s), 2 required" in refusal(rotate, ROOT_A, A, B, D, E, current=WITH_ROOT)


def test_with_root_keys_a_key_set_listing_a_root_key_is_refused():
    data = keyset_bytes(keyset(ROOT_A, D, threshold=1, version=2))
    assert "lists a root key as a release key" in refusal(rotate, ROOT_A, ROOT_B, data=data, current=WITH_ROOT)


def test_without_root_keys_the_old_rule_holds():
    assert OLD.root is None
    assert rotate(A, B, D, E) == NEW and rotate(A, B, D, E).root is None
    assert "from key set 1, 2 required" in refusal(rotate, ROOT_A, ROOT_B, D, E)  # root keys mean nothing here


def test_the_embedded_anchor_carries_the_root_keys_only_when_the_build_has_them():
    from pilot.buildinfo import BuildInfo, TrustedKey

    def build(**fields) -> BuildInfo:
        key = public_key_of(A)
        return BuildInfo(version="1.0.0", python_tag="cp311", platform_tag="linux_x86_64", build_id="b" * 64,
                         archive=None, trusted_keys=(TrustedKey(key.keyid, key.raw),), threshold=1,
                         source_commit=None, manifest_url=None, **fields)

    assert KeySet.embedded(build()).root is None
    roots = tuple(TrustedKey(k.keyid, k.raw) for k in ROOT.keys)
    assert KeySet.embedded(build(root_keys=roots, root_threshold=2)).root == ROOT
    assert KeySet.embedded(build(root_keys=roots, root_threshold=2)).root.threshold == 2


# --- check_digest -----------------------------------------------------------------------------


def test_check_digest():
    digest = hashlib.sha256(DATA).hexdigest()
    check_digest(len(DATA), digest, size=len(DATA), sha256=digest, what="a.pyz")
    assert refusal(lambda: check_digest(len(DATA) + 1, digest, size=len(DATA), sha256=digest, what="a.pyz")) == (
        f"a.pyz: {len(DATA) + 1} bytes where the manifest signs {len(DATA)}")
    other = hashlib.sha256(b"other").hexdigest()
    message = refusal(lambda: check_digest(len(DATA), other, size=len(DATA), sha256=digest, what="a.pyz"))
    assert message == f"a.pyz: sha256 {other[:16]}... is not the signed {digest[:16]}..."
