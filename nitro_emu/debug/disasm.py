"""Guest instructions as text (capstone), for trace lines and post-mortem reports."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import capstone

ReadMemory = Callable[[int, int], bytes]
MAX_INSTRUCTION = 15
_BACKWARD_SCAN = 48   # bytes before an address tried as starting points when no symbol helps


@lru_cache(maxsize=1)
def _capstone() -> capstone.Cs:
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


@dataclass(frozen=True)
class Instruction:
    address: int
    code: bytes
    text: str


def decode(code: bytes, address: int) -> Instruction | None:
    """The first instruction in `code`, or None when the bytes do not decode."""
    for insn in _capstone().disasm(code, address, 1):
        return Instruction(address, bytes(insn.bytes), f"{insn.mnemonic} {insn.op_str}".strip())
    return None


def instruction_at(read: ReadMemory, address: int) -> str:
    """The instruction at a guest virtual address as text, or why there is none."""
    code = read(address, MAX_INSTRUCTION)
    if not code:
        return "(not readable)"
    insn = decode(code, address)
    return insn.text if insn is not None else f"(bad bytes {code[:8].hex()})"


def _run(read: ReadMemory, start: int, stop: int) -> list[Instruction] | None:
    """Instructions decoded linearly from `start`; None unless one starts at `stop`."""
    code = read(start, stop - start + MAX_INSTRUCTION)
    out = []
    for insn in _capstone().disasm(code, start):
        if insn.address > stop:
            return None
        out.append(Instruction(insn.address, bytes(insn.bytes),
                               f"{insn.mnemonic} {insn.op_str}".strip()))
        if insn.address == stop:
            return out
    return None


def around(read: ReadMemory, address: int, before: int = 6, after: int = 4,
           function_start: int | None = None) -> tuple[list[Instruction], bool]:
    """The instructions before `address`, the one at it, and those after it; and whether
    the ones before are certain. x86 cannot be decoded backwards, so they are decoded
    from the start of the enclosing function when a symbol gives it, otherwise from the
    starting point nearby whose decoding lands on `address` (marked uncertain)."""
    leading: list[Instruction] | None = None
    certain = False
    if function_start is not None and 0 <= address - function_start <= 0x4000:
        leading = _run(read, function_start, address)
        certain = leading is not None
    if leading is None:
        for distance in range(_BACKWARD_SCAN, 0, -1):
            leading = _run(read, address - distance, address)
            if leading is not None and len(leading) > before:
                break
    if not leading:
        insn = decode(read(address, MAX_INSTRUCTION), address)
        leading = [insn] if insn is not None else []
    following: list[Instruction] = []
    next_address = leading[-1].address + len(leading[-1].code) if leading else address
    code = read(next_address, after * MAX_INSTRUCTION)
    for insn in _capstone().disasm(code, next_address, after):
        following.append(Instruction(insn.address, bytes(insn.bytes),
                                     f"{insn.mnemonic} {insn.op_str}".strip()))
    return leading[-(before + 1):] + following, certain
