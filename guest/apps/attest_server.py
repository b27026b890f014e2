"""An enclave application in plain CPython: serves vsock port PORT (default 5000); for each
connection it reads a hex nonce line, asks /dev/nsm for an attestation document with that
nonce (the NSM_IOCTL_RAW ioctl, CBOR request and response, as Linux's nsm driver takes
them), and replies with the document: a 4-byte big-endian length, then its bytes.

Only modules built into Debian's python3.11 or in libpython3.11-minimal are used (the
image carries nothing else); everything is imported at the top, so the guest build can
find the modules by importing this file.
"""
import array
import fcntl
import os
import socket
import struct
import sys

NSM_IOCTL_RAW = 0xC0200A00      # _IOWR(0x0A, 0, struct nsm_raw), struct nsm_raw is 32 bytes
RESPONSE_MAX = 0x3000           # NSM_RESPONSE_MAX_SIZE
USER_DATA = b"nitro-emu python"
VMADDR_CID_ANY = 0xFFFFFFFF


def cbor_head(major, value):
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError("CBOR value too large")


def cbor_encode(value):
    """The CBOR of None, bytes, str, int >= 0 and dicts of those (what NSM requests use)."""
    if value is None:
        return b"\xf6"
    if isinstance(value, bytes):
        return cbor_head(2, len(value)) + value
    if isinstance(value, str):
        data = value.encode()
        return cbor_head(3, len(data)) + data
    if isinstance(value, int):
        return cbor_head(0, value)
    if isinstance(value, dict):
        return cbor_head(5, len(value)) + b"".join(cbor_encode(k) + cbor_encode(v)
                                                   for k, v in value.items())
    raise TypeError(f"cannot encode {type(value).__name__}")


def cbor_decode(data, pos=0):
    """(value, next position) of the CBOR item at `pos` (ints, strings, arrays, maps,
    tags, simple values); ValueError on malformed input."""
    if pos >= len(data):
        raise ValueError("truncated CBOR")
    major, info = data[pos] >> 5, data[pos] & 31
    pos += 1
    if info < 24:
        arg = info
    elif info <= 27:
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise ValueError("truncated CBOR")
        arg = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    else:
        raise ValueError("indefinite or reserved CBOR length")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if pos + arg > len(data):
            raise ValueError("truncated CBOR string")
        raw = bytes(data[pos:pos + arg])
        return (raw if major == 2 else raw.decode()), pos + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = cbor_decode(data, pos)
            items.append(item)
        return items, pos
    if major == 5:
        result = {}
        for _ in range(arg):
            key, pos = cbor_decode(data, pos)
            result[key], pos = cbor_decode(data, pos)
        return result, pos
    if major == 6:
        return cbor_decode(data, pos)
    return {20: False, 21: True, 22: None}.get(arg), pos


def nsm_request(request):
    """Send one CBOR request through the NSM_IOCTL_RAW ioctl; returns the decoded reply."""
    req = array.array("B", cbor_encode(request))
    resp = array.array("B", bytes(RESPONSE_MAX))
    raw = bytearray(struct.pack("=QQQQ", req.buffer_info()[0], len(req),
                                resp.buffer_info()[0], len(resp)))
    fd = os.open("/dev/nsm", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, NSM_IOCTL_RAW, raw, True)
    finally:
        os.close(fd)
    length = struct.unpack_from("=Q", raw, 24)[0]
    if length > len(resp):
        raise ValueError("the driver reported a response longer than the buffer")
    reply, end = cbor_decode(resp.tobytes()[:length])
    if end != length or not isinstance(reply, dict):
        raise ValueError("the NSM reply is not one CBOR map")
    if "Error" in reply:
        raise ValueError(f"NSM error: {reply['Error']}")
    return reply


def attestation_document(nonce):
    reply = nsm_request({"Attestation": {"user_data": USER_DATA, "nonce": nonce,
                                         "public_key": None}})
    document = reply.get("Attestation", {}).get("document")
    if not isinstance(document, bytes):
        raise ValueError("Attestation reply without a document")
    return document


def read_line(conn, limit=4096):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk or len(data) >= limit:
            break
        data += chunk
    return data.strip()


def serve(port):
    server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    server.bind((VMADDR_CID_ANY, port))
    server.listen(16)
    print(f"attest-server: python {sys.version.split()[0]} listening on vsock port {port}",
          flush=True)
    while True:
        conn, peer = server.accept()
        with conn:
            try:
                nonce = bytes.fromhex(read_line(conn).decode())
                document = attestation_document(nonce)
                conn.sendall(struct.pack(">I", len(document)) + document)
                print(f"attest-server: {len(document)}-byte document for CID {peer[0]}, "
                      f"nonce {nonce.hex()}", flush=True)
            except (ValueError, OSError) as error:
                print(f"attest-server: request failed: {error}", flush=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
