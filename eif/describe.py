"""`describe-eif` output: the object nitro-cli prints for an EIF (docs/spec/eif.md §11.2),
as `jsonfmt.Fields` so key order and serde's flattening are reproduced exactly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from eif.errors import EifError
from eif.jsonfmt import Fields
from eif.pcr import DEFAULT_HASH_ALGORITHM
from eif.reader import EifImage

if TYPE_CHECKING:
    from cryptography import x509

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def describe(image: EifImage, hash_algorithm: str = DEFAULT_HASH_ALGORITHM) -> Fields:
    """The describe-eif object. EifError when nitro-cli would fail too: a signature that
    does not verify, or custom metadata that is not an object."""
    result = Fields([("EifVersion", image.version),
                     ("Measurements", Fields(image.measurements.to_json_dict(hash_algorithm)
                                             .items())),
                     ("IsSigned", image.is_signed)])
    if image.signature is not None:
        if image.signature_problem is not None:
            raise EifError(f"{image.path}: signature section: {image.signature_problem}")
        result.append(("SigningCertificate", certificate_info(image.signature.certificate)))
    result.append(("CheckCRC", image.crc_ok))
    if image.signature is not None:
        result.append(("SignatureCheck", bool(image.signature_check)))
    if image.metadata is not None:
        result.append(("ImageName", image.metadata.image_name))
        result.append(("ImageVersion", image.metadata.image_version))
        result.append(("Metadata", image.metadata.describe_fields()))
    return result


def certificate_info(certificate: "x509.Certificate") -> Fields:
    """nitro-cli's SigningCertificate: issuer attributes by OpenSSL long name (sorted),
    signature algorithm, validity in ASN1_TIME_print style, signature as XX:XX:..."""
    issuer: dict[str, str] = {}
    for attribute in certificate.issuer:
        name = attribute.oid._name  # OpenSSL's long names, e.g. "commonName"
        if name == "Unknown OID":
            name = attribute.oid.dotted_string
        value = attribute.value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        issuer[name] = _rust_debug_str(value).replace('"', "")
    algorithm = certificate.signature_algorithm_oid._name
    if algorithm == "Unknown OID":
        algorithm = certificate.signature_algorithm_oid.dotted_string
    return Fields([
        ("IssuerName", dict(sorted(issuer.items()))),
        ("Algorithm", algorithm),
        ("NotBefore", _asn1_time(certificate.not_valid_before_utc)),
        ("NotAfter", _asn1_time(certificate.not_valid_after_utc)),
        ("Signature", ":".join(f"{b:02X}" for b in certificate.signature)),
    ])


def _asn1_time(moment) -> str:
    """OpenSSL ASN1_TIME_print: 'Jan  1 00:00:00 2024 GMT'."""
    return (f"{_MONTHS[moment.month - 1]} {moment.day:2d} {moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d} {moment.year} GMT")


def _rust_debug_str(s: str) -> str:
    """Rust's `{:?}` of a str (escape_debug), quotes included."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\n":
            out.append("\\n")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\u{{{code:x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
