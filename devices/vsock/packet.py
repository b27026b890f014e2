"""The virtio-vsock packet header (44 bytes, little-endian, packed) and its constants.

Spec: docs/spec/nsm-vsock.md section 5.2/5.3; Linux include/uapi/linux/virtio_vsock.h.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

HEADER = struct.Struct("<QQIIIHHIII")
HEADER_SIZE = HEADER.size  # 44

TYPE_STREAM = 1
TYPE_SEQPACKET = 2

OP_INVALID = 0
OP_REQUEST = 1
OP_RESPONSE = 2
OP_RST = 3
OP_SHUTDOWN = 4
OP_RW = 5
OP_CREDIT_UPDATE = 6
OP_CREDIT_REQUEST = 7

OP_NAMES = {OP_INVALID: "INVALID", OP_REQUEST: "REQUEST", OP_RESPONSE: "RESPONSE",
            OP_RST: "RST", OP_SHUTDOWN: "SHUTDOWN", OP_RW: "RW",
            OP_CREDIT_UPDATE: "CREDIT_UPDATE", OP_CREDIT_REQUEST: "CREDIT_REQUEST"}

SHUTDOWN_RCV = 1    # the sender will receive no more data
SHUTDOWN_SEND = 2   # the sender will send no more data
SHUTDOWN_BOTH = 3

SEQ_EOM = 1         # RW flag: last packet of a SEQPACKET message
SEQ_EOR = 2         # RW flag: MSG_EOR

VIRTIO_VSOCK_F_STREAM = 1 << 0
VIRTIO_VSOCK_F_SEQPACKET = 1 << 1

MAX_PKT_PAYLOAD = 64 * 1024  # VIRTIO_VSOCK_MAX_PKT_BUF_SIZE

CID_HYPERVISOR = 0
CID_LOCAL = 1
CID_HOST = 2
CID_PARENT = 3
CID_ANY = 0xFFFFFFFF
MIN_GUEST_CID = 4             # 0-3 are reserved (hypervisor, local, host, parent)
MAX_GUEST_CID = CID_ANY - 1   # 4294967295 is VMADDR_CID_ANY
PORT_ANY = 0xFFFFFFFF         # VMADDR_PORT_ANY: never a real port
MAX_PORT = PORT_ANY - 1


def check_guest_cid(cid: int) -> int:
    """`cid` if an enclave may use it as its own CID; ValueError (one line) if not."""
    if not isinstance(cid, int) or isinstance(cid, bool) \
            or not MIN_GUEST_CID <= cid <= MAX_GUEST_CID:
        raise ValueError(f"guest CID {cid!r} is not a valid enclave CID ({MIN_GUEST_CID} to "
                         f"{MAX_GUEST_CID}; 0-3 are reserved)")
    return cid


class Header(NamedTuple):
    """One decoded header; field order is the wire order."""

    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int

    def pack(self) -> bytes:
        return HEADER.pack(*self)

    def describe(self) -> str:
        op = OP_NAMES.get(self.op, str(self.op))
        return (f"{op} {self.src_cid}:{self.src_port} -> {self.dst_cid}:{self.dst_port} "
                f"type={self.type} len={self.len} flags={self.flags:#x} "
                f"buf_alloc={self.buf_alloc} fwd_cnt={self.fwd_cnt}")


def parse_header(data: bytes | bytearray | memoryview) -> Header:
    """Decode the first 44 bytes of `data` (ValueError if shorter)."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"vsock header needs {HEADER_SIZE} bytes, got {len(data)}")
    return Header._make(HEADER.unpack_from(data, 0))


def pack_header(src_cid: int, dst_cid: int, src_port: int, dst_port: int, length: int,
                type_: int, op: int, flags: int, buf_alloc: int, fwd_cnt: int) -> bytes:
    """Encode a header; every field must fit its width (struct.error otherwise)."""
    return HEADER.pack(src_cid, dst_cid, src_port, dst_port, length, type_, op, flags,
                       buf_alloc, fwd_cnt)
