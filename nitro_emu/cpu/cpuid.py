"""The CPUID model the guest sees.

It starts from what Unicorn's TCG really implements (its own CPUID answers for the default
model, read once per process by running CPUID in a scratch instance), then removes what
this machine does not have: no local APIC, x2APIC or TSC-deadline timer (Unicorn has no
APIC), no hypervisor leaves (so no kvmclock or paravirt probing), and adds the TSC
frequency in leaves 0x15/0x16 so Linux skips PIT calibration (docs/architecture.md §3.6, 3.8).
"""
from __future__ import annotations

import time
from functools import lru_cache

import unicorn
from unicorn import x86_const as x86

Registers = tuple[int, int, int, int]

_BASIC_LEAVES = [(0, 0), (1, 0), (4, 0), (4, 1), (4, 2), (4, 3), (6, 0), (7, 0), (0xD, 0),
                 (0xD, 1), (0xD, 2)]
_EXTENDED_LEAVES = [(0x80000000, 0), (0x80000001, 0), (0x80000002, 0), (0x80000003, 0),
                    (0x80000004, 0), (0x80000005, 0), (0x80000006, 0), (0x80000008, 0)]
_MAX_BASIC_LEAF = 0x16
_PROBE_CODE_ADDRESS = 0x1000
_SUBLEAF_LEAVES = frozenset((4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18))
# "Fast REP MOVSB/STOSB" hints. TCG runs a REP string instruction one element per pass
# through its translated block, so Linux's byte-wise ERMS routines (clear_page_erms,
# rep movsb in memcpy and copy_user) cost 8x the passes of the REP MOVSQ/STOSQ ones it
# uses without them. Only hints: no instruction changes behaviour.
_ERMS = 1 << 9    # leaf 7 EBX
_FSRM = 1 << 4    # leaf 7 EDX


def _scratch_cpu() -> unicorn.Uc:
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(_PROBE_CODE_ADDRESS, 0x1000)
    uc.mem_write(_PROBE_CODE_ADDRESS, b"\x0f\xa2\x0f\x31")  # cpuid; rdtsc
    return uc


@lru_cache(maxsize=1)
def native_cpuid() -> dict[tuple[int, int], Registers]:
    """Unicorn's own CPUID answers for the leaves we model."""
    uc = _scratch_cpu()
    answers = {}
    for leaf, subleaf in _BASIC_LEAVES + _EXTENDED_LEAVES:
        uc.reg_write(x86.UC_X86_REG_RAX, leaf)
        uc.reg_write(x86.UC_X86_REG_RCX, subleaf)
        uc.emu_start(_PROBE_CODE_ADDRESS, _PROBE_CODE_ADDRESS + 2)
        answers[(leaf, subleaf)] = tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (
            x86.UC_X86_REG_EAX, x86.UC_X86_REG_EBX, x86.UC_X86_REG_ECX, x86.UC_X86_REG_EDX))
    return answers


TSC_WINDOW_NS = 20_000_000


class TscRateMeasurement:
    """The host's TSC rate (RDTSC in Unicorn is the host TSC plus an offset), measured
    against the monotonic clock from construction to the first `hz()`, over at least 20 ms:
    whatever the caller does in between hides the wait."""

    def __init__(self) -> None:
        self._uc = _scratch_cpu()
        self._start = self._sample()
        self._hz: int | None = None

    def _sample(self) -> tuple[int, int]:
        before = time.perf_counter_ns()
        self._uc.emu_start(_PROBE_CODE_ADDRESS + 2, _PROBE_CODE_ADDRESS + 4)
        after = time.perf_counter_ns()
        tsc = (self._uc.reg_read(x86.UC_X86_REG_RDX) << 32) | \
            (self._uc.reg_read(x86.UC_X86_REG_RAX) & 0xFFFFFFFF)
        return tsc, (before + after) // 2

    def hz(self) -> int:
        if self._hz is None:
            tsc0, ns0 = self._start
            wait_ns = TSC_WINDOW_NS - (time.perf_counter_ns() - ns0)
            if wait_ns > 0:
                time.sleep(wait_ns / 1e9)
            tsc1, ns1 = self._sample()
            self._hz = max((tsc1 - tsc0) * 1_000_000_000 // max(1, ns1 - ns0), 1_000_000)
            self._uc = None
        return self._hz


@lru_cache(maxsize=1)
def start_measuring_host_tsc() -> TscRateMeasurement:
    """The process's one measurement of the host TSC rate, started now (a machine starts
    it first thing, so its set-up covers the measuring window)."""
    return TscRateMeasurement()


def host_tsc_hz() -> int:
    """The host's TSC rate in Hz (see TscRateMeasurement)."""
    return start_measuring_host_tsc().hz()


class CpuidModel:
    """Answers CPUID for the guest; built once per machine."""

    def __init__(self, tsc_hz: int) -> None:
        native = native_cpuid()
        leaves: dict[tuple[int, int], Registers] = dict(native)
        eax, ebx, ecx, edx = native[(0, 0)]
        leaves[(0, 0)] = (_MAX_BASIC_LEAF, ebx, ecx, edx)  # "GenuineIntel" from the model
        eax, ebx, ecx, edx = native[(1, 0)]
        ecx &= ~((1 << 21) | (1 << 24) | (1 << 31))  # x2APIC, TSC-deadline, hypervisor
        edx &= ~(1 << 9)  # APIC
        ebx &= 0x0000FFFF  # one logical CPU, initial APIC id 0
        leaves[(1, 0)] = (eax, ebx, ecx, edx)
        # 0x15: TSC = crystal (1 MHz) * numerator / denominator; 0x16: base MHz.
        tsc_khz = tsc_hz // 1000
        leaves[(0x15, 0)] = (1000, tsc_khz, 1_000_000, 0)
        mhz = tsc_hz // 1_000_000
        leaves[(0x16, 0)] = (mhz, mhz, 100, 0)
        leaves[(0x80000007, 0)] = (0, 0, 0, 1 << 8)  # invariant TSC
        eax, ebx, ecx, edx = native[(7, 0)]
        leaves[(7, 0)] = (eax, ebx & ~_ERMS, ecx, edx & ~_FSRM)
        eax, _, _, _ = native[(0x80000000, 0)]
        self._max_extended = max(eax, 0x80000008)
        self._leaves = leaves
        self.tsc_hz = tsc_hz

    def lookup(self, leaf: int, subleaf: int) -> Registers:
        """The four registers for CPUID(leaf, subleaf); unknown leaves read as zeros."""
        if leaf in _SUBLEAF_LEAVES:
            return self._leaves.get((leaf, subleaf), (0, 0, 0, 0))
        if leaf <= _MAX_BASIC_LEAF or 0x80000000 <= leaf <= self._max_extended:
            return self._leaves.get((leaf, 0), (0, 0, 0, 0))
        return (0, 0, 0, 0)

    def table(self) -> list[tuple[int, int, int, int, int, int, int]]:
        """The model as rows (leaf, subleaf, any_subleaf, eax, ebx, ecx, edx) for the native
        hook: the first row whose leaf matches, and whose subleaf does unless any_subleaf,
        answers; no row means zeros, as `lookup` says."""
        return [(leaf, subleaf, int(leaf not in _SUBLEAF_LEAVES), *self.lookup(leaf, subleaf))
                for leaf, subleaf in sorted(self._leaves)
                if leaf in _SUBLEAF_LEAVES or subleaf == 0]
