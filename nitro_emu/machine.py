"""The machine: wires the vCPU, RAM, buses, legacy devices, virtio devices and the boot
loader together, and runs the enclave. Like QEMU's machine files, it only wires parts."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from devices.legacy.pic import Pic8259Pair
from devices.legacy.pit import Pit8254
from devices.legacy.reset import ResetPorts
from devices.legacy.rtc import Rtc146818
from devices.legacy.uart import Uart16550
from devices.virtio.mmio import VirtioMmioTransport
from devices.vsock import VsockConfig, VsockDevice
from eif import EifImage, read_eif
from nitro_emu.attestation.factory import create_nsm_device
from nitro_emu.boot.loader import load_linux
from board.bus import MmioBus, PortBus
from board.clock import VirtualClock
from nitro_emu.console import ConsoleLog
from nitro_emu.cpu.cpuid import CpuidModel, host_tsc_hz
from nitro_emu.cpu.vcpu import Vcpu
from nitro_emu.errors import NitroEmuError
from board.memory import GuestRam
from board.reactor import HostReactor
from nitro_emu.runloop import RunLoop

MIN_CID, MAX_CID = 4, 4294967294
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 64, 3072
VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, VIRTIO_FIRST_IRQ = 0xD0000000, 0x1000, 5
COM1_IRQ = 4
HEARTBEAT_OFF = "nitro_emu.heartbeat=off"
# The machine's own kernel parameters (appended; they change no PCR). The TSC is the host's
# invariant TSC moved in step with virtual time, so it is reliable; without this Linux
# checks it against jiffies, which lag whenever ticks merge under emulation. io_delay=none:
# no dummy write to port 0x80 after every PIC/PIT access (one hook each, for nothing).
MACHINE_CMDLINE = ("tsc=reliable", "io_delay=none")


class MachineError(NitroEmuError):
    """A machine that cannot be built or booted as asked."""


@dataclass
class RunResult:
    """Why a run ended. `ok` is True when the guest reset or powered off by itself."""

    reason: str      # reset | poweroff | panic | triple-fault | fault | no-progress | timeout | stopped
    message: str
    ok: bool
    rip: int | None = None
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)


class Machine:
    """An emulated Nitro Enclave booting one EIF.

    `console` receives the guest's serial output (a binary stream or a callable taking
    bytes; default: this process's stdout). The transcript is kept in `console_output`.
    `vsock` configures the parent side (forwarding, publishing; `devices.vsock`);
    `heartbeat=False` tells the guest's init to skip its boot heartbeat.
    """

    def __init__(self, eif: str | os.PathLike | EifImage, *, guest_cid: int,
                 memory_mib: int = 512, debug_mode: bool = False,
                 console: BinaryIO | Callable[[bytes], None] | None = None,
                 vsock: VsockConfig | None = None, heartbeat: bool = True,
                 parent_role: str | None = None,
                 parent_id: str | None = None, extra_cmdline: str = "",
                 state_dir: str | os.PathLike | None = None) -> None:
        if not isinstance(guest_cid, int) or not MIN_CID <= guest_cid <= MAX_CID:
            raise MachineError(f"guest CID {guest_cid} is not a valid enclave CID "
                               f"({MIN_CID} to {MAX_CID})")
        if not MIN_MEMORY_MIB <= memory_mib <= MAX_MEMORY_MIB:
            raise MachineError(f"memory {memory_mib} MiB is outside {MIN_MEMORY_MIB} to "
                               f"{MAX_MEMORY_MIB} MiB")
        self.image = eif if isinstance(eif, EifImage) else read_eif(eif)
        if self.image.arch != "x86_64":
            raise MachineError(f"{self.image.path}: an {self.image.arch} EIF cannot run on "
                               "this x86_64 machine")
        if not self.image.ramdisk_sections:
            raise MachineError(f"{self.image.path}: the EIF has no ramdisk to boot")
        self.guest_cid = guest_cid
        self.debug_mode = debug_mode
        self.console = ConsoleLog(console if console is not None else sys.stdout.buffer,
                                  on_panic=lambda line: self._finish("panic", line, ok=False))
        self.clock = VirtualClock()
        self.reactor = HostReactor()
        self.ram = GuestRam(memory_mib << 20)
        self.ports = PortBus()
        self._end: RunResult | None = None
        self.cpuid = CpuidModel(host_tsc_hz())
        self.vcpu = Vcpu(self.ram, self.ports.read, self.ports.write, self.cpuid)
        self.mmio = MmioBus(self.vcpu.map_mmio)

        self.pic = Pic8259Pair(on_request=self.vcpu.request_interrupt)
        self.vcpu.connect_interrupt_controller(self.pic.has_interrupt, self.pic.acknowledge)
        self.pit = Pit8254(self.clock, self.pic.line(0))
        self.uart = Uart16550(self.pic.line(COM1_IRQ), self.console.write)
        self.rtc = Rtc146818(clock=self.clock)
        self.reset = ResetPorts(on_reset=self._guest_reset)
        for device in (self.pic, self.pit, self.uart, self.rtc, self.reset):
            self.ports.claim(device.ports, device)

        measurements = self.image.measurements
        self.nsm = create_nsm_device(
            pcr0=measurements.pcr0, pcr1=measurements.pcr1, pcr2=measurements.pcr2,
            pcr8=measurements.pcr8, parent_role=parent_role, parent_id=parent_id,
            debug_mode=debug_mode, state_dir=state_dir)
        self.vsock = VsockDevice(guest_cid, self.reactor, self.clock,
                                 vsock if vsock is not None else VsockConfig())
        self.virtio_devices = [self.vsock, self.nsm]
        cmdline_devices = []
        for slot, device in enumerate(self.virtio_devices):
            base = VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_SIZE
            irq = VIRTIO_FIRST_IRQ + slot
            self.mmio.map(base, VIRTIO_MMIO_SIZE,
                          VirtioMmioTransport(device, self.ram, self.pic.line(irq)))
            cmdline_devices.append(f"virtio_mmio.device=4K@{base:#x}:{irq}")

        extra = cmdline_devices + list(MACHINE_CMDLINE) + ([] if heartbeat else [HEARTBEAT_OFF])
        if extra_cmdline:
            extra.append(extra_cmdline)
        cmdline = " ".join([self.image.cmdline.strip()] + extra)
        self.boot = load_linux(self.vcpu, self.ram, self.image.read_kernel(), cmdline,
                               self.image.ramdisks_size, self.image.read_ramdisks_into)
        self.loop = RunLoop(self.vcpu, self.pic, self.clock, self.reactor,
                            between_slices=self.uart.flush,
                            finished=lambda: self._end is not None,
                            idle_skip_allowed=self.reactor.only_listening)

    # -- events from devices ---------------------------------------------------------------

    def _guest_reset(self, how: str) -> None:
        self._finish("reset", f"the guest reset the machine ({how})", ok=True)

    def _finish(self, reason: str, message: str, ok: bool) -> None:
        if self._end is None:
            self._end = RunResult(reason, message, ok, self.vcpu.rip)
        self.loop.request_stop()

    # -- running ---------------------------------------------------------------------------

    def run(self, timeout: float | None = None) -> RunResult:
        """Run the enclave until it ends, `timeout` wall seconds pass, or `stop()`."""
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        try:
            outcome = self.loop.run(deadline)
        finally:
            self.uart.flush()
            self.console.flush()
        if self._end is None:
            self._end = self._outcome(outcome)
        if self.console.panic_line and self._end.reason != "panic":
            self._end = RunResult("panic", self.console.panic_line, False, self.vcpu.rip)
        result = self._end
        result.seconds = time.monotonic() - started
        result.stats = dict(self.vcpu.counters, slices=self.loop.stats.slices,
                            halts=self.loop.stats.halts,
                            skipped_ms=self.loop.stats.skipped_ns // 1_000_000)
        return result

    def _outcome(self, outcome: str | None) -> RunResult:
        rip = self.vcpu.rip
        if self.vcpu.fault is not None:
            fault = self.vcpu.fault
            reason = "triple-fault" if "triple fault" in str(fault) else "fault"
            return RunResult(reason, f"{fault} at RIP {fault.rip:#x}: "
                             f"{self.vcpu.disassemble(fault.rip)}", False, fault.rip)
        if outcome == "halted":
            return RunResult("poweroff", "the guest halted with interrupts off", True, rip)
        if outcome == "timeout":
            return RunResult("timeout", "the run timed out", False, rip)
        if outcome == "no-progress":
            return RunResult("no-progress", "the guest is idle with no timer armed and no "
                             "host I/O that could wake it", False, rip)
        return RunResult("stopped", "the machine was stopped", False, rip)

    def stop(self) -> None:
        """Stop the run from another thread (or a signal handler)."""
        self._finish("stopped", "the machine was stopped", ok=False)

    @property
    def console_output(self) -> bytes:
        return self.console.transcript()

    def close(self) -> None:
        """Release host resources: the vsock sockets, the reactor, the timer thread."""
        self.vsock.close()
        self.loop.close()
        self.vcpu.close()
        self.reactor.close()
