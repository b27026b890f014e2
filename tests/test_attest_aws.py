"""The verifier against a GENUINE AWS attestation document and AWS's published root.

Test data (public): a production attestation document from an ap-southeast-2 enclave,
2026-02-06, published as a test fixture in github.com/Epsilon-Data/nitro-verify,
file test/verify.test.ts (commit 9cc2015fe656aacdfb3068beecd244594b93b0af), constant
REAL_ATTESTATION_BASE64. Its leaf certificate was valid for three hours only, so it is
checked at the document's timestamp (nsm-vsock.md 3.8). The expected PCR0-2 are the
`describe-enclaves` values published with it.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib

import cbor2
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_emu.attestation.aws_root import AWS_ROOT_PEM, AWS_ROOT_SHA256
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.verify import VerificationError, read_document, verify_document

AWS_DOCUMENT_B64 = """
hEShATgioFkScb9pbW9kdWxlX2lkeCdpLTA3NjFhNGNiY2M3NjMyYWVmLWVuYzAxOWMzMjBjYjMyZjZiN2FmZGln
ZXN0ZlNIQTM4NGl0aW1lc3RhbXAbAAABnDINTRRkcGNyc7AAWDBhZYVTaWVKWHva1Z+lMvQw1976OOz1furG0px+
h6MrYhiRhi0E+2RCP2ux4WJvwCYBWDBLTVs2YbPvwSkgkAyA4Sbkzng8Ui3mwCoqW/evOiuTJ7hndvGI5L4cHEBK
Ep29pJMCWDClDyFJUtHMFosE2lTbGxY6huX/7+wiO3tkDfiLZlw9t0XppoZafbJlN0I5/SZKVSIDWDAljxczR2XD
vm4+0cNAbS8jgUb1Caz6tJzoTcxwb074s7sK4ZaCodvp8XUFWplSjngEWDD9OSnTlG1TSJbpcEpTkTbDK58zG3np
1HsN38tMiOimcccNLRKT94PgfhSMBIBy3aYFWDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAGWDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAHWDAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIWDAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAJWDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAKWDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAALWDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAMWDAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAANWDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAOWDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAPWDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABrY2VydGlm
aWNhdGVZAogwggKEMIICC6ADAgECAhABnDIMsy9regAAAABphaUyMAoGCCqGSM49BAMDMIGTMQswCQYDVQQGEwJV
UzETMBEGA1UECAwKV2FzaGluZ3RvbjEQMA4GA1UEBwwHU2VhdHRsZTEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxPjA8BgNVBAMMNWktMDc2MWE0Y2JjYzc2MzJhZWYuYXAtc291dGhlYXN0LTIuYXdzLm5pdHJvLWVuY2xh
dmVzMB4XDTI2MDIwNjA4MjQxNVoXDTI2MDIwNjExMjQxOFowgZgxCzAJBgNVBAYTAlVTMRMwEQYDVQQIDApXYXNo
aW5ndG9uMRAwDgYDVQQHDAdTZWF0dGxlMQ8wDQYDVQQKDAZBbWF6b24xDDAKBgNVBAsMA0FXUzFDMEEGA1UEAww6
aS0wNzYxYTRjYmNjNzYzMmFlZi1lbmMwMTljMzIwY2IzMmY2YjdhLmFwLXNvdXRoZWFzdC0yLmF3czB2MBAGByqG
SM49AgEGBSuBBAAiA2IABK61iHD4L4VGalm0bmNszkAjRYnGFXTKDK6lPLa4jf+KSWVWdqJ34R/+81X++GkehRrQ
VLye78W0WMdZ/jdZiEb/eqyuFyEZBN0ZVLJZy7L5xsYUw5eq+c/eU3Saq51eg6MdMBswDAYDVR0TAQH/BAIwADAL
BgNVHQ8EBAMCBsAwCgYIKoZIzj0EAwMDZwAwZAIwXz0mH6apGkkm9+AfGxMOP4US3gyTnZziZ7pKFszG34jHOwd4
fFUqarFgVghc7yjAAjADLFJbQsBIcD2Foz25RfMV0rwiSbjGCe0w9mZ/btcaPB1VixCuUP2sNMTa4dhHIt1oY2Fi
dW5kbGWEWQIVMIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTELMAkGA1UEBhMC
VVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYDVQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcN
MTkxMDI4MTMyODA1WhcNNDkxMDI4MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYD
VQQLDANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEGBSuBBAAiA2IABPwCVOum
CMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQX
CEPZ3BABIeTPYwEoCWZEh8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkFR+eW
w5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYCMQCjfy+Rocm9Xue4YnwWmNJVA44f
A0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPWrfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8
Yfwr6wPLb+6NIwLz3/ZZAsYwggLCMIICSaADAgECAhAmjUSeTNpGDhYGtJbxW+zAMAoGCCqGSM49BAMDMEkxCzAJ
BgNVBAYTAlVTMQ8wDQYDVQQKDAZBbWF6b24xDDAKBgNVBAsMA0FXUzEbMBkGA1UEAwwSYXdzLm5pdHJvLWVuY2xh
dmVzMB4XDTI2MDIwNDExMzczMVoXDTI2MDIyNDEyMzczMVowaTELMAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpv
bjEMMAoGA1UECwwDQVdTMTswOQYDVQQDDDJkZmVkY2FlMGYyNTNkNDEyLmFwLXNvdXRoZWFzdC0yLmF3cy5uaXRy
by1lbmNsYXZlczB2MBAGByqGSM49AgEGBSuBBAAiA2IABDICayvKyXvHniQkuXV7ilEEBYK0viBP8iHgq5Iwgtel
0axTcQSAQg+H07yPM1KmKwMwI0FbKw4Epke/TTzgub6xM8QKYAq1buns4wYBSMA49eiKM3iWXV4jouoJDMPc8aOB
1TCB0jASBgNVHRMBAf8ECDAGAQH/AgECMB8GA1UdIwQYMBaAFJAltQ3ZBUfnlsOW+nKdz5mp30uWMB0GA1UdDgQW
BBQK8+1EMdRattEMcdWDwwGdlR0jIzAOBgNVHQ8BAf8EBAMCAYYwbAYDVR0fBGUwYzBhoF+gXYZbaHR0cDovL2F3
cy1uaXRyby1lbmNsYXZlcy1jcmwuczMuYW1hem9uYXdzLmNvbS9jcmwvYWI0OTYwY2MtN2Q2My00MmJkLTllOWYt
NTkzMzhjYjY3Zjg0LmNybDAKBggqhkjOPQQDAwNnADBkAjAoxpAVdI013rNanngptm9yzAqwJE8Lz/UqxbI+QRBm
+dTWadieP/kKC/W19KHntn0CMGJCwW/gZ60dQumxFz8tmpW7puiIRkAnZ42WnTxtt2FZA/44J1isbM7eSacyR2bb
z1kDLzCCAyswggKxoAMCAQICEQCJ79lX/6gV1kwkjZM04OTXMAoGCCqGSM49BAMDMGkxCzAJBgNVBAYTAlVTMQ8w
DQYDVQQKDAZBbWF6b24xDDAKBgNVBAsMA0FXUzE7MDkGA1UEAwwyZGZlZGNhZTBmMjUzZDQxMi5hcC1zb3V0aGVh
c3QtMi5hd3Mubml0cm8tZW5jbGF2ZXMwHhcNMjYwMjA1MjEyOTIxWhcNMjYwMjExMTQyOTIwWjCBjjFBMD8GA1UE
Aww4MTA4OGYyNTQzODc5YWQ4MS56b25hbC5hcC1zb3V0aGVhc3QtMi5hd3Mubml0cm8tZW5jbGF2ZXMxDDAKBgNV
BAsMA0FXUzEPMA0GA1UECgwGQW1hem9uMQswCQYDVQQGEwJVUzELMAkGA1UECAwCV0ExEDAOBgNVBAcMB1NlYXR0
bGUwdjAQBgcqhkjOPQIBBgUrgQQAIgNiAAR3IcVVe7MLV8Cp3zFpYRinJmN0qoBLTzE8T+ZGnGT0G6HNZ1ScIgwK
ngFD8gXXEPepSzopTg0hNpiX7srYC6wvIiDxBvr9+6m0SzUxK48HPF2UJpqEtNytaAH1+LWzNwqjgfYwgfMwEgYD
VR0TAQH/BAgwBgEB/wIBATAfBgNVHSMEGDAWgBQK8+1EMdRattEMcdWDwwGdlR0jIzAdBgNVHQ4EFgQULdSndnVl
gtZPRrYtYB+K8NuekzgwDgYDVR0PAQH/BAQDAgGGMIGMBgNVHR8EgYQwgYEwf6B9oHuGeWh0dHA6Ly9jcmwtYXAt
c291dGhlYXN0LTItYXdzLW5pdHJvLWVuY2xhdmVzLnMzLmFwLXNvdXRoZWFzdC0yLmFtYXpvbmF3cy5jb20vY3Js
LzY2YmVkMWI5LTE4NzgtNDYxZS1hNTQ4LWI3ODMwNGM0Mzc5YS5jcmwwCgYIKoZIzj0EAwMDaAAwZQIwcTOeiBNw
Alvsvs7Bzubjr4ZWysLmQ5CP6cgtni40YzjJZaex7tH/RmfndZMIvK2fAjEAmLcryXqI50OSoF4O8coJrEQW5CFg
6BjQqlQE5Z0WfYCmjzs5FFyetviX4HA02iJIWQLMMIICyDCCAk6gAwIBAgIUfygUwUs/LNsToGEA+EyBp/ztf40w
CgYIKoZIzj0EAwMwgY4xQTA/BgNVBAMMODEwODhmMjU0Mzg3OWFkODEuem9uYWwuYXAtc291dGhlYXN0LTIuYXdz
Lm5pdHJvLWVuY2xhdmVzMQwwCgYDVQQLDANBV1MxDzANBgNVBAoMBkFtYXpvbjELMAkGA1UEBhMCVVMxCzAJBgNV
BAgMAldBMRAwDgYDVQQHDAdTZWF0dGxlMB4XDTI2MDIwNjA4MjMyNloXDTI2MDIwNzA4MjMyNlowgZMxCzAJBgNV
BAYTAlVTMRMwEQYDVQQIDApXYXNoaW5ndG9uMRAwDgYDVQQHDAdTZWF0dGxlMQ8wDQYDVQQKDAZBbWF6b24xDDAK
BgNVBAsMA0FXUzE+MDwGA1UEAww1aS0wNzYxYTRjYmNjNzYzMmFlZi5hcC1zb3V0aGVhc3QtMi5hd3Mubml0cm8t
ZW5jbGF2ZXMwdjAQBgcqhkjOPQIBBgUrgQQAIgNiAARmtoPINDpni5ls2xPTX+jXvGSgu0gcGwjNJJ8foJHEx/Io
EG3hqvvZuNNk09Crlej6ZnMfAYIkexgTJ1TydzotNzq5qNGzbn18k8XFVd0UdX++FJZctkCP9ciZhyyZ4fujZjBk
MBIGA1UdEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgIEMB0GA1UdDgQWBBRtafdjn6TTXgRTMzBCXtlMYuTb
PTAfBgNVHSMEGDAWgBQt1Kd2dWWC1k9Gti1gH4rw256TODAKBggqhkjOPQQDAwNoADBlAjABt8nRcTpSgkmJiRrT
9iU2USmvQdvC9ASe6d/BlSa8twDS9bwW4BfxfuiUq9RstwYCMQDjlji5hCjNdA5U22L2vWIscSX9rGGyQsqE6be9
z6mKcf01slqSsG1gPbUEyHME791qcHVibGljX2tlefZpdXNlcl9kYXRhWQEheyJqb2JfaWQiOiAicnNhLXNlc3Np
b24tYWUxMmE0MTUiLCAibWV0YWRhdGEiOiB7ImRlY3J5cHRlZF9jc3Zfc2l6ZSI6IDY2NywgImRlY3J5cHRlZF96
aXBfc2l6ZSI6IDMyNDEsICJlbmNyeXB0ZWRfY3N2X3NpemUiOiAxMjYwLCAiZW5jcnlwdGVkX3ppcF9zaXplIjog
NDY5Nn0sICJvdXRwdXRfaGFzaCI6ICI4OTBkYTllOGNhNTA3YzJmYmJiNGZiYzUwYjg4MjM1OGQ5NmI4ZWZjM2Vm
MjNiYjhjMDVlY2E5NjU1MTNjNzc1IiwgIm91dHB1dF9sZW5ndGgiOiAxNzAsICJ0aW1lc3RhbXAiOiAxNzcwMzY2
MjU4fWVub25jZVgggAhjv1lwVeGrhure9U+lyakGre+2h4Lbjk/q0r7ZqN//WGAiRTqCE34lOrokyDoeiFnBs8IT
o+hwU+duBxVjwOMC7jKnRWbyqF0MnO/RIfEpXcmLdHWivizUlzbgc4v/OKRNDouFSj6n2PsklNtN6YfGhRyE08j6
w91I2aAa0hdzjpI=
"""
AWS_DOCUMENT = base64.b64decode("".join(AWS_DOCUMENT_B64.split()))
AWS_ROOT = x509.load_pem_x509_certificate(AWS_ROOT_PEM)
EXPECTED_PCRS = {
    0: "6165855369654a587bdad59fa532f430d7defa38ecf57eeac6d29c7e87a32b621891862d04fb64423f6bb1e1626fc026",
    1: "4b4d5b3661b3efc12920900c80e126e4ce783c522de6c02a2a5bf7af3a2b9327b86776f188e4be1c1c404a129dbda493",
    2: "a50f214952d1cc168b04da54db1b163a86e5ffefec223b7b640df88b665c3db745e9a6865a7db265374239fd264a5522",
}


def test_aws_root_is_the_published_one():
    from cryptography.hazmat.primitives.serialization import Encoding
    der = AWS_ROOT.public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_ROOT_SHA256
    assert cbor2.loads(cbor2.loads(AWS_DOCUMENT)[2])["cabundle"][0] == der


def test_genuine_aws_document_verifies():
    result = verify_document(AWS_DOCUMENT, [AWS_ROOT],
                             expected_pcrs={i: bytes.fromhex(v) for i, v in EXPECTED_PCRS.items()})
    payload = result.payload
    assert payload["module_id"] == "i-0761a4cbcc7632aef-enc019c320cb32f6b7a"
    assert payload["timestamp"] == 1770366258452
    assert len(payload["cabundle"]) == 4 and len(result.chain) == 5
    assert payload["public_key"] is None and len(payload["nonce"]) == 32
    assert b"output_hash" in payload["user_data"]


def test_genuine_document_is_rejected_against_another_root():
    with pytest.raises(VerificationError, match="not the pinned root"):
        verify_document(AWS_DOCUMENT, [LocalCA.create().certificate])


def test_genuine_document_leaf_has_expired_now():
    with pytest.raises(VerificationError, match="leaf certificate .* is not valid at"):
        verify_document(AWS_DOCUMENT, [AWS_ROOT], at=dt.datetime(2026, 2, 7, tzinfo=dt.timezone.utc))


def test_expectation_mismatches():
    with pytest.raises(VerificationError, match="PCR0 is 6165"):
        verify_document(AWS_DOCUMENT, [AWS_ROOT], expected_pcrs={0: bytes(48)})
    with pytest.raises(VerificationError, match="PCR20 is not in the document"):
        verify_document(AWS_DOCUMENT, [AWS_ROOT], expected_pcrs={20: bytes(48)})
    with pytest.raises(VerificationError, match="nonce is 8008"):
        verify_document(AWS_DOCUMENT, [AWS_ROOT], nonce=b"\x00")


def test_tag_18_is_accepted():
    verify_document(b"\xd2" + AWS_DOCUMENT, [AWS_ROOT])


def test_document_file_forms():
    b64 = base64.b64encode(AWS_DOCUMENT)
    armored = b"log line\n-----BEGIN ATTESTATION DOCUMENT-----\n" + \
        b"\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)) + \
        b"\n-----END ATTESTATION DOCUMENT-----\ntrailer\n"
    assert read_document(armored) == AWS_DOCUMENT
    assert read_document(b64 + b"\n") == AWS_DOCUMENT
    assert read_document(AWS_DOCUMENT) == AWS_DOCUMENT
    with pytest.raises(VerificationError):
        read_document(b"hello, not a document!")


def _flipped(position: int, mask: int) -> bytes:
    doc = bytearray(AWS_DOCUMENT)
    doc[position] ^= mask
    return bytes(doc)


def _payload_bounds() -> tuple[int, int]:
    payload = cbor2.loads(AWS_DOCUMENT)[2]
    start = AWS_DOCUMENT.index(payload)
    return start, start + len(payload)


def test_every_byte_of_envelope_and_signature_is_protected():
    start, end = _payload_bounds()
    positions = list(range(0, start + 64)) + list(range(end - 64, len(AWS_DOCUMENT)))
    for position in positions:
        for mask in (0x01, 0x80):
            with pytest.raises(VerificationError):
                verify_document(_flipped(position, mask), [AWS_ROOT])


def test_a_sweep_across_the_payload_is_rejected():
    start, end = _payload_bounds()
    for position in range(start, end, 11):
        with pytest.raises(VerificationError):
            verify_document(_flipped(position, 0x04), [AWS_ROOT])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(AWS_DOCUMENT) - 1), st.integers(1, 255))
def test_any_single_byte_change_is_rejected(position, mask):
    with pytest.raises(VerificationError):
        verify_document(_flipped(position, mask), [AWS_ROOT])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_a_verification_error(data):
    with pytest.raises(VerificationError):
        verify_document(data, [AWS_ROOT])


def test_truncations_are_rejected():
    for length in range(0, len(AWS_DOCUMENT), 97):
        with pytest.raises(VerificationError):
            verify_document(AWS_DOCUMENT[:length], [AWS_ROOT])
    with pytest.raises(VerificationError, match="trailing"):
        verify_document(AWS_DOCUMENT + b"\x00", [AWS_ROOT])
