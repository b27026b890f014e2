"""Attestation from inside the guest: attest.eif runs `nsm describe-nsm` and
`nsm attest --nonce 00112233 --user-data 68656c6c6f` through Linux's NSM driver
(/dev/nsm); the document it prints must verify against the exported local root, carry
describe-eif's PCR0-2 (zeros in debug mode), and echo the nonce and user data."""
from __future__ import annotations

import re

from eif import read_eif
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.verify import read_document, verify_document
from nitro_emu.cli import main as cli_main

from conftest import guest_image

NONCE, USER_DATA = bytes.fromhex("00112233"), b"hello"


def _document(console: str) -> bytes:
    assert "-----BEGIN ATTESTATION DOCUMENT-----" in console, console[-3000:]
    return read_document(console.encode())


def test_attest_eif_document_verifies(boot, state_dir, tmp_path, capsys):
    guest = boot("attest.eif", parent_id="i-0123456789abcdef0")
    assert guest.result.ok, (guest.result, guest.console[-3000:])
    assert guest.machine.nsm.requests_served >= 2          # DescribeNSM + Attestation
    assert re.search(r'"max_pcrs": 32', guest.console), guest.console[-3000:]
    measurements = read_eif(guest_image("attest.eif")).measurements
    root = LocalCA.load_or_create(state_dir).certificate
    result = verify_document(_document(guest.console), [root], nonce=NONCE,
                             user_data=USER_DATA,
                             expected_pcrs={0: measurements.pcr0, 1: measurements.pcr1,
                                            2: measurements.pcr2})
    assert result.payload["module_id"].startswith("i-0123456789abcdef0-enc")
    assert result.payload["module_id"] in guest.console          # DescribeNSM printed it
    # the same through the command line, with the root as `ca export` prints it
    console_file = tmp_path / "console.txt"
    console_file.write_text(guest.console)
    assert cli_main(["ca", "export"]) == 0
    root_file = tmp_path / "root.pem"
    root_file.write_text(capsys.readouterr().out)
    assert cli_main(["attest", "verify", str(console_file), "--root", str(root_file),
                     "--nonce", NONCE.hex(), "--pcr", f"0={measurements.pcr0.hex()}"]) == 0


def test_attest_eif_debug_mode_zeroes_pcr0_to_2(boot, state_dir):
    guest = boot("attest.eif", debug_mode=True)
    assert guest.result.ok, (guest.result, guest.console[-3000:])
    root = LocalCA.load_or_create(state_dir).certificate
    payload = verify_document(_document(guest.console), [root], nonce=NONCE).payload
    assert [payload["pcrs"][i] for i in (0, 1, 2)] == [bytes(48)] * 3
    assert sorted(payload["pcrs"]) == list(range(16))
