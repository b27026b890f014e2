"""The signature section (type 4): CBOR list of `PcrSignature{signing_certificate,
signature}` whose COSE_Sign1 signs `PcrInfo{register_index: 0, register_value: PCR0}`
(docs/spec/eif.md §7). Byte vectors are serde arrays of uints, not CBOR byte strings.
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from eif import cbor, cose
from eif.cbor import U8Array
from eif.errors import EifError
from eif.pcr import pcr_of_bytes

CERT_KEY = "signing_certificate"
SIG_KEY = "signature"


def pcr_info_payload(index: int, value: bytes) -> bytes:
    """CBOR of `PcrInfo{register_index, register_value}` as serde_cbor writes it."""
    return cbor.encode({"register_index": index, "register_value": U8Array(value)})


def encode_section(entries: list[tuple[bytes, bytes]]) -> bytes:
    """Section bytes for (certificate PEM, COSE_Sign1 bytes) pairs, in order."""
    return cbor.encode([{CERT_KEY: U8Array(pem), SIG_KEY: U8Array(sig)}
                        for pem, sig in entries])


def sign_pcr0(pcr0: bytes, certificate_pem: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The signature section AWS's builder writes: one entry signing PCR0."""
    try:
        signature = cose.sign1(pcr_info_payload(0, pcr0), key)
    except cose.CoseError as error:
        raise EifError(f"cannot sign: {error}") from None
    return encode_section([(bytes(certificate_pem), signature)])


@dataclass(frozen=True)
class ParsedSignature:
    """What the signature section holds: the first entry's certificate and COSE object,
    PCR8, and how the signature checked out against the image's PCR0."""

    certificate_pem: bytes
    certificate: x509.Certificate
    cose: cose.CoseSign1
    pcr8: bytes
    entries: int


def load_certificate(pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM blob, with every field describe-eif shows parsed
    now (cryptography parses some lazily); ValueError saying what is wrong."""
    try:
        certificate = x509.load_pem_x509_certificate(bytes(pem))
        certificate.public_bytes(Encoding.DER)
        list(certificate.issuer)
        certificate.signature_algorithm_oid
        certificate.not_valid_before_utc
        certificate.not_valid_after_utc
        certificate.signature
    except Exception as error:  # cryptography raises several unrelated classes
        raise ValueError(f"signing certificate is not a usable PEM X.509 certificate: "
                         f"{error}") from None
    return certificate



def certificate_der_from_pem(pem: bytes) -> bytes:
    """DER of the first certificate in a PEM blob; EifError if there is none."""
    try:
        return load_certificate(pem).public_bytes(Encoding.DER)
    except ValueError as error:
        raise EifError(str(error)) from None


def pcr8_from_certificate(pem: bytes) -> bytes:
    """PCR8 of an image signed with this PEM certificate: extend(DER of the certificate)."""
    return pcr_of_bytes(certificate_der_from_pem(pem))

def parse_section(data: bytes, where: str) -> ParsedSignature:
    """Parse and check the structure (not yet the signature). EifError names `where`."""
    try:
        value = cbor.decode(data)
    except cbor.CborError as error:
        raise EifError(f"{where}: invalid CBOR: {error}") from None
    if not isinstance(value, list) or not value:
        raise EifError(f"{where}: expected a non-empty CBOR array of PCR signatures")
    parsed = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or list(entry) != [CERT_KEY, SIG_KEY]:
            raise EifError(f"{where}: entry {i} is not a map of exactly "
                           f"{CERT_KEY!r} then {SIG_KEY!r}")
        try:
            pem = cbor.as_u8_array(entry[CERT_KEY], f"entry {i} {CERT_KEY}")
            sig = cbor.as_u8_array(entry[SIG_KEY], f"entry {i} {SIG_KEY}")
        except cbor.CborError as error:
            raise EifError(f"{where}: {error}") from None
        parsed.append((pem, sig))
    pem, sig = parsed[0]
    try:
        certificate = load_certificate(pem)
    except ValueError as error:
        raise EifError(f"{where}: {error}") from None
    try:
        cose_object = cose.CoseSign1.from_bytes(sig)
    except cose.CoseError as error:
        raise EifError(f"{where}: {error}") from None
    der = certificate.public_bytes(Encoding.DER)
    return ParsedSignature(pem, certificate, cose_object, pcr_of_bytes(der), len(parsed))


def check_signature(parsed: ParsedSignature, pcr0: bytes) -> tuple[bool, str | None]:
    """(signature_check, problem): check is True when the COSE signature verifies with
    the certificate's key and signs PcrInfo(0, pcr0); problem says why not, and is set
    only when the signature itself does not verify (nitro-cli then fails)."""
    try:
        key = parsed.certificate.public_key()
    except Exception as error:  # e.g. UnsupportedAlgorithm for an unknown key type
        return False, f"cannot use the certificate's public key: {error}"
    try:
        valid = parsed.cose.verify(key)
    except cose.CoseError as error:
        return False, str(error)
    if not valid:
        return False, "the COSE signature does not verify with the signing certificate"
    return parsed.cose.payload == pcr_info_payload(0, pcr0), None
