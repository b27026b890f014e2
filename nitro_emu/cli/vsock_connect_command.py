"""`vsock-connect CID PORT`: stdin/stdout to guest port PORT of the enclave with CID CID,
like `socat - VSOCK-CONNECT:CID:PORT` (see nitro_emu.vsock). When stdin ends, the
sending side is shut down and the command waits for the guest to finish; it exits when
the guest closes the connection."""
from __future__ import annotations

import os
import socket
import sys
import threading

from nitro_emu.cli.enclave_commands import NitroCliParser
from nitro_emu.enclaves.errors import NitroCliError
from nitro_emu.enclaves.spec import U32_MAX, parse_unsigned

CHUNK = 1 << 16


def main(argv: list[str]) -> int:
    from nitro_emu.vsock import connect

    parser = NitroCliParser("vsock-connect", "Connect stdin/stdout to a guest's vsock port.")
    parser.add_argument("cid", metavar="CID", help="the enclave's CID")
    parser.add_argument("port", metavar="PORT", help="the guest's vsock port")
    args = parser.parse_args(argv[1:])
    cid = parse_unsigned(args.cid, "CID", U32_MAX)
    port = parse_unsigned(args.port, "PORT", U32_MAX)
    try:
        sock = connect(cid, port, timeout=30.0)
    except OSError as error:
        raise NitroCliError(11, f"Cannot connect to vsock {cid}:{port}: "
                                f"{error.strerror or error}.") from None
    sock.settimeout(None)
    with sock:
        bridge(sock, sys.stdin.fileno(), sys.stdout.fileno())
    return 0


def bridge(sock: socket.socket, in_fd: int, out_fd: int) -> None:
    """Copy in_fd -> sock (on a thread) and sock -> out_fd until the peer closes."""
    def send() -> None:
        try:
            while data := os.read(in_fd, CHUNK):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=send, daemon=True, name="stdin-to-vsock").start()
    while True:
        try:
            data = sock.recv(CHUNK)
        except ConnectionResetError:
            return
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view):]
