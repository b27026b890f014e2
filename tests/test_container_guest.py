"""build-enclave's EIFs booted on the real Linux guest: the application sees exactly the
flattened image (listed in the guest with busybox), from a docker-archive and from an OCI
layout made by the test; and the CPython image (guest build `python`) serves a published
vsock port and returns an attestation document that the verifier accepts against the
EIF's PCRs and the nonce sent."""
from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from support.images import guest_image
from support.container_images import (BUSYBOX, OTHER_INODE, SAME_INODE, expected_tree,
                              sample_image)
from devices.vsock import VsockConfig
from eif import read_eif
from guest.oci import write_docker_archive, write_oci_layout
from guest.python_image import PORT, READY_LINE
from nitro_emu import Machine
from nitro_emu.attestation import verify_document
from nitro_emu.container.build import build_enclave
from nitro_emu.container.enclave_blobs import load_blobs
from nitro_emu.container.reference import parse_reference
from test_vsock_guest import run_with, wait_for

pytestmark = pytest.mark.guest
ROOT = Path(__file__).resolve().parent.parent


def guest_listing(console: str) -> dict[str, list[str]]:
    """The guest's `ENTRY path|mode|uid|gid|size|inode|major|minor|extra` lines."""
    entries = {}
    for line in console.splitlines():
        line = line.rstrip("\r")
        if line.startswith("ENTRY "):
            fields = line[len("ENTRY "):].split("|")
            entries[fields[0]] = fields[1:]
    return entries


@pytest.mark.parametrize("transport", ["docker-archive", "oci"])
def test_guest_sees_exactly_the_flattened_image(tmp_path, state_dir, transport):
    busybox = BUSYBOX.read_bytes()
    spec = sample_image(busybox)
    if transport == "oci":
        write_oci_layout(tmp_path / "layout", spec, "test")
        uri = f"oci:{tmp_path / 'layout'}:test"
    else:
        write_docker_archive(tmp_path / "image.tar", spec, ["listing:latest"])
        uri = f"docker-archive:{tmp_path / 'image.tar'}"
    blobs = load_blobs(str(guest_image("blobs-tiny")))
    build_enclave(parse_reference(uri), str(tmp_path / "app.eif"), blobs)
    machine = Machine(tmp_path / "app.eif", guest_cid=16, console=io.BytesIO(),
                      state_dir=state_dir)
    try:
        result = machine.run(timeout=300)
        console = machine.console_output.decode("utf-8", "replace")
    finally:
        machine.close()
    assert "LISTING-DONE" in console, console[-3000:]
    assert result.ok, result
    seen = guest_listing(console)
    want = expected_tree(busybox)
    assert sorted(seen) == sorted(want)
    for path, (mode, uid, gid, size, extra, rdev) in want.items():
        g_mode, g_uid, g_gid, g_size, _, g_major, g_minor, g_extra = seen[path]
        assert (int(g_mode, 16), int(g_uid), int(g_gid)) == (mode, uid, gid), path
        if size is not None:
            assert int(g_size) == size, path
        if extra is not None:
            assert g_extra == extra, path
        if rdev is not None:
            assert (int(g_major, 16), int(g_minor, 16)) == rdev, path
    for a, b in SAME_INODE:
        assert seen[a][4] == seen[b][4], (a, b)
    for a, b in OTHER_INODE:
        assert seen[a][4] != seen[b][4], (a, b)


def ca_root(state_dir: Path) -> x509.Certificate:
    """The local CA's root as a user gets it: `python -m nitro_emu ca export`."""
    r = subprocess.run([sys.executable, "-m", "nitro_emu", "ca", "export"], cwd=ROOT,
                       capture_output=True, check=True,
                       env={**os.environ, "NITRO_EMU_STATE_DIR": str(state_dir)})
    return x509.load_pem_x509_certificate(r.stdout)


def fetch_document(address, nonce: bytes) -> bytes:
    with socket.create_connection(address, timeout=120) as conn:
        conn.sendall(nonce.hex().encode() + b"\n")
        header = conn.recv(4, socket.MSG_WAITALL)
        (length,) = struct.unpack(">I", header)
        document = b""
        while len(document) < length:
            chunk = conn.recv(length - len(document))
            assert chunk, "the enclave closed the connection early"
            document += chunk
    return document


def test_python_enclave_serves_vsock_and_attests(state_dir):
    eif = guest_image("python.eif")
    pcrs = read_eif(str(eif)).measurements
    root = ca_root(state_dir)
    config = VsockConfig()
    config.add_publish(f"127.0.0.1:0:{PORT}")
    machine = Machine(eif, guest_cid=16, console=io.BytesIO(), state_dir=state_dir,
                      vsock=config)
    nonces = [os.urandom(32), b"\x00\x11\x22\x33"]

    def client():
        wait_for(machine, READY_LINE.encode(), timeout=600)
        address = machine.vsock.muxer.published[0][1]
        return [fetch_document(address, nonce) for nonce in nonces]

    try:
        _, documents = run_with(machine, client, timeout=900)
        console = machine.console_output.decode("utf-8", "replace")
    finally:
        machine.close()
    assert "Could not find platform" not in console
    for nonce, document in zip(nonces, documents):
        verified = verify_document(document, [root],
                                   expected_pcrs={0: pcrs.pcr0, 1: pcrs.pcr1, 2: pcrs.pcr2},
                                   nonce=nonce, user_data=b"nitro-emu python")
        assert verified.payload["nonce"] == nonce
        assert verified.payload["user_data"] == b"nitro-emu python"
    # printed after the reply was sent: certain for the first request only
    assert f"nonce {nonces[0].hex()}" in console
