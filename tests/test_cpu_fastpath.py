"""Building and choosing the native CPU hooks (nitro_emu/cpu/fastpath.c): cached by source,
a missing compiler is one clear line and the Python hooks take over, NITRO_EMU_NATIVE=0
forces the Python hooks. (What the hooks do is tested in test_cpu.py, on both sets.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

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
