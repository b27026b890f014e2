"""CRC-32 (the zlib/ISO-HDLC one) helpers: `crc32_combine` lets the builder stream the
sections first and prepend the CRC of a header it can only finish afterwards.

zlib's C library has crc32_combine but Python's zlib module does not export it; this is
the same mathematics written out: CRC(A||B) = CRC(A) * x^(8*len(B)) mod P  xor  CRC(B),
in the bit-reflected representation zlib uses.
"""
from __future__ import annotations

_POLY = 0xEDB88320  # reflected 0x04C11DB7
_X0 = 1 << 31       # the polynomial "1" in reflected order


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo P(x), both reflected 32-bit polynomials."""
    m = _X0
    product = 0
    while m:
        if a & m:
            product ^= b
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
        m >>= 1
    return product


def _build_x2n_table() -> list[int]:
    """table[k] = x^(2^k) mod P."""
    table = [0] * 32
    p = _X0 >> 1  # x^1
    for k in range(32):
        table[k] = p
        p = _multmodp(p, p)
    return table


_X2N = _build_x2n_table()


def _x8nmodp(n: int) -> int:
    """x^(8n) mod P."""
    p = _X0
    k = 3  # 8 = 2^3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC of A||B from crc1 = CRC(A), crc2 = CRC(B) and len2 = len(B) in bytes."""
    if len2 < 0:
        raise ValueError("length must not be negative")
    return _multmodp(_x8nmodp(len2), crc1) ^ crc2
