"""The machine: wires the vCPU, RAM, buses, legacy devices, virtio devices and the boot
loader together, and runs the enclave. Like QEMU's machine files, it only wires parts."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from board.bus import MmioBus, PortBus
from board.clock import VirtualClock
from board.memory import GuestRam
from board.reactor import HostReactor
from devices.legacy.pic import Pic8259Pair
from devices.legacy.pit import Pit8254
from devices.legacy.reset import ResetPorts
from devices.legacy.rtc import Rtc146818
from devices.legacy.uart import Uart16550
from devices.nsm import NsmDevice
from devices.virtio.device import VirtioDevice
from devices.virtio.mmio import VirtioMmioTransport
from devices.vsock import VsockConfig, VsockDevice, check_guest_cid
from eif import EifImage, read_eif
from nitro_emu.attestation.factory import create_nsm_device
from nitro_emu.boot.host_decompression import BackgroundInflation
from nitro_emu.boot.loader import BootLayout, load_linux, start_inflating
from nitro_emu.console import TRANSCRIPT_LIMIT, ConsoleLog
from nitro_emu.cpu.cpuid import CpuidModel, host_tsc_hz, start_measuring_host_tsc
from nitro_emu.cpu.vcpu import Vcpu
from nitro_emu.debug.config import DebugConfig
from nitro_emu.errors import NitroEmuError
from nitro_emu.limits import check_memory_mib
from nitro_emu.runloop import RunLoop

COM1_IRQ = 4
HEARTBEAT_OFF = "nitro_emu.heartbeat=off"
# The machine's own kernel parameters (appended; they change no PCR). The TSC is the host's
# invariant TSC moved in step with virtual time, so it is reliable; without this Linux
# checks it against jiffies, which lag whenever ticks merge under emulation. io_delay=none:
# no dummy write to port 0x80 after every PIC/PIT access (one hook each, for nothing).
# mitigations=off: the emulated CPU executes nothing speculatively, so the kernel's
# side-channel mitigations (which it turns on for the Intel model the CPUID presents:
# page-table isolation, VERW on every return to user, retpolines) protect nothing; PTI
# alone made every system call two CR3 writes, each a full TLB flush in TCG.
MACHINE_CMDLINE = ("tsc=reliable", "io_delay=none", "mitigations=off")


@dataclass(frozen=True)
class VirtioSlot:
    """Where a virtio-mmio device sits: its register window and interrupt line, announced
    to Linux on the command line as QEMU's microvm and Firecracker do."""

    name: str
    base: int
    irq: int
    size: int = 0x1000

    @property
    def cmdline(self) -> str:
        return f"virtio_mmio.device={self.size >> 10}K@{self.base:#x}:{self.irq}"


VIRTIO_SLOTS = (VirtioSlot("vsock", 0xD0000000, 5), VirtioSlot("nsm", 0xD0001000, 6))


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
    bytes; default: this process's stdout). The transcript is kept in `console_output`
    (up to 16 MiB; `keep_transcript=False` keeps none, for long runs whose console goes
    somewhere already).
    `vsock` configures the parent side (forwarding, publishing; `devices.vsock`); with its
    `heartbeat` off the parent does not answer the boot heartbeat and the guest's init is
    told (on the kernel command line) to skip it. `module_id` is the NSM's module id (the
    enclave ID on Nitro; random in that shape by default). `debug` attaches a GDB stub
    and/or an event trace (nitro_emu.debug.session).
    `host_decompression=False` makes the kernel's own decompressor run (as emulated code)
    instead of the loader inflating the kernel on the host (`boot.host_decompression`);
    `boot` tells which path was taken and why.
    """

    def __init__(self, eif: str | os.PathLike | EifImage, *, guest_cid: int,
                 memory_mib: int = 512, debug_mode: bool = False,
                 console: BinaryIO | Callable[[bytes], None] | None = None,
                 vsock: VsockConfig | None = None,
                 parent_role: str | None = None,
                 parent_id: str | None = None, extra_cmdline: str = "",
                 state_dir: str | os.PathLike | None = None,
                 module_id: str | None = None,
                 debug: DebugConfig | None = None,
                 host_decompression: bool = True, keep_transcript: bool = True) -> None:
        try:
            check_guest_cid(guest_cid)
            check_memory_mib(memory_mib)
        except ValueError as error:
            raise MachineError(str(error)) from None
        vsock = vsock if vsock is not None else VsockConfig()
        start_measuring_host_tsc()  # reading the image covers the measuring window
        self.image = self._read_image(eif)
        self.debug = self._debug_session(debug)
        kernel = self.image.read_kernel()
        cmdline = self._kernel_cmdline(vsock.heartbeat, extra_cmdline)
        # Inflated in a worker thread while the rest of the machine is wired.
        inflation = start_inflating(kernel, cmdline) if host_decompression else None
        self.guest_cid = guest_cid
        self.debug_mode = debug_mode
        self._end: RunResult | None = None
        self.console = ConsoleLog(console if console is not None else sys.stdout.buffer,
                                  on_panic=lambda line: self._finish("panic", line, ok=False),
                                  transcript_limit=TRANSCRIPT_LIMIT if keep_transcript else 0)
        self.clock = VirtualClock()
        self.reactor = HostReactor()
        self.ram = GuestRam(memory_mib << 20)
        self.ports = PortBus()
        self._wire_cpu()
        self._wire_legacy_devices()
        self.nsm = self._make_nsm(parent_role, parent_id, state_dir, module_id)
        self.vsock = VsockDevice(guest_cid, self.reactor, self.clock, vsock)
        try:
            self.virtio = self._wire_virtio({"vsock": self.vsock, "nsm": self.nsm})
            self.boot = self._load_kernel(kernel, cmdline, host_decompression, inflation)
        except BaseException:  # e.g. a kernel that is not a bzImage: no socket file left
            self.vsock.close()
            if self.debug is not None:
                self.debug.close()
            raise
        between_slices = self.uart.flush
        if self.debug is not None:
            self.debug.attach(self.vcpu, self.clock, self.reactor,
                              end_machine=lambda message: self._finish("stopped", message, False),
                              finished=lambda: self._end is not None)
            between_slices = self._between_slices_debugging
        self.loop = RunLoop(self.vcpu, self.pic, self.clock, self.reactor,
                            between_slices=between_slices,
                            finished=lambda: self._end is not None,
                            idle_skip_allowed=self.reactor.only_listening)

    # -- wiring ----------------------------------------------------------------------------

    @staticmethod
    def _read_image(eif: str | os.PathLike | EifImage) -> EifImage:
        image = eif if isinstance(eif, EifImage) else read_eif(eif)
        if image.arch != "x86_64":
            raise MachineError(f"{image.path}: an {image.arch} EIF cannot run on "
                               "this x86_64 machine")
        if not image.ramdisk_sections:
            raise MachineError(f"{image.path}: the EIF has no ramdisk to boot")
        return image

    @staticmethod
    def _debug_session(config: DebugConfig | None):
        """The debugging tools asked for (the stub's socket is bound first, so a busy port
        fails before anything else is built); None in a normal run."""
        if config is None:
            return None
        from nitro_emu.debug.session import DebugSession  # only when debugging
        return DebugSession(config)

    def _wire_cpu(self) -> None:
        """The vCPU on RAM, its port hooks on the port bus, MMIO windows through it."""
        self.cpuid = CpuidModel(host_tsc_hz())
        read, write, map_window = self.ports.read, self.ports.write, None
        if self.debug is not None:
            read, write = self.debug.ports(read, write)
        self.vcpu = Vcpu(self.ram, read, write, self.cpuid)
        map_window = self.vcpu.map_mmio
        if self.debug is not None:
            map_window = self.debug.mmio_windows(map_window)
        self.mmio = MmioBus(map_window)

    def _wire_legacy_devices(self) -> None:
        """The PC parts on I/O ports: 8259 pair (the vCPU's INTR), PIT on IRQ 0, COM1 on
        IRQ 4 feeding the console, RTC, reset ports."""
        self.pic = Pic8259Pair(on_request=self.vcpu.request_interrupt)
        self.vcpu.connect_interrupt_controller(self.pic.has_interrupt, self.pic.acknowledge)
        self.pit = Pit8254(self.clock, self.pic.line(0))
        self.uart = Uart16550(self.pic.line(COM1_IRQ), self.console.write)
        self.rtc = Rtc146818(clock=self.clock)
        self.reset = ResetPorts(on_reset=self._guest_reset)
        for device in (self.pic, self.pit, self.uart, self.rtc, self.reset):
            self.ports.claim(device.ports, device)

    def _make_nsm(self, parent_role: str | None, parent_id: str | None,
                  state_dir: str | os.PathLike | None, module_id: str | None) -> NsmDevice:
        measurements = self.image.measurements
        return create_nsm_device(
            pcr0=measurements.pcr0, pcr1=measurements.pcr1, pcr2=measurements.pcr2,
            pcr8=measurements.pcr8, parent_role=parent_role, parent_id=parent_id,
            debug_mode=self.debug_mode, state_dir=state_dir, module_id=module_id)

    def _wire_virtio(self, devices: dict[str, VirtioDevice]) -> dict[str, VirtioMmioTransport]:
        """Each virtio device behind its own MMIO transport, in its named slot."""
        transports = {}
        for slot in VIRTIO_SLOTS:
            transport = VirtioMmioTransport(devices[slot.name], self.ram, self.pic.line(slot.irq))
            self.mmio.map(slot.base, slot.size, transport)
            transports[slot.name] = transport
        return transports

    def _kernel_cmdline(self, heartbeat: bool, extra_cmdline: str) -> str:
        """The EIF's command line plus the machine's own parameters (they change no PCR):
        the virtio devices, MACHINE_CMDLINE, the heartbeat switch, the caller's extra."""
        extra = [slot.cmdline for slot in VIRTIO_SLOTS] + list(MACHINE_CMDLINE)
        if not heartbeat:
            extra.append(HEARTBEAT_OFF)
        if extra_cmdline:
            extra.append(extra_cmdline)
        return " ".join([self.image.cmdline.strip()] + extra)

    def _load_kernel(self, kernel: bytes, cmdline: str, host_decompression: bool,
                     inflation: BackgroundInflation | None) -> BootLayout:
        """The EIF's kernel, the command line and the ramdisks in RAM, the vCPU at the
        kernel's entry."""
        return load_linux(self.vcpu, self.ram, kernel, cmdline,
                          self.image.ramdisks_size, self.image.read_ramdisks_into,
                          decompress_on_host_first=host_decompression, inflation=inflation)

    def _between_slices_debugging(self) -> None:
        self.uart.flush()
        self.debug.between_slices()

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
                            idle_rounds=self.loop.stats.idle_rounds,
                            skipped_ms=self.clock.skipped_ns // 1_000_000)
        if self.debug is not None:
            self.debug.machine_ended(result.reason, result.ok)
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
        """Stop the run from another thread (or a signal handler), at once even while
        the guest idles."""
        self._finish("stopped", "the machine was stopped", ok=False)
        self.reactor.wake()
        if self.debug is not None:
            self.debug.abandon()

    @property
    def console_output(self) -> bytes:
        return self.console.transcript()

    def close(self) -> None:
        """Release host resources: the vsock sockets, the reactor, the timer thread."""
        if self.debug is not None:
            self.debug.close()
        self.vsock.close()
        self.loop.close()
        self.vcpu.close()
        self.reactor.close()
