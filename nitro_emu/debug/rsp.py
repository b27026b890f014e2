"""The framing of GDB's remote serial protocol: `$payload#xx` packets with a modulo-256
checksum, `+`/`-` acknowledgements, the interrupt byte (Ctrl-C, 0x03), `}` escapes in
binary data, and hex.

The debugger connection is host input and is treated as untrusted: the decoder never
raises on what it is fed. Noise between packets is skipped, a packet with a bad checksum
or one longer than `MAX_PACKET` comes out as `BadPacket` (the stub answers `-`), and the
helpers below raise ValueError, which the stub turns into an error reply.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_PACKET = 0x4000           # payload bytes; announced to GDB as PacketSize
INTERRUPT = 0x03
_ESCAPE = 0x7D                # '}'
_SPECIAL = frozenset(b"#$}*")  # must be escaped in binary data ('*' is run-length)
_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True)
class Packet:
    payload: bytes


@dataclass(frozen=True)
class BadPacket:
    reason: str


@dataclass(frozen=True)
class Ack:
    ok: bool          # '+' or '-'


@dataclass(frozen=True)
class Interrupt:
    pass


Event = Packet | BadPacket | Ack | Interrupt


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def frame(payload: bytes) -> bytes:
    """`$payload#xx`. The payload must be text without `$`, `#` or `*` (binary data goes
    through `escape` first)."""
    if any(byte in b"$#*" for byte in payload):
        raise ValueError(f"unescaped special character in reply {payload[:40]!r}")
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape(data: bytes) -> bytes:
    """Binary data for a packet: `#`, `$`, `}` and `*` become `}` and the byte XOR 0x20."""
    out = bytearray()
    for byte in data:
        if byte in _SPECIAL:
            out += bytes((_ESCAPE, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """The inverse of `escape`; a `}` with nothing after it is a ValueError."""
    out = bytearray()
    iterator = iter(data)
    for byte in iterator:
        if byte == _ESCAPE:
            following = next(iterator, None)
            if following is None:
                raise ValueError("binary data ends in an escape character")
            out.append(following ^ 0x20)
        else:
            out.append(byte)
    return bytes(out)


def to_hex(data: bytes) -> bytes:
    return data.hex().encode()


def from_hex(text: bytes) -> bytes:
    if len(text) % 2 or not _HEX.issuperset(text):
        raise ValueError(f"not hex data: {text[:40]!r}")
    return bytes.fromhex(text.decode())


def hex_number(text: bytes, bits: int = 64) -> int:
    """A hex number of at most `bits` bits (GDB sends addresses and lengths this way)."""
    if not text or len(text) > bits // 4 or not _HEX.issuperset(text):
        raise ValueError(f"not a hex number: {text[:40]!r}")
    return int(text, 16)


class PacketDecoder:
    """Turns the bytes of the connection, in whatever pieces they arrive, into events."""

    def __init__(self) -> None:
        self._payload: bytearray | None = None   # inside a packet
        self._checksum: bytearray | None = None  # after '#'
        self._too_long = False

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for byte in data:
            event = self._byte(byte)
            if event is not None:
                events.append(event)
        return events

    def _byte(self, byte: int) -> Event | None:
        if self._checksum is not None:
            self._checksum.append(byte)
            if len(self._checksum) < 2:
                return None
            return self._finish()
        if self._payload is not None:
            if byte == ord("#"):
                self._checksum = bytearray()
            elif byte == ord("$"):                # a new start: the old packet was cut off
                self._payload = bytearray()
                self._too_long = False
            elif len(self._payload) >= MAX_PACKET:
                self._too_long = True
            else:
                self._payload.append(byte)
            return None
        if byte == ord("$"):
            self._payload = bytearray()
            self._too_long = False
            return None
        if byte in b"+-":
            return Ack(byte == ord("+"))
        if byte == INTERRUPT:
            return Interrupt()
        return None                                # noise between packets

    def _finish(self) -> Event:
        payload, given = bytes(self._payload or b""), bytes(self._checksum or b"")
        too_long = self._too_long
        self._payload = self._checksum = None
        self._too_long = False
        if too_long:
            return BadPacket(f"packet longer than {MAX_PACKET} bytes")
        if not _HEX.issuperset(given) or int(given, 16) != checksum(payload):
            return BadPacket("bad checksum")
        return Packet(payload)
