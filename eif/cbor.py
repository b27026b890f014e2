"""The small part of CBOR (RFC 8949) the signature section and COSE_Sign1 use, written so
its output is byte-identical to serde_cbor 0.11 (docs/spec/eif.md §7, test vectors §12.1).


serde encodes a Rust `Vec<u8>` as an array of unsigned integers, one per byte, not as a
byte string; `U8Array` marks such values. The decoder is strict and bounded: definite
lengths only, every length checked against the bytes left before anything is allocated,
nesting limited; any problem raises `CborError` naming the offset.
"""
from __future__ import annotations


class CborError(ValueError):
    """Malformed or unsupported CBOR; the message names the offset."""


class U8Array(bytes):
    """Bytes that serde_cbor writes as an array of uints (Rust `Vec<u8>`)."""


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 0x100:
        return bytes([major << 5 | 24, n])
    if n < 0x10000:
        return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([major << 5 | 26]) + n.to_bytes(4, "big")
    if n < 1 << 64:
        return bytes([major << 5 | 27]) + n.to_bytes(8, "big")
    raise CborError(f"integer {n} does not fit CBOR's 64-bit argument")


_UINT8 = [_head(0, i) for i in range(256)]


def encode(value: object) -> bytes:
    """CBOR of ints, str, bytes (byte string), U8Array (array of uints), bool, None,
    lists/tuples and dicts (in insertion order), with shortest-form heads."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: object, out: list[bytes]) -> None:
    if isinstance(value, U8Array):
        out.append(_head(4, len(value)))
        out.extend(_UINT8[b] for b in value)
    elif isinstance(value, bool):
        out.append(b"\xf5" if value else b"\xf4")
    elif value is None:
        out.append(b"\xf6")
    elif isinstance(value, int):
        out.append(_head(0, value) if value >= 0 else _head(1, -1 - value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(_head(2, len(data)))
        out.append(data)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out.append(_head(3, len(data)))
        out.append(data)
    elif isinstance(value, (list, tuple)):
        out.append(_head(4, len(value)))
        for item in value:
            _encode(item, out)
    elif isinstance(value, dict):
        out.append(_head(5, len(value)))
        for key, item in value.items():
            _encode(key, out)
            _encode(item, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


MAX_DEPTH = 16


class Tagged:
    """A CBOR tag (major type 6) and its content."""

    __slots__ = ("tag", "value")

    def __init__(self, tag: int, value: object) -> None:
        self.tag, self.value = tag, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tagged) and (self.tag, self.value) == (other.tag, other.value)

    def __repr__(self) -> str:
        return f"Tagged({self.tag}, {self.value!r})"


def decode(data: bytes) -> object:
    """Decode exactly one CBOR item that spans all of `data`.

    Maps become dicts (insertion order kept; duplicate keys are an error), byte strings
    bytes, text strings str, tags `Tagged`. Indefinite lengths, floats and simple values
    other than false/true/null are rejected."""
    data = bytes(data)
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise CborError(f"{len(data) - end} trailing bytes after the CBOR item at offset {end}")
    return value


def _argument(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major, argument, next position) of the item head at `pos`."""
    if pos >= len(data):
        raise CborError(f"truncated: item expected at offset {pos}")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info > 27:
        raise CborError(f"unsupported additional information {info} at offset {pos}"
                        + (" (indefinite length)" if info == 31 else ""))
    width = 1 << (info - 24)
    if pos + 1 + width > len(data):
        raise CborError(f"truncated: {width}-byte argument at offset {pos}")
    return major, int.from_bytes(data[pos + 1:pos + 1 + width], "big"), pos + 1 + width


def _decode(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    if depth > MAX_DEPTH:
        raise CborError(f"nesting deeper than {MAX_DEPTH} at offset {pos}")
    start = pos
    major, arg, pos = _argument(data, pos)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if arg > len(data) - pos:
            raise CborError(f"string of {arg} bytes at offset {start} runs past the end")
        raw = data[pos:pos + arg]
        if major == 2:
            return raw, pos + arg
        try:
            return raw.decode("utf-8"), pos + arg
        except UnicodeDecodeError:
            raise CborError(f"text string at offset {start} is not UTF-8") from None
    if major == 4:
        if arg > len(data) - pos:  # every item takes at least one byte
            raise CborError(f"array of {arg} items at offset {start} runs past the end")
        items = []
        for _ in range(arg):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        if arg > (len(data) - pos) // 2:
            raise CborError(f"map of {arg} pairs at offset {start} runs past the end")
        result: dict = {}
        for _ in range(arg):
            key_at = pos
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, (int, str, bytes)):
                raise CborError(f"unsupported map key type at offset {key_at}")
            if key in result:
                raise CborError(f"duplicate map key {key!r} at offset {key_at}")
            result[key], pos = _decode(data, pos, depth + 1)
        return result, pos
    if major == 6:
        value, pos = _decode(data, pos, depth + 1)
        return Tagged(arg, value), pos
    # major 7
    simple = {20: False, 21: True, 22: None}
    if data[start] & 0x1F in simple and pos == start + 1:
        return simple[data[start] & 0x1F], pos
    raise CborError(f"unsupported simple value or float at offset {start}")


def as_u8_array(value: object, what: str) -> bytes:
    """The bytes of a serde `Vec<u8>` (array of uints 0..255); CborError otherwise."""
    if not isinstance(value, list):
        raise CborError(f"{what} is not an array of bytes")
    try:
        return bytes(value)
    except (TypeError, ValueError):
        raise CborError(f"{what} holds an item that is not an integer 0..255") from None
