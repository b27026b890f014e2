"""A minimal GDB remote-protocol client for tests: sends packets as GDB does (with acks)
and reads replies, checking their checksums, so tests can also send what GDB never would."""
from __future__ import annotations

import socket
import time


class ProtocolError(AssertionError):
    pass


class GdbClient:
    def __init__(self, address: tuple[str, int], timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.settimeout(timeout)
        self._buffer = b""
        self.acks: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes) -> None:
        self.send_raw(b"$" + payload + b"#%02x" % (sum(payload) & 0xFF))

    def command(self, payload: bytes) -> bytes:
        """Send a packet, expect its `+`, return the reply's payload."""
        self.send(payload)
        ack = self.read_ack()
        if ack != b"+":
            raise ProtocolError(f"{payload!r} was answered {ack!r}")
        return self.reply()

    def read_ack(self) -> bytes:
        while True:
            self._fill()
            byte, self._buffer = self._buffer[:1], self._buffer[1:]
            if byte in (b"+", b"-"):
                self.acks.append(byte)
                return byte

    def reply(self) -> bytes:
        """The next packet from the stub (acknowledged with `+`)."""
        while True:
            start = self._buffer.find(b"$")
            end = self._buffer.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self._buffer) >= end + 3:
                payload = self._buffer[start + 1:end]
                checksum = int(self._buffer[end + 1:end + 3], 16)
                self._buffer = self._buffer[end + 3:]
                if checksum != sum(payload) & 0xFF:
                    raise ProtocolError(f"bad checksum on {payload!r}")
                self.send_raw(b"+")
                return payload
            self._fill()

    def pending(self, wait: float = 0.5) -> bytes:
        """Whatever arrives within `wait` seconds (for checking that nothing does)."""
        deadline = time.monotonic() + wait
        self.sock.settimeout(0.05)
        try:
            while time.monotonic() < deadline:
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                self._buffer += data
        finally:
            self.sock.settimeout(60.0)
        data, self._buffer = self._buffer, b""
        return data

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ProtocolError("the stub closed the connection")
        self._buffer += data
