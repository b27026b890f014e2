"""Attestation from inside the guest: attest.eif runs `nsm describe-nsm` and
`nsm attest --nonce 00112233 --user-data 68656c6c6f` through Linux's NSM driver
(/dev/nsm); the document it prints must verify against the exported local root, carry
describe-eif's PCR0-2 (zeros in debug mode), and echo the nonce and user data."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from eif import read_eif
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.verify import read_document, verify_document
from nitro_emu.cli import main as cli_main

from support.images import guest_image
import pytest

pytestmark = pytest.mark.guest  # boots real guest images

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


def _eif_with_command(source: Path, command: str, work: Path) -> Path:
    """`source` with an extra ramdisk whose /cmd (`sh -c command`) replaces the image's
    (a later initramfs archive overwrites a file of the same name); PCRs change, which is
    fine for these checks."""
    from eif.builder import build_eif
    from eif import cpio

    image = read_eif(source)
    raw = source.read_bytes()
    (work / "kernel").write_bytes(image.read_kernel())
    ramdisks = []
    for i, section in enumerate(image.ramdisk_sections):
        ramdisks.append(work / f"ramdisk{i}")
        ramdisks[-1].write_bytes(raw[section.offset:section.offset + section.size])
    # /cmd holds one argv element per line, so the script goes on one line
    script = "; ".join(line for line in command.splitlines() if line.strip())
    cmd = "".join(arg + "\n" for arg in ("sh", "-c", script)).encode()
    (work / "cmd.cpio").write_bytes(cpio.newc_archive([cpio.file("cmd", cmd)]))
    output = work / "custom.eif"
    build_eif(output, kernel=work / "kernel", cmdline=image.cmdline,
              ramdisks=[*ramdisks, work / "cmd.cpio"])
    return output


PCR_SCRIPT = """
echo step1; nsm extend-pcr 16 010203
echo step2; nsm describe-pcr 16
echo step3; nsm lock-pcr 16 && echo step3-ok
echo step4; nsm extend-pcr 16 00; echo "step4-status=$?"
echo step5; nsm lock-pcr 3; echo "step5-status=$?"
echo step6; nsm lock-pcrs 33; echo "step6-status=$?"
echo step7; nsm lock-pcrs 20 && echo step7-ok
echo step8; nsm describe-nsm
echo step9; echo "rng=$(cat /sys/class/misc/hw_random/rng_current)"
echo "hwrng-bytes=$(head -c 64 /dev/hwrng | wc -c)"
echo done-marker
"""


def test_pcr_extend_and_lock_through_the_guest_tool(boot, tmp_path):
    eif = _eif_with_command(guest_image("attest.eif"), PCR_SCRIPT, tmp_path)
    guest = boot(eif)
    console = guest.console.replace("\r", "")
    assert "done-marker" in console, console[-3000:]
    expected = hashlib.sha384(bytes(48) + b"\x01\x02\x03").hexdigest()
    step = lambda n: console.split(f"step{n}\n", 1)[1].split(f"step{n + 1}\n", 1)[0]
    assert expected in step(1)                                   # the new value
    assert expected in step(2) and '"lock": false' in step(2)
    assert "step3-ok" in step(3)
    assert "ReadOnlyIndex" in step(4) and "step4-status=2" in step(4)
    assert "ReadOnlyIndex" in step(5) and "step5-status=2" in step(5)
    assert "InvalidIndex" in step(6) and "step6-status=2" in step(6)
    assert "step7-ok" in step(7)
    locked = re.search(r'"locked_pcrs": \[([^\]]*)\]', step(8))
    assert locked and [int(x) for x in locked.group(1).split(",")] == list(range(20))
    assert "rng=nsm-hwrng" in console and "hwrng-bytes=64" in console
