"""The x86-64 registers as GDB sees them: the target description (XML) announced to the
debugger, and reading and writing them by GDB's register number as little-endian bytes.

Features: GDB's own `org.gnu.gdb.i386.core` (general registers, rip, eflags, segment
selectors, the x87 stack and its control registers), `org.gnu.gdb.i386.sse` (xmm0-15,
mxcsr) and `org.gnu.gdb.i386.segments` (fs_base, gs_base), then the system registers in a
feature of ours (cr0, cr2, cr3, cr4, cr8, efer, k_gs_base): GDB shows them by name
(`p/x $cr3`, `info registers cr3`).
"""
from __future__ import annotations

from dataclasses import dataclass

from nitro_emu.cpu.vcpu import EFER_MSR, KERNEL_GS_BASE_MSR, Vcpu

_SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
# GDB's x87 control registers -> Unicorn's names
_X87 = {"fctrl": "fpcw", "fstat": "fpsw", "ftag": "fptag", "fiseg": "fcs", "fioff": "fip",
        "foseg": "fds", "fooff": "fdp", "fop": "fop"}
_X87_64BIT = {"fioff", "fooff"}  # the others are 16-bit in the CPU
# What sets the CPU's mode stays as the guest set it: Unicorn takes such writes without the
# checks a real CPU makes, and a mode it cannot translate in would end the emulator, not
# just the guest. (Selectors also load descriptors from guest memory, which may fault.)
_MODE_REGISTERS = frozenset(_SEGMENTS) | {"cr0", "cr3", "cr4", "efer"}
# RFLAGS bits a debugger may change: arithmetic flags, TF, IF, DF, RF, AC.
_EFLAGS_WRITABLE = 0x8D5 | 0x100 | 0x200 | 0x400 | 0x10000 | 0x40000


class RegisterError(ValueError):
    """A register number GDB cannot have, or a write the machine refuses."""


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    feature: str
    group: str | None = None


def _feature(name: str, registers: list[tuple]) -> list[Register]:
    return [Register(reg[0], reg[1], reg[2], name, *reg[3:]) for reg in registers]


CORE = "org.gnu.gdb.i386.core"
REGISTERS: tuple[Register, ...] = tuple(
    _feature(CORE,
             [(n, 64, "int64") for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi")]
             + [("rbp", 64, "data_ptr"), ("rsp", 64, "data_ptr")]
             + [(f"r{i}", 64, "int64") for i in range(8, 16)]
             + [("rip", 64, "code_ptr"), ("eflags", 32, "i386_eflags")]
             + [(s, 32, "int32") for s in _SEGMENTS]
             + [(f"st{i}", 80, "i387_ext") for i in range(8)]
             + [(n, 32, "int", "float") for n in _X87])
    + _feature("org.gnu.gdb.i386.sse",
               [(f"xmm{i}", 128, "vec128") for i in range(16)]
               + [("mxcsr", 32, "i386_mxcsr", "vector")])
    + _feature("org.gnu.gdb.i386.segments", [("fs_base", 64, "int"), ("gs_base", 64, "int")])
    + _feature("org.nitro-emu.x86.system",
               [(n, 64, "int", "system") for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer",
                                                   "k_gs_base")]))
NUMBERS = {register.name: number for number, register in enumerate(REGISTERS)}

EFLAGS_BITS = ("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), \
    ("IF", 9), ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), \
    ("VIF", 19), ("VIP", 20), ("ID", 21)
_MXCSR = ("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), \
    ("IM", 7), ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15)
_VEC128 = """    <vector id="v8bf16" type="bfloat16" count="8"/>
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v8_bfloat16" type="v8bf16"/>
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
"""


def _flags(name: str, fields: tuple[tuple[str, int], ...]) -> str:
    lines = [f'    <flags id="{name}" size="4">']
    lines += [f'      <field name="{field}" start="{bit}" end="{bit}"/>' for field, bit in fields]
    return "\n".join(lines + ["    </flags>\n"])


def target_xml() -> str:
    """The target description GDB reads with qXfer:features:read:target.xml."""
    types = {CORE: _flags("i386_eflags", EFLAGS_BITS),
             "org.gnu.gdb.i386.sse": _VEC128 + _flags("i386_mxcsr", _MXCSR)}
    parts = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             '<target version="1.0">', "  <architecture>i386:x86-64</architecture>"]
    feature = None
    for number, register in enumerate(REGISTERS):
        if register.feature != feature:
            if feature is not None:
                parts.append("  </feature>")
            feature = register.feature
            parts.append(f'  <feature name="{feature}">')
            if feature in types:
                parts.append(types[feature].rstrip("\n"))
        group = f' group="{register.group}"' if register.group else ""
        parts.append(f'    <reg name="{register.name}" bitsize="{register.bits}" '
                     f'type="{register.type}" regnum="{number}"{group}/>')
    parts += ["  </feature>", "</target>", ""]
    return "\n".join(parts)


class RegisterFile:
    """GDB's registers of one vCPU, by number, as little-endian bytes."""

    def __init__(self, vcpu: Vcpu) -> None:
        self._vcpu = vcpu

    def read(self, number: int) -> bytes:
        register = self._register(number)
        value = self._value(register.name)
        return value.to_bytes(register.bits // 8, "little")

    def read_all(self) -> bytes:
        return b"".join(self.read(number) for number in range(len(REGISTERS)))

    def write(self, number: int, data: bytes) -> None:
        register = self._register(number)
        if len(data) != register.bits // 8:
            raise RegisterError(f"{register.name} takes {register.bits // 8} bytes, "
                                f"not {len(data)}")
        value = int.from_bytes(data, "little")
        if value != self._value(register.name):
            self._store(register.name, value)

    def write_all(self, data: bytes) -> None:
        """A `G` packet: every register in order (a shorter one sets the first ones);
        only the registers whose value changes are written."""
        offset = 0
        for number, register in enumerate(REGISTERS):
            size = register.bits // 8
            if offset + size > len(data):
                break
            self.write(number, data[offset:offset + size])
            offset += size

    @staticmethod
    def _register(number: int) -> Register:
        if not 0 <= number < len(REGISTERS):
            raise RegisterError(f"no register number {number}")
        return REGISTERS[number]

    def _value(self, name: str) -> int:
        vcpu = self._vcpu
        if name.startswith("st"):
            mantissa, exponent = vcpu.read_register(self._x87_physical(int(name[2:])))
            return mantissa | exponent << 64
        if name in _X87:
            return vcpu.read_register(_X87[name])
        if name == "efer":
            return vcpu.read_msr(EFER_MSR)
        if name == "k_gs_base":
            return vcpu.read_msr(KERNEL_GS_BASE_MSR)
        value = vcpu.read_register(name)
        return value & 0xFFFFFFFF if name == "eflags" else value

    def _store(self, name: str, value: int) -> None:
        vcpu = self._vcpu
        if name in _MODE_REGISTERS:
            raise RegisterError(f"{name} sets the CPU's mode and cannot be changed by the debugger")
        if name == "eflags" and (value ^ self._value(name)) & ~_EFLAGS_WRITABLE:
            raise RegisterError("only the arithmetic flags, TF, IF, DF, RF and AC of eflags "
                                "can be changed by the debugger")
        if name.startswith("st"):
            vcpu.write_register(self._x87_physical(int(name[2:])),
                                (value & (1 << 64) - 1, value >> 64))
        elif name in _X87:
            vcpu.write_register(_X87[name], value if name in _X87_64BIT else value & 0xFFFF)
        elif name == "k_gs_base":        # (efer is a mode register: refused above)
            vcpu.write_msr(KERNEL_GS_BASE_MSR, value)
        else:
            vcpu.write_register(name, value)

    def _x87_physical(self, index: int) -> str:
        """st(i) is the register `i` places from the stack top kept in FSW bits 11-13."""
        top = (self._vcpu.read_register("fpsw") >> 11) & 7
        return f"fp{(top + index) & 7}"
