"""Attestation documents: a COSE_Sign1 (ES384) over the NSM's attestation payload.

Layout as real NSMs emit it (docs/spec/nsm-vsock.md section 3): an untagged CBOR array
[protected header bstr {1: -35}, unprotected {}, payload bstr, 96-byte r||s signature];
the payload is a definite map with the nine keys in AWS's order, absent optional fields
as null. The signing key and certificate chain come from a `DocumentSigner`, so this
module holds no key material and no crypto library.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import cbor2

COSE_ALG_ES384 = -35
PROTECTED_HEADER = cbor2.dumps({1: COSE_ALG_ES384})    # a1 01 38 22
SIGNATURE_SIZE = 96


class SigningIdentity(Protocol):
    """A leaf certificate (DER), the CA bundle (DER, root first) and its private key."""

    certificate: bytes
    cabundle: Sequence[bytes]

    def sign(self, message: bytes) -> bytes:
        """ECDSA P-384 / SHA-384 over `message`, as 96 bytes r || s."""
        ...


class DocumentSigner(Protocol):
    """Hands out the identity to sign with at time `now_ms` (may rotate the leaf)."""

    def identity(self, now_ms: int) -> SigningIdentity: ...


def encode_payload(*, module_id: str, timestamp_ms: int, pcrs: dict[int, bytes],
                   certificate: bytes, cabundle: Sequence[bytes], public_key: bytes | None,
                   user_data: bytes | None, nonce: bytes | None) -> bytes:
    """The attestation payload map, keys in the order real documents use."""
    return cbor2.dumps({
        "module_id": module_id,
        "digest": "SHA384",
        "timestamp": timestamp_ms,
        "pcrs": dict(sorted(pcrs.items())),
        "certificate": certificate,
        "cabundle": list(cabundle),
        "public_key": public_key,
        "user_data": user_data,
        "nonce": nonce,
    })


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The COSE Sig_structure for Sign1 with empty external AAD: what gets signed."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def build_document(identity: SigningIdentity, *, module_id: str, timestamp_ms: int,
                   pcrs: dict[int, bytes], public_key: bytes | None = None,
                   user_data: bytes | None = None, nonce: bytes | None = None) -> bytes:
    """A signed attestation document (serialised COSE_Sign1)."""
    payload = encode_payload(module_id=module_id, timestamp_ms=timestamp_ms, pcrs=pcrs,
                             certificate=identity.certificate, cabundle=identity.cabundle,
                             public_key=public_key, user_data=user_data, nonce=nonce)
    signature = identity.sign(sig_structure(PROTECTED_HEADER, payload))
    if len(signature) != SIGNATURE_SIZE:
        raise ValueError(f"ES384 signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
    return cbor2.dumps([PROTECTED_HEADER, {}, payload, signature])
