"""The signed path: signature section (serde CBOR + COSE_Sign1), PCR8, describe-eif's
certificate info and signature check, with certificates made here with `cryptography`."""
import datetime as dt
import hashlib
import random
import zlib

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from eif import jsonfmt
from eif.builder import build_eif
from eif.describe import describe
from eif.errors import EifError
from eif.signature import pcr8_from_certificate
from eif.reader import read_eif
from eif.signature import pcr_info_payload


def make_certificate(tmp_path, curve=ec.SECP384R1(), key=None, name="signer"):
    key = key or ec.generate_private_key(curve)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Test "Org"'),
        x509.NameAttribute(NameOID.COMMON_NAME, "nitro-emu test"),
    ])
    algorithm = None if isinstance(key, ec.EllipticCurvePrivateKey) is False else hashes.SHA384()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1234)
            .not_valid_before(dt.datetime(2024, 1, 5, 7, 8, 9, tzinfo=dt.timezone.utc))
            .not_valid_after(dt.datetime(2034, 12, 25, 0, 0, 0, tzinfo=dt.timezone.utc))
            .sign(key, algorithm or hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key, cert_path, key_path


@pytest.fixture
def parts(tmp_path):
    (tmp_path / "kernel").write_bytes(b"KERNEL" * 100)
    (tmp_path / "r1").write_bytes(b"RAMDISK-ONE")
    (tmp_path / "r2").write_bytes(b"RAMDISK-TWO")
    return dict(kernel=tmp_path / "kernel", cmdline="console=ttyS0",
                ramdisks=[tmp_path / "r1", tmp_path / "r2"],
                build_time="2024-01-01T00:00:00+00:00")


def extend(data):
    return hashlib.sha384(bytes(48) + hashlib.sha384(data).digest()).digest()


@pytest.mark.parametrize("curve, alg, hash_cls, size", [
    (ec.SECP384R1(), -35, hashes.SHA384, 48),
    (ec.SECP256R1(), -7, hashes.SHA256, 32),
    (ec.SECP521R1(), -36, hashes.SHA512, 66),
])
def test_signed_build_and_read(tmp_path, parts, curve, alg, hash_cls, size):
    cert, key, cert_path, key_path = make_certificate(tmp_path, curve)
    unsigned = build_eif(tmp_path / "u.eif", **parts)
    signed = build_eif(tmp_path / "s.eif", signing_certificate=cert_path,
                       private_key=key_path, **parts)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert signed.pcr8 == extend(der) == pcr8_from_certificate(cert_path.read_bytes())
    assert (signed.pcr0, signed.pcr1, signed.pcr2) == \
        (unsigned.pcr0, unsigned.pcr1, unsigned.pcr2)  # the signature is not measured

    image = read_eif(tmp_path / "s.eif")
    assert image.crc_ok and image.is_signed and image.signature_check is True
    assert image.measurements == signed
    assert image.signing_certificate_pem == cert_path.read_bytes()  # verbatim
    assert image.signature_section is image.sections[-1]
    assert len(image.sections) == 6

    # Decode the section with an independent CBOR library and verify by hand.
    raw = (tmp_path / "s.eif").read_bytes()[image.signature_section.offset:]
    entries = cbor2.loads(raw)
    assert entries == [{"signing_certificate": list(cert_path.read_bytes()),
                        "signature": entries[0]["signature"]}]
    assert list(entries[0]) == ["signing_certificate", "signature"]
    protected, unprotected, payload, signature = cbor2.loads(bytes(entries[0]["signature"]))
    assert cbor2.loads(protected) == {1: alg} and unprotected == {}
    assert payload == pcr_info_payload(0, signed.pcr0)
    assert cbor2.loads(payload) == {"register_index": 0, "register_value": list(signed.pcr0)}
    assert len(signature) == 2 * size
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
    key.public_key().verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hash_cls()))


def test_describe_signed_image(tmp_path, parts):
    cert, _, cert_path, key_path = make_certificate(tmp_path)
    build_eif(tmp_path / "s.eif", signing_certificate=cert_path, private_key=key_path,
              name="app", version="2.0", metadata={"b": 1, "a": [1.5e-7]}, **parts)
    text = jsonfmt.dumps_pretty(describe(read_eif(tmp_path / "s.eif")))
    described = jsonfmt.loads(text.encode())
    assert list(described) == ["EifVersion", "Measurements", "IsSigned", "SigningCertificate",
                               "CheckCRC", "SignatureCheck", "ImageName", "ImageVersion",
                               "Metadata"]
    assert list(described["Measurements"]) == ["HashAlgorithm", "PCR0", "PCR1", "PCR2", "PCR8"]
    info = described["SigningCertificate"]
    assert info == {
        "IssuerName": {"commonName": "nitro-emu test", "countryName": "US",
                       # Rust Debug-quotes ("Test \"Org\"") and then strips every '"'
                       "organizationName": "Test \\Org\\"},
        "Algorithm": "ecdsa-with-SHA384",
        "NotBefore": "Jan  5 07:08:09 2024 GMT",
        "NotAfter": "Dec 25 00:00:00 2034 GMT",
        "Signature": ":".join(f"{b:02X}" for b in cert.signature),
    }
    assert list(info) == ["IssuerName", "Algorithm", "NotBefore", "NotAfter", "Signature"]
    assert described["IsSigned"] is True and described["SignatureCheck"] is True
    assert list(described["Metadata"]) == ["BuildTime", "BuildTool", "BuildToolVersion",
                                           "OperatingSystem", "KernelVersion", "DockerInfo",
                                           "a", "b"]
    assert '"a": [\n      1.5e-7\n    ]' in text


def _rewrite_with_good_crc(path, edit):
    data = bytearray(path.read_bytes())
    edit(data)
    crc = zlib.crc32(bytes(data[548:]), zlib.crc32(bytes(data[:544])))
    data[544:548] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))


def test_image_changed_after_signing_fails_the_check(tmp_path, parts):
    _, _, cert_path, key_path = make_certificate(tmp_path)
    path = tmp_path / "s.eif"
    build_eif(path, signing_certificate=cert_path, private_key=key_path, **parts)
    kernel = read_eif(path).kernel_section

    def flip(data):
        data[kernel.offset] ^= 1
    _rewrite_with_good_crc(path, flip)
    image = read_eif(path)
    assert image.crc_ok and image.signature_check is False and image.signature_problem is None
    assert dict(describe(image))["SignatureCheck"] is False


def test_bad_cose_signature_makes_describe_fail(tmp_path, parts):
    _, _, cert_path, key_path = make_certificate(tmp_path)
    path = tmp_path / "s.eif"
    build_eif(path, signing_certificate=cert_path, private_key=key_path, **parts)

    def flip_last_signature_byte(data):  # last item of the COSE signature bstr: 0x18 xx
        data[-1] ^= 0x01  # stays a valid shortest-form uint either way
    _rewrite_with_good_crc(path, flip_last_signature_byte)
    image = read_eif(path)
    assert image.signature_check is False
    assert "does not verify" in image.signature_problem
    with pytest.raises(EifError, match="signature section: the COSE signature does not verify"):
        describe(image)


def test_signing_input_errors(tmp_path, parts):
    _, _, cert_path, _ = make_certificate(tmp_path, name="one")
    _, _, _, other_key = make_certificate(tmp_path, name="two")
    with pytest.raises(EifError, match="private key does not match"):
        build_eif(tmp_path / "x.eif", signing_certificate=cert_path, private_key=other_key,
                  **parts)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _, _, rsa_cert, rsa_path = make_certificate(tmp_path, key=rsa_key, name="rsa")
    with pytest.raises(EifError, match="only EC keys"):
        build_eif(tmp_path / "x.eif", signing_certificate=rsa_cert, private_key=rsa_path,
                  **parts)
    with pytest.raises(EifError, match="not a usable PEM X.509 certificate"):
        build_eif(tmp_path / "x.eif", signing_certificate=other_key, private_key=other_key,
                  **parts)
    with pytest.raises(EifError, match="at most 28 when signed"):
        build_eif(tmp_path / "x.eif", signing_certificate=cert_path, private_key=other_key,
                  **{**parts, "ramdisks": parts["ramdisks"] * 15})
    assert not (tmp_path / "x.eif").exists()


def test_pcr8_of_certificate_errors():
    with pytest.raises(EifError, match="not a usable PEM X.509 certificate"):
        pcr8_from_certificate(b"hello")


def test_single_byte_changes_of_a_signed_file_are_detected(tmp_path, parts):
    _, _, cert_path, key_path = make_certificate(tmp_path)
    path = tmp_path / "s.eif"
    build_eif(path, signing_certificate=cert_path, private_key=key_path, **parts)
    data = path.read_bytes()
    image = read_eif(path)
    start = image.signature_section.header_offset
    rng = random.Random(7)
    # every byte of the header and of the signature section's header, samples of the
    # signature data (each costs a certificate parse and an ECDSA verify) and of the rest
    positions = list(range(548)) + list(range(start, start + 12))
    positions += rng.sample(range(start + 12, len(data)), 300)
    positions += rng.sample(range(548, start), 100)
    for position in positions:
        mutated = bytearray(data)
        mutated[position] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(mutated))
        try:
            result = read_eif(path)
        except EifError:
            continue
        assert not result.crc_ok, f"change at offset {position} went unnoticed"
