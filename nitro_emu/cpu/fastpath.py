"""Native hooks for SYSCALL, exceptions and CPUID (fastpath.c), built with the host's C
compiler.

A Python hook costs microseconds per call (ctypes callback, attribute lookups, ctypes
field access), the same order as the guest work of a system call or page fault, so
those two events dominate a guest's process start-up and system-call-heavy code. The C
hooks apply the same rules as the Python ones (vcpu.py, delivery.py) to the common case
and call back into Python for everything else, so behaviour does not depend on which
path ran.

The shared object is compiled once per source (well under a second) into
~/.cache/nitro-emu/native, by `python -m nitro_emu.cpu.fastpath` at set-up or else on
first use. When it cannot be built or loaded (no C compiler, read-only cache) or
NITRO_EMU_NATIVE=0, the machine uses the Python hooks: the same behaviour, slower.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

import unicorn
from unicorn import x86_const as x86

from nitro_emu.cpu.internals import CpuInternals, library_function

log = logging.getLogger("nitro_emu.cpu")

SOURCE = Path(__file__).with_name("fastpath.c")
CFLAGS = ("-O2", "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Werror")
DISABLE_VARIABLE = "NITRO_EMU_NATIVE"

_VOID_CALLBACK = ctypes.CFUNCTYPE(None)


class CpuidEntry(ctypes.Structure):
    """`struct cpuid_entry` of fastpath.c."""

    _fields_ = [(name, ctypes.c_uint32) for name in
                ("leaf", "subleaf", "any_subleaf", "eax", "ebx", "ecx", "edx")]


class FastpathState(ctypes.Structure):
    """`struct fastpath` of fastpath.c, field for field."""

    _fields_ = [
        ("cpu", ctypes.c_void_p), ("env", ctypes.c_void_p),
        ("regs", ctypes.c_void_p), ("eip", ctypes.c_void_p), ("eflags", ctypes.c_void_p),
        ("cr", ctypes.c_void_p), ("hflags", ctypes.c_void_p), ("cc_op", ctypes.c_void_p),
        ("segs", ctypes.c_void_p), ("ldt", ctypes.c_void_p), ("tr", ctypes.c_void_p),
        ("gdt", ctypes.c_void_p), ("idt", ctypes.c_void_p),
        ("star", ctypes.c_void_p), ("lstar", ctypes.c_void_p), ("fmask", ctypes.c_void_p),
        ("efer", ctypes.c_void_p),
        ("exception_index", ctypes.c_void_p), ("exception_is_int", ctypes.c_void_p),
        ("old_exception", ctypes.c_void_p),
        ("ram", ctypes.c_void_p), ("ram_size", ctypes.c_uint64),
        ("rsvd_high", ctypes.c_uint64),
        ("code64_flags", ctypes.c_uint32), ("data_flags", ctypes.c_uint32),
        ("read_eflags", ctypes.c_void_p), ("write_eflags", ctypes.c_void_p),
        ("do_interrupt", ctypes.c_void_p), ("do_hardware_interrupt", ctypes.c_void_p),
        ("slow_exception", _VOID_CALLBACK), ("slow_syscall", _VOID_CALLBACK),
        ("cpuid", ctypes.POINTER(CpuidEntry)), ("cpuid_count", ctypes.c_uint64),
        ("all_to_python", ctypes.c_uint64),
        ("exceptions", ctypes.c_uint64), ("syscalls", ctypes.c_uint64),
        ("slow_exceptions", ctypes.c_uint64),
    ]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nitro-emu" / "native"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(compiler: str | None = None) -> Path:
    """Compile fastpath.c into the cache, once per source, flags and Unicorn version (no
    compiler run when it is there); returns the shared object's path. Raises OSError or
    CalledProcessError when it cannot be built."""
    key = hashlib.sha256(SOURCE.read_bytes() + b"\0" + " ".join(CFLAGS).encode() + b"\0" +
                         unicorn.__version__.encode()).hexdigest()[:16]
    target = _cache_dir() / f"fastpath-{key}.so"
    if target.is_file():
        return target
    compiler = compiler or _compiler()
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(descriptor)
    try:
        subprocess.run([compiler, *CFLAGS, "-o", temporary, str(SOURCE)],
                       capture_output=True, check=True)
        os.replace(temporary, target)  # atomic: concurrent builders agree on the result
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def load_library() -> ctypes.CDLL | None:
    """The compiled hooks, or None if they are disabled (NITRO_EMU_NATIVE=0) or not
    available (the reason is logged)."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return None
    return _compiled_library()


@lru_cache(maxsize=1)
def _compiled_library() -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(str(build()))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        log.info("native CPU hooks unavailable (%s%s); using the Python hooks", error,
                 f": {detail.decode(errors='replace').strip()}" if detail else "")
        return None
    layout = (ctypes.c_size_t * 3)()
    library.nitro_layout(layout)
    expected = (ctypes.sizeof(FastpathState), FastpathState.cpuid_count.offset,
                ctypes.sizeof(CpuidEntry))
    if tuple(layout) != expected:  # the two declarations of the structures disagree
        raise RuntimeError(f"fastpath.c and fastpath.py disagree on the state layout: "
                           f"C {tuple(layout)}, ctypes {expected}")
    library.nitro_translate.restype = ctypes.c_int
    library.nitro_translate.argtypes = [ctypes.POINTER(FastpathState), ctypes.c_uint64,
                                        ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
    library.nitro_deliver_interrupt.restype = ctypes.c_int
    library.nitro_deliver_interrupt.argtypes = [ctypes.POINTER(FastpathState), ctypes.c_int]
    library.nitro_install.restype = ctypes.c_int
    library.nitro_install.argtypes = [
        ctypes.POINTER(FastpathState), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)]
    return library


class NativeHooks:
    """The C hooks registered on one vCPU. `slow_exception()` and `slow_syscall()` are the
    Python paths for the cases the C code hands back; CPUID is answered from
    `cpuid_table`, rows (leaf, subleaf, any_subleaf, eax, ebx, ecx, edx)."""

    def __init__(self, library: ctypes.CDLL, internals: CpuInternals, ram_address: int,
                 ram_size: int, rsvd_high: int, code64_flags: int, data_flags: int,
                 slow_exception: Callable[[], None], slow_syscall: Callable[[], None],
                 cpuid_table: list[tuple[int, ...]]) -> None:
        address = ctypes.addressof
        tables = internals.tables
        self._callbacks = (_VOID_CALLBACK(slow_exception), _VOID_CALLBACK(slow_syscall))
        self._cpuid = (CpuidEntry * len(cpuid_table))(*(CpuidEntry(*row) for row in cpuid_table))
        self.state = FastpathState(
            cpu=internals.cpu, env=internals.env,
            regs=address(internals.regs), eip=address(internals.eip),
            eflags=address(internals.eflags), cr=address(internals.cr),
            hflags=address(internals.hflags), cc_op=address(internals.cc_op),
            segs=address(internals.segs[0]), ldt=address(tables["ldt"]),
            tr=address(tables["tr"]), gdt=address(tables["gdt"]), idt=address(tables["idt"]),
            star=address(internals.star), lstar=address(internals.lstar),
            fmask=address(internals.fmask), efer=address(internals.efer),
            exception_index=address(internals.exception_index),
            exception_is_int=address(internals.exception_is_int),
            old_exception=address(internals.old_exception),
            ram=ram_address, ram_size=ram_size, rsvd_high=rsvd_high,
            code64_flags=code64_flags, data_flags=data_flags,
            read_eflags=library_function("helper_read_eflags_x86_64"),
            write_eflags=library_function("helper_write_eflags_x86_64"),
            do_interrupt=library_function("x86_cpu_do_interrupt_x86_64"),
            do_hardware_interrupt=library_function("do_interrupt_x86_hardirq_x86_64"),
            slow_exception=self._callbacks[0], slow_syscall=self._callbacks[1],
            cpuid=self._cpuid, cpuid_count=len(cpuid_table))
        handles = (ctypes.c_size_t * 4)()
        error = library.nitro_install(ctypes.byref(self.state), internals.uc_handle,
                                      library_function("uc_hook_add"), unicorn.UC_HOOK_INTR,
                                      unicorn.UC_HOOK_INSN, unicorn.UC_HOOK_INSN_INVALID,
                                      x86.UC_X86_INS_SYSCALL, x86.UC_X86_INS_CPUID, handles)
        if error:
            raise unicorn.UcError(error)
        self._deliver = library.nitro_deliver_interrupt
        self._translate = library.nitro_translate
        self._state_ref = ctypes.byref(self.state)

    def all_deliveries_to_python(self, on: bool) -> None:
        """Hand every exception and external interrupt to the Python path (while a
        tracer watches them), or only those the C checks decline."""
        self.state.all_to_python = int(on)

    def deliver_interrupt(self, vector: int) -> bool:
        """Deliver an external interrupt (RFLAGS.IF checked by the caller) if that cannot
        fault; False leaves it to the Python path."""
        return bool(self._deliver(self._state_ref, vector))

    def translate(self, linear: int, write: bool) -> int | None:
        """The C page walker's answer for a supervisor access (None: it would not take it);
        exposed so that tests can hold it against delivery.py's walker."""
        physical = ctypes.c_uint64()
        if self._translate(self._state_ref, linear, int(write), ctypes.byref(physical)):
            return physical.value
        return None

    @property
    def counters(self) -> dict[str, int]:
        state = self.state
        return {"exceptions": state.exceptions, "syscalls": state.syscalls,
                "slow_exceptions": state.slow_exceptions}


def main() -> int:
    """`python -m nitro_emu.cpu.fastpath`: build the hooks now (the set-up step)."""
    try:
        print(build())
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        print(f"nitro-emu: cannot build the native CPU hooks ({error}); the machine will "
              f"use the slower Python hooks\n{detail.decode(errors='replace')}".rstrip(),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
