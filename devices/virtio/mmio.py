"""The virtio-mmio transport, version 2 (virtio 1.x, section 4.2), for any `VirtioDevice`.

It owns what every device shares: identification registers, feature negotiation, the
device status, queue set-up and the interrupt line. Backends only see activated queues and
notifications. Guest mistakes (bad ring addresses, malformed chains, features never
offered) put the device in DEVICE_NEEDS_RESET with a config-change interrupt and a log
line on `nitro_emu.virtio`; nothing the guest writes makes `mmio_write` raise.
"""
from __future__ import annotations

import logging

from devices.virtio.device import VIRTIO_F_VERSION_1, VirtioDevice
from devices.virtio.queue import (MAX_QUEUE_SIZE, VIRTIO_F_RING_EVENT_IDX,
                                  VIRTIO_F_RING_INDIRECT_DESC, Virtqueue, VirtqueueError)
from board.interfaces import IrqLine
from board.memory import GuestRam

log = logging.getLogger("nitro_emu.virtio")

WINDOW_SIZE = 0x1000
MAGIC = 0x74726976            # "virt"
VENDOR_ID = 0x554D4551        # "QEMU", what Firecracker and QEMU's microvm report

MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

INT_VRING = 1
INT_CONFIG = 2

# Ring features this transport's Virtqueue implements for every device.
RING_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_RING_INDIRECT_DESC


class _QueueConfig:
    """What the driver programmed for one queue, before and after QueueReady."""

    __slots__ = ("max_size", "size", "ready", "desc", "driver", "device", "queue")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = max_size
        self.ready = False
        self.desc = self.driver = self.device = 0
        self.queue: Virtqueue | None = None


class VirtioMmioTransport:
    """A 0x1000-byte virtio-mmio window (implements `interfaces.MmioDevice`) in front of
    `device`, whose used-buffer and config interrupts drive the level-triggered `irq`."""

    def __init__(self, device: VirtioDevice, memory: GuestRam, irq: IrqLine,
                 name: str | None = None) -> None:
        for size in device.queue_max_sizes:
            if not 1 <= size <= MAX_QUEUE_SIZE or size & (size - 1):
                raise ValueError(f"queue size {size} of {type(device).__name__} is not a "
                                 "power of two in 1..32768")
        self.device = device
        self.memory = memory
        self.irq = irq
        self.name = name or type(device).__name__
        self._offered = device.device_features() | RING_FEATURES
        device.set_error_handler(self._device_error)
        self._reset_state()

    # -- state -------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self.status = 0
        self.interrupt_status = 0
        self.config_generation = 0
        self.driver_features = 0
        self._device_features_sel = 0
        self._driver_features_sel = 0
        self._queue_sel = 0
        self._shm_sel = 0
        self.activated = False
        self.queues = [_QueueConfig(size) for size in self.device.queue_max_sizes]

    @property
    def broken(self) -> bool:
        """Whether the device is in DEVICE_NEEDS_RESET (waiting for the driver's reset)."""
        return bool(self.status & STATUS_DEVICE_NEEDS_RESET)

    def _set_irq(self) -> None:
        self.irq.set_level(self.interrupt_status != 0)

    def _raise_vring(self) -> None:
        """The backend's `interrupt()`: a used buffer is ready."""
        if not self.interrupt_status & INT_VRING:
            self.interrupt_status |= INT_VRING
            self.irq.set_level(True)

    def _fail(self, reason: str) -> None:
        """Guest error: DEVICE_NEEDS_RESET, config interrupt, one log line."""
        log.error("%s: %s; device needs reset", self.name, reason)
        if self.status & STATUS_DEVICE_NEEDS_RESET:
            return
        self.status |= STATUS_DEVICE_NEEDS_RESET
        self.interrupt_status |= INT_CONFIG
        self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        self._set_irq()

    def _device_error(self, error: Exception) -> None:
        self._fail(f"malformed guest data: {error}" if isinstance(error, VirtqueueError)
                   else f"device error: {error!r}")

    # -- MmioDevice --------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if offset >= CONFIG:
            try:
                return self.device.read_config(offset - CONFIG, size) & ((1 << (8 * size)) - 1)
            except Exception as error:  # a backend bug must not take the machine down
                log.exception("%s: read_config(0x%x, %d) failed", self.name,
                              offset - CONFIG, size)
                self._device_error(error)
                return 0
        if size != 4:
            return 0
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION:
            return 2
        if offset == DEVICE_ID:
            return self.device.device_id
        if offset == VENDOR:
            return VENDOR_ID
        if offset == DEVICE_FEATURES:
            if self._device_features_sel > 1:
                return 0
            return (self._offered >> (32 * self._device_features_sel)) & 0xFFFFFFFF
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return self.status
        if offset == CONFIG_GENERATION:
            return self.config_generation
        if offset in (SHM_LEN_LOW, SHM_LEN_HIGH):
            return 0xFFFFFFFF       # no shared memory regions
        q = self._selected()
        if q is None:
            return 0
        if offset == QUEUE_NUM_MAX:
            return q.max_size
        if offset == QUEUE_READY:
            return int(q.ready)
        if offset == QUEUE_NUM:
            return q.size
        if offset == QUEUE_DESC_LOW:
            return q.desc & 0xFFFFFFFF
        if offset == QUEUE_DESC_HIGH:
            return q.desc >> 32
        if offset == QUEUE_DRIVER_LOW:
            return q.driver & 0xFFFFFFFF
        if offset == QUEUE_DRIVER_HIGH:
            return q.driver >> 32
        if offset == QUEUE_DEVICE_LOW:
            return q.device & 0xFFFFFFFF
        if offset == QUEUE_DEVICE_HIGH:
            return q.device >> 32
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset >= CONFIG:
            try:
                self.device.write_config(offset - CONFIG, size, value)
            except Exception as error:
                log.exception("%s: write_config failed", self.name)
                self._device_error(error)
            return
        if size != 4:
            log.warning("%s: %d-byte write to register 0x%x ignored", self.name, size, offset)
            return
        value &= 0xFFFFFFFF
        if offset == QUEUE_NOTIFY:
            self._notify(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._set_irq()
        elif offset == STATUS:
            self._write_status(value & 0xFF)
        elif offset == DEVICE_FEATURES_SEL:
            self._device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self._driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            if self.status & STATUS_FEATURES_OK or self._driver_features_sel > 1:
                return
            shift = 32 * self._driver_features_sel
            self.driver_features = ((self.driver_features & ~(0xFFFFFFFF << shift))
                                    | (value << shift))
        elif offset == QUEUE_SEL:
            self._queue_sel = value
        elif offset == SHM_SEL:
            self._shm_sel = value
        else:
            self._write_queue_register(offset, value)

    # -- registers ---------------------------------------------------------------------

    def _selected(self) -> _QueueConfig | None:
        if self._queue_sel < len(self.queues):
            return self.queues[self._queue_sel]
        return None

    def _write_queue_register(self, offset: int, value: int) -> None:
        q = self._selected()
        if q is None:
            return
        if offset == QUEUE_READY:
            if value & 1 and not q.ready:
                self._make_ready(q)
            elif not value & 1:
                q.ready = False
                q.queue = None
            return
        if q.ready:
            log.warning("%s: queue %d register 0x%x written while ready; ignored",
                        self.name, self._queue_sel, offset)
            return
        if offset == QUEUE_NUM:
            q.size = value
        elif offset == QUEUE_DESC_LOW:
            q.desc = (q.desc & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DESC_HIGH:
            q.desc = (q.desc & 0xFFFFFFFF) | (value << 32)
        elif offset == QUEUE_DRIVER_LOW:
            q.driver = (q.driver & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DRIVER_HIGH:
            q.driver = (q.driver & 0xFFFFFFFF) | (value << 32)
        elif offset == QUEUE_DEVICE_LOW:
            q.device = (q.device & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DEVICE_HIGH:
            q.device = (q.device & 0xFFFFFFFF) | (value << 32)

    def _make_ready(self, q: _QueueConfig) -> None:
        index = self._queue_sel
        if q.size > q.max_size:
            self._fail(f"queue {index}: size {q.size} exceeds the maximum {q.max_size}")
            return
        try:
            q.queue = Virtqueue(self.memory, q.size, q.desc, q.driver, q.device,
                                event_idx=bool(self.driver_features & VIRTIO_F_RING_EVENT_IDX),
                                indirect=bool(self.driver_features & VIRTIO_F_RING_INDIRECT_DESC))
        except VirtqueueError as error:
            self._fail(f"queue {index}: {error}")
            return
        q.ready = True

    def _write_status(self, value: int) -> None:
        if value == 0:
            if self.activated:
                try:
                    self.device.reset()
                except Exception:
                    log.exception("%s: device reset failed", self.name)
            self._reset_state()
            self._set_irq()
            return
        old = self.status
        if value & ~old & STATUS_FEATURES_OK:
            extra = self.driver_features & ~self._offered
            if extra or not self.driver_features & VIRTIO_F_VERSION_1:
                # Leave FEATURES_OK clear: the driver re-reads Status and gives up.
                log.error("%s: driver accepted features 0x%x not offered (or no VERSION_1)",
                          self.name, extra)
                value &= ~STATUS_FEATURES_OK
        # DEVICE_NEEDS_RESET is the device's bit; the driver cannot set or clear it.
        self.status = (value & ~STATUS_DEVICE_NEEDS_RESET) | (old & STATUS_DEVICE_NEEDS_RESET)
        if value & STATUS_DRIVER_OK and not self.activated and not self.broken:
            self._activate()

    def _activate(self) -> None:
        if not self.status & STATUS_FEATURES_OK:
            self._fail("DRIVER_OK without FEATURES_OK")
            return
        missing = [i for i, q in enumerate(self.queues) if not q.ready]
        if missing:
            self._fail(f"DRIVER_OK with queue(s) {missing} not ready")
            return
        self.activated = True
        queues = [q.queue for q in self.queues]
        try:
            self.device.activate(self.memory, queues, self._raise_vring)  # type: ignore[arg-type]
        except VirtqueueError as error:
            self._fail(f"malformed guest data at activation: {error}")
        except Exception as error:
            log.exception("%s: activate failed", self.name)
            self._device_error(error)

    def _notify(self, index: int) -> None:
        if not self.activated or self.broken:
            return
        if index >= len(self.queues):
            log.warning("%s: notify for queue %d, which does not exist", self.name, index)
            return
        try:
            self.device.notify(index)
        except VirtqueueError as error:
            self._fail(f"queue {index}: {error}")
        except Exception as error:
            log.exception("%s: notify(%d) failed", self.name, index)
            self._device_error(error)
