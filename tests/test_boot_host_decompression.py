"""The fast boot path with real guests: the kernel inflated on the host and entered where
its own decompressor would jump gives the same guest as that decompressor running as
emulated code; every compression a bzImage can carry boots the identical kernel; what the
fast path cannot do sends the boot to the decompressor, with one log line saying why."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import eif
from nitro_emu.boot.bzimage import BzImage
from nitro_emu.boot.host_decompression import decompress_on_host
from nitro_emu.boot.payload import decompress_payload
from support.images import guest_image
from support.kernel_images import COMPRESSORS, compress_payloads, payload_of, with_payload

pytestmark = pytest.mark.guest

HELLO = "Hello from the enclave side!"
# What the guest reports about the machine it was given: the memory map, both command
# lines, the memory total (which counts what the kernel reserved) and the hello line.
REPORTED = re.compile(r"^(?:\[ *[\d.]+\] )?(BIOS-e820: .*|Command line: .*|"
                      r"Kernel command line: .*|Memory: .*|" + re.escape(HELLO) + r")\r?$", re.M)


def reported(console: str) -> list[str]:
    lines = REPORTED.findall(console)
    assert len(lines) >= 8, console[-3000:]
    return lines


@pytest.mark.parametrize("name, timeout", [("hello.eif", 300), ("hello-aws.eif", 900)])
def test_host_and_guest_decompression_give_the_same_guest(boot, name, timeout) -> None:
    fast = boot(name, timeout=timeout)
    slow = boot(name, timeout=timeout, host_decompression=False)
    assert fast.machine.boot.decompressed_by == "host", fast.machine.boot.fallback_reason
    assert slow.machine.boot.decompressed_by == "guest"
    assert fast.machine.boot.entry != slow.machine.boot.entry
    for run in (fast, slow):
        assert run.result.ok, f"{run.result.reason}: {run.result.message}\n{run.console[-3000:]}"
    assert reported(fast.console) == reported(slow.console)


@pytest.fixture(scope="module")
def hello_parts() -> tuple[bytes, bytes, str]:
    image = eif.read_eif(guest_image("hello.eif"))
    return image.read_kernel(), image.read_ramdisks(), image.cmdline


def _eif(directory: Path, kernel: bytes, ramdisk: bytes, cmdline: str) -> Path:
    (directory / "bzImage").write_bytes(kernel)
    (directory / "initrd").write_bytes(ramdisk)
    output = directory / "image.eif"
    eif.build_eif(output, kernel=directory / "bzImage", cmdline=cmdline,
                  ramdisks=[directory / "initrd"], build_time="2024-01-01T00:00:00+00:00")
    return output


@pytest.fixture(scope="module")
def repacked(hello_parts, tmp_path_factory) -> dict[str, Path]:
    """hello.eif with its kernel's payload recompressed by each compressor."""
    kernel, ramdisk, cmdline = hello_parts
    image = BzImage.parse(kernel)
    vmlinux_bin = decompress_payload(payload_of(kernel), image.header.init_size)
    images = {}
    for name, payload in compress_payloads(vmlinux_bin).items():
        images[name] = _eif(tmp_path_factory.mktemp(name), with_payload(kernel, payload),
                            ramdisk, cmdline)
    return images


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_every_compression_loads_the_identical_kernel_and_boots(
        boot, hello_parts, repacked, compression) -> None:
    kernel = hello_parts[0]
    original = decompress_on_host(BzImage.parse(kernel), kernel, "", 0x100000, False)
    other_kernel = eif.read_eif(repacked[compression]).read_kernel()
    other = decompress_on_host(BzImage.parse(other_kernel), other_kernel, "", 0x100000, False)
    assert other.compression == compression
    assert other.vmlinux.data == original.vmlinux.data  # (no pytest diff of 13 MB)
    assert other.vmlinux.segments == original.vmlinux.segments
    assert other.vmlinux.entry == original.vmlinux.entry
    assert (other.load_address, other.entry) == (original.load_address, original.entry)

    run = boot(repacked[compression])
    assert run.machine.boot.compression == compression
    assert run.result.ok, f"{run.result.reason}: {run.result.message}\n{run.console[-3000:]}"
    assert HELLO in run.console


def test_an_early_serial_console_sends_the_boot_to_the_kernels_decompressor(
        boot, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="nitro_emu.boot"):
        run = boot("hello.eif", extra_cmdline="earlyprintk=serial,ttyS0,115200")
    assert run.machine.boot.decompressed_by == "guest"
    assert "early serial console" in run.machine.boot.fallback_reason
    records = [r for r in caplog.records if r.name == "nitro_emu.boot"]
    assert len(records) == 1 and "\n" not in records[0].getMessage()
    assert "own decompressor" in records[0].getMessage()
    assert run.result.ok, f"{run.result.reason}: {run.result.message}\n{run.console[-3000:]}"
    assert HELLO in run.console
