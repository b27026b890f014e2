"""COSE_Sign1 (RFC 8152) with ECDSA, as aws-nitro-enclaves-cose writes it for EIF
signatures (docs/spec/eif.md §7.2): untagged array(4) of protected header bstr({1: alg}),
empty unprotected map, payload bstr and the r||s signature bstr.
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature, encode_dss_signature)

from eif import cbor

COSE_SIGN1_TAG = 18
HEADER_ALG = 1

# curve name -> (COSE alg, hash, coordinate size in bytes)
_BY_CURVE = {
    "secp256r1": (-7, hashes.SHA256, 32),
    "secp384r1": (-35, hashes.SHA384, 48),
    "secp521r1": (-36, hashes.SHA512, 66),
}
_ALG_NAMES = {-7: "ES256", -35: "ES384", -36: "ES512"}


class CoseError(ValueError):
    """A COSE_Sign1 object is malformed or does not verify."""


def _params(curve: ec.EllipticCurve) -> tuple[int, type, int]:
    try:
        return _BY_CURVE[curve.name]
    except KeyError:
        raise CoseError(f"EC curve {curve.name} is not supported (P-256, P-384, P-521 are)") \
            from None


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor.encode(["Signature1", protected, b"", payload])


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Untagged COSE_Sign1 bytes of `payload` signed with an EC private key."""
    alg, hash_cls, size = _params(key.curve)
    protected = cbor.encode({HEADER_ALG: alg})
    der = key.sign(_sig_structure(protected, payload), ec.ECDSA(hash_cls()))
    r, s = decode_dss_signature(der)
    return cbor.encode([protected, {}, payload, r.to_bytes(size, "big") + s.to_bytes(size, "big")])


@dataclass(frozen=True)
class CoseSign1:
    """A parsed COSE_Sign1: the protected header bytes, algorithm, payload, signature."""

    protected: bytes
    alg: int
    payload: bytes
    signature: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> "CoseSign1":
        """Parse tagged or untagged COSE_Sign1; CoseError if the structure is wrong."""
        try:
            value = cbor.decode(data)
        except cbor.CborError as error:
            raise CoseError(f"COSE_Sign1 is not valid CBOR: {error}") from None
        if isinstance(value, cbor.Tagged):
            if value.tag != COSE_SIGN1_TAG:
                raise CoseError(f"COSE object has tag {value.tag}, expected {COSE_SIGN1_TAG}")
            value = value.value
        if not isinstance(value, list) or len(value) != 4:
            raise CoseError("COSE_Sign1 is not an array of 4 items")
        protected, unprotected, payload, signature = value
        if not isinstance(protected, bytes) or not isinstance(unprotected, dict) \
                or not isinstance(payload, bytes) or not isinstance(signature, bytes):
            raise CoseError("COSE_Sign1 items have the wrong types "
                            "(expected bstr, map, bstr, bstr)")
        try:
            header = cbor.decode(protected) if protected else {}
        except cbor.CborError as error:
            raise CoseError(f"COSE protected header is not valid CBOR: {error}") from None
        if not isinstance(header, dict) or header.get(HEADER_ALG) not in _ALG_NAMES:
            raise CoseError("COSE protected header names no supported algorithm "
                            "(ES256, ES384 or ES512)")
        return cls(protected, header[HEADER_ALG], payload, signature)

    @property
    def alg_name(self) -> str:
        return _ALG_NAMES[self.alg]

    def verify(self, key: object) -> bool:
        """True iff the signature verifies with this EC public key and algorithm."""
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CoseError("the signing certificate's key is not an EC key")
        alg, hash_cls, size = _params(key.curve)
        if alg != self.alg:
            raise CoseError(f"COSE algorithm {self.alg_name} does not match the "
                            f"certificate's {key.curve.name} key")
        if len(self.signature) != 2 * size:
            return False
        r = int.from_bytes(self.signature[:size], "big")
        s = int.from_bytes(self.signature[size:], "big")
        try:
            key.verify(encode_dss_signature(r, s),
                       _sig_structure(self.protected, self.payload), ec.ECDSA(hash_cls()))
        except InvalidSignature:
            return False
        return True
