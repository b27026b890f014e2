"""The guest's `nsm` tool against the emulator's own NSM request handler.

The tool is compiled from guest/programs/nsm.c with NSM_HOST_TRANSPORT, which swaps only
the /dev/nsm ioctl for a pipe pair; its CBOR encoder, decoder and output are the ones in
the image. Checks the exact request bytes (docs/spec/nsm-vsock.md 2.11) and the printed results.
"""
import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
import threading

import cbor2
import pytest

from devices.nsm.handler import NsmHandler
from devices.nsm.pcr import PcrBank
from guest.env import GUEST_DIR
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.verify import verify_document
from eif.pcr import pcr_from_digest

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    out = tmp_path_factory.mktemp("nsm") / "nsm"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
                    "-DNSM_HOST_TRANSPORT", "-o", str(out), str(GUEST_DIR / "programs/nsm.c")],
                   check=True)
    return out


@pytest.fixture(scope="module")
def ca():
    return LocalCA.create()


def make_handler(ca) -> NsmHandler:
    bank = PcrBank()
    bank.set_initial(0, pcr_from_digest(b"image"))
    bank.lock_range(16)
    return NsmHandler(bank, ca.signer(MODULE_ID), MODULE_ID)


def run(tool, handler, *args):
    """Run the tool; answer each request with `handler`. Returns (result, requests)."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    requests = []

    def serve():
        with os.fdopen(req_r, "rb") as rf, os.fdopen(resp_w, "wb") as wf:
            while head := rf.read(4):
                data = rf.read(struct.unpack("<I", head)[0])
                requests.append(data)
                answer = handler.handle(data)
                wf.write(struct.pack("<I", len(answer)) + answer)
                wf.flush()

    t = threading.Thread(target=serve)
    t.start()
    try:
        proc = subprocess.run([str(tool), *args], capture_output=True, text=True,
                              pass_fds=(req_w, resp_r), timeout=60,
                              env={**os.environ, "NSM_REQUEST_FD": str(req_w),
                                   "NSM_RESPONSE_FD": str(resp_r)})
    finally:
        os.close(req_w)
        os.close(resp_r)
        t.join()
    return proc, requests


def test_describe_nsm(tool, ca):
    r, reqs = run(tool, make_handler(ca), "describe-nsm")
    assert r.returncode == 0, r.stderr
    assert reqs == [bytes.fromhex("6b44657363726962654e534d")]
    assert f'"module_id": "{MODULE_ID}"' in r.stdout
    assert '"max_pcrs": 32' in r.stdout and '"digest": "SHA384"' in r.stdout
    assert '"locked_pcrs": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]' in r.stdout


def test_pcr_commands_and_exact_requests(tool, ca):
    h = make_handler(ca)
    r, reqs = run(tool, h, "describe-pcr", "16")
    assert reqs == [bytes.fromhex("a16b4465736372696265504352a165696e64657810")]
    assert "\"lock\": false" in r.stdout and "h'" + "00" * 48 + "'" in r.stdout
    r, reqs = run(tool, h, "extend-pcr", "16", "010203")
    assert reqs == [bytes.fromhex("a169457874656e64504352a265696e646578106464617461430102" "03")]
    assert hashlib.sha384(bytes(48) + b"\1\2\3").hexdigest() in r.stdout
    r, reqs = run(tool, h, "lock-pcr", "16")
    assert r.returncode == 0 and r.stdout == "locked\n"
    r, _ = run(tool, h, "extend-pcr", "16", "00")
    assert r.returncode == 2 and "NSM error: ReadOnlyIndex" in r.stderr
    r, reqs = run(tool, h, "lock-pcrs", "32")
    assert reqs == [bytes.fromhex("a1684c6f636b50435273a16572616e67651820")]
    assert r.returncode == 0
    r, _ = run(tool, h, "describe-pcr", "99")
    assert r.returncode == 2 and "InvalidIndex" in r.stderr


def test_get_random_loops_until_enough(tool, ca):
    r, reqs = run(tool, make_handler(ca), "get-random", "600")
    assert r.returncode == 0
    assert re.fullmatch(r"[0-9a-f]{1200}\n", r.stdout)
    assert reqs == [bytes.fromhex("6947657452616e646f6d")] * 3  # 256 bytes per answer


def test_attest_prints_a_verifiable_document(tool, ca):
    r, reqs = run(tool, make_handler(ca), "attest", "--nonce", "00112233",
                  "--user-data", "68656c6c6f")
    assert r.returncode == 0, r.stderr
    assert cbor2.loads(reqs[0]) == {"Attestation": {
        "user_data": b"hello", "nonce": bytes.fromhex("00112233"), "public_key": None}}
    lines = r.stdout.splitlines()
    assert lines[0] == "-----BEGIN ATTESTATION DOCUMENT-----"
    assert lines[-1] == "-----END ATTESTATION DOCUMENT-----"
    assert all(len(line) <= 64 for line in lines[1:-1])
    document = base64.b64decode("".join(lines[1:-1]), validate=True)
    result = verify_document(document, [ca.certificate], nonce=bytes.fromhex("00112233"),
                             user_data=b"hello")
    assert result is not None


def test_attest_all_null_request_bytes(tool, ca):
    _, reqs = run(tool, make_handler(ca), "attest")
    assert reqs == [bytes.fromhex(
        "a16b4174746573746174696f6ea369757365725f64617461f6656e6f6e6365f6"
        "6a7075626c69635f6b6579f6")]


@pytest.mark.parametrize("args", [[], ["bogus"], ["describe-pcr"], ["describe-pcr", "x"],
                                  ["describe-pcr", "-1"], ["extend-pcr", "1", "abc"],
                                  ["extend-pcr", "1", "zz"], ["attest", "--nonce"],
                                  ["attest", "--what", "00"], ["get-random", "99999999999"]])
def test_usage_errors_exit_64_without_a_request(tool, ca, args):
    r, reqs = run(tool, make_handler(ca), *args)
    assert r.returncode == 64 and reqs == []
