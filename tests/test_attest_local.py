"""The local CA in the state dir, the NSM factory, documents it signs, and the CLI verbs
(`ca export`, `attest verify`) end to end."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import stat
import threading

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devices.nsm import NsmHandler, PcrBank
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.errors import AttestationError, VerificationError
from nitro_emu.attestation.factory import create_nsm_device
from nitro_emu.attestation.state import state_dir
from nitro_emu.attestation.verify import verify_document
from nitro_emu.cli import main as cli_main
from eif.pcr import pcr_from_digest

PCR0, PCR1, PCR2 = pcr_from_digest(b"image"), pcr_from_digest(b"boot"), pcr_from_digest(b"app")


def booted_bank() -> PcrBank:
    bank = PcrBank()
    bank.lock_range(16)
    return bank


def attest(handler: NsmHandler, **fields) -> bytes:
    response = cbor2.loads(handler.handle(cbor2.dumps({"Attestation": fields})))
    return response["Attestation"]["document"]


def test_state_dir_resolution(tmp_path):
    assert str(state_dir({"NITRO_EMU_STATE_DIR": "/a", "XDG_STATE_HOME": "/b",
                          "HOME": "/c"})) == "/a"
    assert str(state_dir({"XDG_STATE_HOME": "/b", "HOME": "/c"})) == "/b/nitro-emu"
    assert str(state_dir({"HOME": "/c"})) == "/c/.local/state/nitro-emu"


def test_root_created_once_then_reused(tmp_path):
    first = LocalCA.load_or_create(tmp_path)
    second = LocalCA.load_or_create(tmp_path)
    assert first.root_der() == second.root_der()
    key_file = tmp_path / "ca" / "root-key.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    cert = first.certificate
    assert cert.signature_hash_algorithm.name == "sha384"
    assert cert.public_key().curve.name == "secp384r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_concurrent_first_use_shares_one_root(tmp_path):
    roots = []
    threads = [threading.Thread(target=lambda: roots.append(LocalCA.load_or_create(tmp_path)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({ca.root_der() for ca in roots}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]


def test_damaged_ca_is_a_clear_error(tmp_path):
    LocalCA.load_or_create(tmp_path)
    (tmp_path / "ca" / "root-key.pem").write_bytes(b"garbage")
    with pytest.raises(AttestationError, match="cannot load the CA key .*root-key.pem"):
        LocalCA.load_or_create(tmp_path)
    other = LocalCA.create()
    from cryptography.hazmat.primitives import serialization
    (tmp_path / "ca" / "root-key.pem").write_bytes(other.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(AttestationError, match="does not belong to the key"):
        LocalCA.load_or_create(tmp_path)


def test_chain_shape_like_aws(tmp_path):
    ca = LocalCA.load_or_create(tmp_path)
    identity = ca.signer("i-0123456789abcdef0-enc0000000000000001").identity(
        int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000))
    assert identity.cabundle[0] == ca.root_der() and len(identity.cabundle) == 2
    inter = x509.load_der_x509_certificate(identity.cabundle[1])
    leaf = x509.load_der_x509_certificate(identity.certificate)
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(hours=3, minutes=5)


def test_leaf_is_renewed_so_documents_always_verify():
    ca = LocalCA.create()
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    clock = [now]
    handler = NsmHandler(booted_bank(), ca.signer("m-1"), "m-1", wall_clock_ms=lambda: clock[0])
    first = attest(handler)
    clock[0] = now + 5 * 3600 * 1000                     # past the first leaf's end
    later = attest(handler)
    for doc in (first, later):
        verify_document(doc, [ca.certificate])
    leaf = lambda d: cbor2.loads(cbor2.loads(d)[2])["certificate"]
    assert leaf(first) != leaf(later)
    with pytest.raises(VerificationError, match="not valid at"):
        verify_document(first, [ca.certificate],
                        at=dt.datetime.fromtimestamp(clock[0] / 1000, dt.timezone.utc))


def test_factory_device_documents_verify_against_the_exported_root(tmp_path):
    device = create_nsm_device(pcr0=PCR0, pcr1=PCR1, pcr2=PCR2, pcr8=None,
                               parent_role="arn:aws:iam::123456789012:role/r",
                               parent_id="i-0123456789abcdef0", debug_mode=False,
                               state_dir=tmp_path)
    doc = attest(device.handler, nonce=b"nonce", user_data=b"hello")
    root = LocalCA.load_or_create(tmp_path).certificate
    result = verify_document(doc, [root], expected_pcrs={0: PCR0, 1: PCR1, 2: PCR2},
                             nonce=b"nonce", user_data=b"hello")
    assert result.payload["pcrs"][4] == pcr_from_digest(b"i-0123456789abcdef0")
    assert result.payload["module_id"].startswith("i-0123456789abcdef0-enc")


def test_the_factory_loads_the_ca_when_the_guest_first_attests(tmp_path, caplog):
    """Booting does not touch the CA (nor import cryptography); a damaged CA is one log
    line and an InternalError answer at the first Attestation, and the NSM keeps serving."""
    LocalCA.load_or_create(tmp_path)
    key = tmp_path / "ca" / "root-key.pem"
    key.write_bytes(b"garbage")
    device = create_nsm_device(pcr0=PCR0, pcr1=PCR1, pcr2=PCR2, pcr8=None, parent_role=None,
                               parent_id=None, debug_mode=False, state_dir=tmp_path)
    with caplog.at_level("ERROR", logger="nitro_emu.attestation"):
        response = cbor2.loads(device.handler.handle(cbor2.dumps({"Attestation": {}})))
    assert response == {"Error": "InternalError"}
    [record] = [r for r in caplog.records if r.name == "nitro_emu.attestation"]
    assert "cannot load the CA key" in record.getMessage() and record.exc_info is None
    described = cbor2.loads(device.handler.handle(cbor2.dumps({"DescribePCR": {"index": 0}})))
    assert described["DescribePCR"]["data"] == PCR0
    for leftover in (tmp_path / "ca").iterdir():   # the user removes the damaged CA
        leftover.unlink()
    (tmp_path / "ca").rmdir()
    verify_document(attest(device.handler), [LocalCA.load_or_create(tmp_path).certificate])


def test_factory_debug_mode_documents_have_zero_pcr0_to_2(tmp_path):
    device = create_nsm_device(pcr0=PCR0, pcr1=PCR1, pcr2=PCR2, pcr8=None, parent_role=None,
                               parent_id="i-0123456789abcdef0", debug_mode=True,
                               state_dir=tmp_path)
    payload = verify_document(attest(device.handler),
                              [LocalCA.load_or_create(tmp_path).certificate]).payload
    assert [payload["pcrs"][i] for i in (0, 1, 2)] == [bytes(48)] * 3
    assert payload["pcrs"][4] != bytes(48)


def test_foreign_chain_with_the_right_root_bytes_is_still_checked(tmp_path):
    """A document that carries our root in cabundle but was signed by someone else's
    intermediate fails on the signature link, not at the root comparison."""
    ours, theirs = LocalCA.load_or_create(tmp_path), LocalCA.create()
    doc = attest(NsmHandler(booted_bank(), theirs.signer("m"), "m"))
    cose = cbor2.loads(doc)
    payload = cbor2.loads(cose[2])
    payload["cabundle"][0] = ours.root_der()
    cose[2] = cbor2.dumps(payload)
    with pytest.raises(VerificationError, match="cabundle\\[1\\] is not signed by root"):
        verify_document(cbor2.dumps(cose), [ours.certificate])


# -- command line ----------------------------------------------------------------------

@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("NITRO_EMU_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_cli_ca_export(state, capsys):
    assert cli_main(["ca", "export"]) == 0
    pem = capsys.readouterr().out.encode()
    assert pem == (state / "state" / "ca" / "root.pem").read_bytes()
    assert cli_main(["ca", "export", "--fingerprint"]) == 0
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert capsys.readouterr().out.strip() == hashlib.sha256(der).hexdigest()


def test_cli_attest_verify(state, capsys):
    device = create_nsm_device(pcr0=PCR0, pcr1=PCR1, pcr2=PCR2, pcr8=None, parent_role=None,
                               parent_id=None, debug_mode=False)
    doc = attest(device.handler, nonce=b"\x01\x02")
    armored = state / "doc.txt"
    armored.write_bytes(b"-----BEGIN ATTESTATION DOCUMENT-----\n" + base64.b64encode(doc)
                        + b"\n-----END ATTESTATION DOCUMENT-----\n")
    assert cli_main(["attest", "verify", str(armored), "--pcr", f"0={PCR0.hex()}",
                     "--nonce", "0102"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pcrs"]["0"] == PCR0.hex() and out["nonce"] == "0102"

    assert cli_main(["attest", "verify", str(armored), "--nonce", "ff"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nonce is 0102, expected ff" in err

    assert cli_main(["attest", "verify", str(armored), "--root", "aws"]) == 1
    assert "not the pinned root" in capsys.readouterr().err
    assert cli_main(["attest", "verify", str(armored), "--pcr", "40=00"]) == 1
    assert "--pcr wants N=HEX" in capsys.readouterr().err
    assert cli_main(["attest", "verify", str(state / "missing")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_long_module_id_still_signs(recwarn):
    ca = LocalCA.create()
    module_id = "x" * 200
    handler = NsmHandler(booted_bank(), ca.signer(module_id), module_id)
    payload = verify_document(attest(handler), [ca.certificate]).payload
    assert payload["module_id"] == module_id
    assert not [w for w in recwarn if "length" in str(w.message)]
