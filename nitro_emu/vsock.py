"""Reach a guest port of a running enclave from host code, by CID, like AF_VSOCK would:

    from nitro_emu.vsock import connect
    with connect(16, 5000) as sock:      # the enclave with CID 16, its port 5000
        sock.sendall(b"ping")

Each enclave that `run-enclave` started serves Firecracker's hybrid vsock on a Unix
socket (found through its record: the caller need not know where); this module speaks
that protocol (`CONNECT <port>` / `OK <port>`). A CID that no enclave of this user has
goes to the host kernel's AF_VSOCK where there is one (a real Nitro parent, a VM).
"""
from __future__ import annotations

import errno
import socket

HANDSHAKE_LIMIT = 64


def connect(cid: int, port: int, timeout: float | None = None, *,
            store=None) -> socket.socket:
    """A connected stream socket to guest port `port` of the enclave with CID `cid`.

    `timeout` (seconds) bounds the connection and stays set on the socket, as
    `socket.create_connection` does. ConnectionRefusedError when the guest does not
    listen on `port`; OSError(EHOSTUNREACH) when no enclave has the CID and the host has
    no AF_VSOCK route to it."""
    from nitro_emu.enclaves.store import EnclaveStore

    if not 0 <= port <= 0xFFFFFFFF or not 0 <= cid <= 0xFFFFFFFF:
        raise ValueError(f"vsock address ({cid}, {port}) is out of range")
    store = store if store is not None else EnclaveStore()
    record = next((r for r in store.live() if r.cid == cid), None)
    if record is None:
        return _host_vsock(cid, port, timeout, store)
    return _hybrid(record.vsock_uds, port, timeout, f"enclave {record.name} (CID {cid})")


def _hybrid(path: str, port: int, timeout: float | None, what: str) -> socket.socket:
    from devices.vsock.unix_address import address as unix_address

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with unix_address(path) as address:
            sock.connect(address)
        sock.sendall(f"CONNECT {port}\n".encode())
        line = bytearray()
        while not line.endswith(b"\n"):       # byte by byte: data may follow the line
            try:
                byte = sock.recv(1)
            except ConnectionResetError:
                byte = b""
            if not byte or len(line) >= HANDSHAKE_LIMIT:
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED, f"{what}: nothing listens on guest port {port}")
            line += byte
        if not line.startswith(b"OK "):
            raise ConnectionRefusedError(errno.ECONNREFUSED,
                                         f"{what}: unexpected answer {bytes(line)!r}")
        return sock
    except BaseException:
        sock.close()
        raise


def _host_vsock(cid: int, port: int, timeout: float | None, store) -> socket.socket:
    unreachable = f"no enclave with CID {cid} is running (state: {store.root})"
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError(errno.EHOSTUNREACH, unreachable)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise OSError(errno.EHOSTUNREACH, f"{unreachable}, and the host has no AF_VSOCK "
                                          f"({error.strerror or error})") from None
    try:
        sock.settimeout(timeout)
        sock.connect((cid, port))
        return sock
    except OSError as error:
        sock.close()
        if isinstance(error, ConnectionRefusedError):
            raise
        raise OSError(error.errno or errno.EHOSTUNREACH,
                      f"{unreachable}; host AF_VSOCK: {error.strerror or error}") from None
