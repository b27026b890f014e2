"""Building and choosing the native CPU hooks (nitro_emu/cpu/fastpath.c): cached by source,
a missing compiler is one clear line and the Python hooks take over, NITRO_EMU_NATIVE=0
forces the Python hooks. (What the hooks do is tested in test_cpu.py, on both sets.)"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import event, given, settings, strategies as st

from board.bus import PortBus
from board.memory import GuestRam
from nitro_emu.cpu import fastpath
from nitro_emu.cpu.cpuid import CpuidModel, host_tsc_hz
from nitro_emu.cpu.vcpu import Vcpu

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="no C compiler on this host")


@needs_compiler
def test_the_hooks_are_built_once_per_source(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = fastpath.build()
    assert built.parent == tmp_path / "nitro-emu" / "native" and built.stat().st_size > 0
    # the second time needs no compiler at all
    assert fastpath.build(compiler="/nonexistent/cc") == built
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no temporary left


def test_a_missing_compiler_is_one_clear_line(tmp_path) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), CC=str(tmp_path / "no-such-cc"))
    result = subprocess.run([sys.executable, "-m", "nitro_emu.cpu.fastpath"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("nitro-emu: cannot build the native CPU hooks")
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "nitro-emu").rglob("*.so"))


def test_nitro_emu_native_0_selects_the_python_hooks(monkeypatch) -> None:
    monkeypatch.setenv("NITRO_EMU_NATIVE", "0")
    assert fastpath.load_library() is None
    ports = PortBus()
    vcpu = Vcpu(GuestRam(1 << 20), ports.read, ports.write, CpuidModel(host_tsc_hz()))
    assert not vcpu.native
    assert "slow_exceptions" not in vcpu.counters


# -- the C page walker against delivery.py's ---------------------------------------------

TABLES = (0x1000, 0x2000, 0x3000, 0x4000)          # PML4, PDPT, PD, PT
FLAG_BITS = (1, 2, 4, 0x80, 1 << 63, 1 << 51)      # P RW US PS NX, a reserved address bit
RAM_SIZE = 4 << 20

# A present, writable supervisor entry with up to two bits flipped, so walks often succeed.
entry_flags = st.lists(st.sampled_from(FLAG_BITS), max_size=2).map(
    lambda flips: functools.reduce(lambda value, bit: value ^ bit, flips, 3))


@pytest.fixture(scope="module")
def walker_cpu():
    if fastpath.load_library() is None:
        pytest.skip("the native hooks cannot be built here (no C compiler)")
    ports = PortBus()
    vcpu = Vcpu(GuestRam(RAM_SIZE), ports.read, ports.write, CpuidModel(host_tsc_hz()))
    return vcpu


@settings(max_examples=400, deadline=None)
@given(flags=st.tuples(entry_flags, entry_flags, entry_flags, entry_flags),
       targets=st.tuples(*[st.sampled_from((1, 1, 1, 2, 0x3FF)) for _ in range(4)]),
       low_bits=st.integers(0, (1 << 21) - 1), large_page_bits=st.sampled_from((0, 0x2000)),
       high_half=st.booleans(), wp=st.booleans(), smap=st.booleans(), nxe=st.booleans(),
       write=st.booleans())
def test_the_c_walker_takes_only_what_the_python_walker_takes(
        walker_cpu, flags, targets, low_bits, large_page_bits, high_half, wp, smap, nxe,
        write) -> None:
    """Whatever the C walker translates, delivery.py's walker translates to the same
    physical address (so the C hook never hands Unicorn a delivery that faults); what it
    declines, Python decides. Entries point to the next table, or to a page that is
    elsewhere in RAM or past its end."""
    vcpu = walker_cpu
    internals, ram = vcpu.internals, vcpu.ram
    linear = ((0x1FF if high_half else 0) << 39) | (1 << 30) | (2 << 21) | low_bits
    if high_half:
        linear |= 0xFFFF << 48
    indices = [(linear >> shift) & 0x1FF for shift in (39, 30, 21, 12)]
    for level, (table, index, bits, target) in enumerate(zip(TABLES, indices, flags, targets)):
        following = TABLES[level + 1] if level < 3 and target != 0x3FF else target << 21
        ram.write_u64(table + index * 8, following | bits | (large_page_bits if bits & 0x80 else 0))
    internals.cr[3] = TABLES[0]
    internals.cr[0] = (internals.cr[0] | 1 << 31 | 1) & ~(1 << 16) | (wp << 16)
    internals.cr[4] = (internals.cr[4] | 1 << 5) & ~(1 << 21) | (smap << 21)
    internals.efer.value = (internals.efer.value | 0x500) & ~(1 << 11) | (nxe << 11)
    native = vcpu._native.translate(linear, write)
    try:
        python = vcpu.delivery._walk(linear, write, 13)
    except Exception:  # _Fault or TripleFault: the Python path would raise a fault
        python = None
    event(f"C walker takes it: {native is not None}, Python: {python is not None}")
    if native is not None:
        assert python == native
    elif python is not None:  # declined although Python takes it: only 1 GiB pages
        assert flags[1] & 0x80 and flags[1] & 1
