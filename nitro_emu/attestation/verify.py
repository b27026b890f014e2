"""Verifier for NSM attestation documents (docs/spec/nsm-vsock.md 3.5).

Checks, in order: the COSE_Sign1 structure (untagged or tag 18, alg ES384, nothing after
the CBOR), the payload's mandatory fields and types, the certificate path
leaf <- cabundle[-1] <- ... <- cabundle[0] == a pinned root (signatures, names,
validity at the document's timestamp, CA flags, path lengths, key usage), the COSE
signature with the leaf key, and finally the caller's expectations (PCRs, nonce, ...).
Works the same for genuine AWS documents (pin AWS's root) and nitro-emu's (pin the
local CA).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtensionOID

from eif.files import KIB, InputKind, read_input, read_stream
from nitro_emu.attestation.errors import VerificationError

COSE_SIGN1_TAG = 18
ALG_ES384 = -35
PCR_SIZES = {"SHA256": 32, "SHA384": 48, "SHA512": 64}
CERT_MAX = 1024
MAX_TIMESTAMP_MS = 253402300800000       # 10000-01-01, beyond what datetime represents
OPTIONAL_MAX = 1024
# An NSM response is at most 12 KiB (devices.nsm RESPONSE_MAX, the Linux driver's buffer),
# 16 KiB in base64: 64 KiB leaves room for armour lines and whitespace.
DOCUMENT = InputKind("attestation document", 64 * KIB)
_DER = serialization.Encoding.DER
_KNOWN_CRITICAL = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}
_ARMOR = re.compile(
    rb"-----BEGIN ATTESTATION DOCUMENT-----(.*?)-----END ATTESTATION DOCUMENT-----", re.S)


@dataclass
class VerifiedDocument:
    """A document that passed every check."""

    payload: dict[str, Any]
    leaf: x509.Certificate
    chain: list[x509.Certificate]          # leaf first, root last
    timestamp: dt.datetime


def read_document(data: bytes) -> bytes:
    """The raw COSE bytes from a file's content: raw CBOR, the base64 between
    BEGIN/END ATTESTATION DOCUMENT lines, or bare base64. CBOR that is not a COSE_Sign1
    is passed on as it is, for `decode_document` to say what it is instead."""
    match = _ARMOR.search(data)
    if match:
        text = match.group(1)
    elif data[:1] in (b"\x84", b"\xd2"):
        return data
    else:
        text = data
    try:
        raw = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        if not match and _is_cbor(data):
            return data
        raise VerificationError("not an attestation document: neither CBOR nor base64") \
            from None
    if not raw:
        raise VerificationError("the attestation document is empty")
    return raw


def read_document_file(path: str) -> bytes:
    """`read_document` of a user-named file (regular, at most DOCUMENT's limit), or of
    standard input for "-"."""
    if path == "-":
        return read_document(read_stream(sys.stdin.buffer, DOCUMENT))
    return read_document(read_input(path, DOCUMENT))


def _is_cbor(data: bytes) -> bool:
    try:
        _loads_exact(data, "the document")
    except VerificationError:
        return False
    return True


def _cbor_kind(value: Any) -> str:
    """What a decoded CBOR item is, in CBOR's words (for error messages)."""
    if isinstance(value, cbor2.CBORTag):
        return f"CBOR tag {value.tag}"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "float"),
                       (bytes, "byte string"), (str, "text string"), (list, "array"),
                       (tuple, "array"), (Mapping, "map")):
        if isinstance(value, kind):
            return f"CBOR {name}"
    return "CBOR null" if value is None else f"CBOR {type(value).__name__}"


def _loads_exact(data: bytes, what: str) -> Any:
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, max_depth=32).decode()
    except Exception as error:  # cbor2 raises several classes on malformed input
        raise VerificationError(f"{what} is not valid CBOR: {error}") from None
    if stream.tell() != len(data):
        raise VerificationError(f"{what} has {len(data) - stream.tell()} bytes of trailing data")
    return value


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise VerificationError(message)


def _bytes_field(payload: dict, key: str, low: int, high: int, optional: bool) -> None:
    if key not in payload and not optional:
        raise VerificationError(f"payload: missing {key!r}")
    value = payload.get(key)
    if value is None:
        _require(optional, f"payload: {key!r} is null")
        return
    _require(isinstance(value, bytes), f"payload: {key!r} is not a byte string")
    _require(low <= len(value) <= high,
             f"payload: {key!r} is {len(value)} bytes, not {low}..{high}")


def decode_document(document: bytes) -> tuple[bytes, bytes, bytes, dict[str, Any]]:
    """Split a COSE_Sign1 document and check its structure and payload fields; returns
    (protected header bytes, payload bytes, signature, payload map)."""
    cose = _loads_exact(document, "the document")
    if isinstance(cose, cbor2.CBORTag):
        _require(cose.tag == COSE_SIGN1_TAG, f"document has CBOR tag {cose.tag}, not 18")
        cose = cose.value
    _require(isinstance(cose, (list, tuple)),
             f"document is a {_cbor_kind(cose)}, not a COSE_Sign1 array of 4 elements")
    _require(len(cose) == 4,
             f"document is an array of {len(cose)} elements, not a COSE_Sign1 of 4")
    protected, unprotected, payload_bytes, signature = cose
    _require(isinstance(protected, bytes), "COSE protected header is not a byte string")
    header = _loads_exact(protected, "the protected header")
    _require(isinstance(header, dict) and header.get(1) == ALG_ES384,
             f"COSE algorithm is {header.get(1) if isinstance(header, dict) else header!r}, "
             "not ES384 (-35)")
    _require(isinstance(unprotected, Mapping), "COSE unprotected header is not a map")
    _require(isinstance(payload_bytes, bytes), "COSE payload is not a byte string")
    _require(isinstance(signature, bytes) and len(signature) == 96,
             "COSE signature is not 96 bytes (ES384 r||s)")
    payload = _loads_exact(payload_bytes, "the payload")
    _require(isinstance(payload, dict), "payload is not a map")
    module_id = payload.get("module_id")
    _require(isinstance(module_id, str) and module_id != "", "payload: bad 'module_id'")
    digest = payload.get("digest")
    _require(digest in PCR_SIZES, f"payload: digest {digest!r} is not SHA256/SHA384/SHA512")
    timestamp = payload.get("timestamp")
    _require(type(timestamp) is int and 0 < timestamp < MAX_TIMESTAMP_MS,
             f"payload: timestamp {timestamp!r} is not milliseconds in years 1970..9999")
    pcrs = payload.get("pcrs")
    _require(isinstance(pcrs, dict) and 1 <= len(pcrs) <= 32,
             "payload: 'pcrs' is not a map of 1..32 entries")
    for index, value in pcrs.items():
        _require(type(index) is int and 0 <= index < 32, f"payload: PCR index {index!r}")
        _require(isinstance(value, bytes) and len(value) == PCR_SIZES[digest],
                 f"payload: PCR{index} is not {PCR_SIZES[digest]} bytes")
    _bytes_field(payload, "certificate", 1, CERT_MAX, optional=False)
    cabundle = payload.get("cabundle")
    _require(isinstance(cabundle, list) and len(cabundle) >= 1,
             "payload: 'cabundle' is not a non-empty array")
    for i, cert in enumerate(cabundle):
        _require(isinstance(cert, bytes) and 1 <= len(cert) <= CERT_MAX,
                 f"payload: cabundle[{i}] is not a byte string of 1..{CERT_MAX} bytes")
    for key in ("public_key", "user_data", "nonce"):
        _bytes_field(payload, key, 0, OPTIONAL_MAX, optional=True)
    return protected, payload_bytes, signature, payload


def _load_cert(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except Exception as error:  # cryptography raises more than ValueError for bad DER
        raise VerificationError(f"{what} is not a DER certificate: {error}") from None


def _extension(cert: x509.Certificate, cls: type) -> Any:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_chain(leaf: x509.Certificate, cabundle: list[bytes],
                 roots: Sequence[x509.Certificate], at: dt.datetime) -> list[x509.Certificate]:
    root_der = cabundle[0]
    anchor = next((r for r in roots if r.public_bytes(_DER) == root_der), None)
    if anchor is None:
        fingerprint = hashlib.sha256(root_der).hexdigest()
        raise VerificationError(f"the document's root (SHA-256 {fingerprint}) is not the "
                                "pinned root")
    inters = [_load_cert(der, f"cabundle[{i}]") for i, der in enumerate(cabundle)][1:]
    path = [leaf, *reversed(inters), anchor]          # leaf first, root last
    names = ["leaf certificate"] + [f"cabundle[{i}]" for i in range(len(inters), 0, -1)] + \
        ["root"]
    for i in range(len(path)):
        try:
            _check_link(path, names, i, at)
        except VerificationError:
            raise
        except Exception as error:  # lazily parsed extensions, unsupported keys, ...
            raise VerificationError(f"{names[i]} is malformed: {error}") from None
    return path


def _check_link(path: list[x509.Certificate], names: list[str], i: int,
                at: dt.datetime) -> None:
    """Check path[i]: critical extensions, validity at `at`, the signature of its issuer
    path[i + 1], and the CA constraints that its position needs."""
    cert, name = path[i], names[i]
    for ext in cert.extensions:
        _require(not ext.critical or ext.oid in _KNOWN_CRITICAL,
                 f"{name} has an unknown critical extension {ext.oid.dotted_string}")
    _require(cert.not_valid_before_utc <= at <= cert.not_valid_after_utc,
             f"{name} ({cert.subject.rfc4514_string()}) is not valid at {at.isoformat()} "
             f"(valid {cert.not_valid_before_utc.isoformat()} to "
             f"{cert.not_valid_after_utc.isoformat()})")
    if i + 1 < len(path):
        try:
            cert.verify_directly_issued_by(path[i + 1])
        except (ValueError, TypeError, InvalidSignature) as error:
            raise VerificationError(f"{name} is not signed by {names[i + 1]}: "
                                    f"{error or 'bad signature'}") from None
    bc = _extension(cert, x509.BasicConstraints)
    ku = _extension(cert, x509.KeyUsage)
    if i == 0:
        _require(bc is None or not bc.ca, "the leaf certificate is a CA")
        _require(ku is None or ku.digital_signature,
                 "the leaf certificate may not sign (no digitalSignature key usage)")
        return
    _require(bc is not None and bc.ca, f"{name} is not a CA certificate")
    below = i - 1                          # CA certificates between it and the leaf
    _require(bc.path_length is None or below <= bc.path_length,
             f"{name} allows {bc.path_length} CAs below it, has {below}")
    _require(ku is None or ku.key_cert_sign,
             f"{name} may not sign certificates (no keyCertSign key usage)")


def verify_document(document: bytes, roots: Sequence[x509.Certificate], *,
                    expected_pcrs: dict[int, bytes] | None = None,
                    nonce: bytes | None = None, user_data: bytes | None = None,
                    public_key: bytes | None = None,
                    at: dt.datetime | None = None) -> VerifiedDocument:
    """Verify `document` (raw COSE bytes) against the pinned `roots`; raises
    VerificationError naming the first failed check. Certificates are checked at the
    document's timestamp unless `at` is given."""
    protected, payload_bytes, signature, payload = decode_document(document)
    timestamp = dt.datetime.fromtimestamp(payload["timestamp"] / 1000, dt.timezone.utc)
    with warnings.catch_warnings():          # cryptography warns about odd encodings
        warnings.simplefilter("ignore")
        leaf = _load_cert(payload["certificate"], "the leaf certificate")
        chain = _check_chain(leaf, payload["cabundle"], roots, at or timestamp)
    try:
        key = leaf.public_key()
    except Exception as error:  # unsupported or malformed key
        raise VerificationError(f"the leaf key cannot be used: {error}") from None
    _require(isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1",
             "the leaf key is not EC P-384 as ES384 requires")
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload_bytes])
    der_signature = encode_dss_signature(int.from_bytes(signature[:48], "big"),
                                         int.from_bytes(signature[48:], "big"))
    try:
        key.verify(der_signature, to_be_signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationError("the COSE signature does not verify with the leaf key") \
            from None
    for index, value in sorted((expected_pcrs or {}).items()):
        got = payload["pcrs"].get(index)
        _require(got is not None, f"PCR{index} is not in the document")
        _require(got == value, f"PCR{index} is {got.hex()}, expected {value.hex()}")
    for key_name, wanted in (("nonce", nonce), ("user_data", user_data),
                             ("public_key", public_key)):
        if wanted is not None:
            got = payload.get(key_name)
            _require(got == wanted, f"{key_name} is "
                     f"{got.hex() if isinstance(got, bytes) else got}, expected {wanted.hex()}")
    return VerifiedDocument(payload=payload, leaf=leaf, chain=chain, timestamp=timestamp)


def payload_json(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as JSON-ready values: byte strings as hex, PCR keys as strings."""
    def convert(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value
    return convert(payload)
