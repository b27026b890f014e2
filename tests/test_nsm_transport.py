"""The NSM behind the real virtio-mmio transport, driven like Linux's drivers/misc/nsm.c
(probe, one request chain + one 0x3000-byte response chain, kick, interrupt, two
get_buf calls in order), running the checks of AWS's nsm-check conformance tool."""
from __future__ import annotations

import logging

import cbor2
import pytest

from devices.nsm import NsmDevice
from devices.virtio import mmio as M
from devices.virtio.device import VIRTIO_F_VERSION_1
from support.vsock_driver import Allocator, Level, MmioDriver
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.factory import create_nsm_device
from nitro_emu.attestation.verify import verify_document
from board.memory import GuestRam
from eif.pcr import pcr_from_digest

REQ_BUF, RESP_BUF, RESPONSE_SIZE = 0x80000, 0x81000, 0x3000


class KernelNsm:
    """What drivers/misc/nsm.c does per ioctl/hwrng read."""

    def __init__(self, transport: M.VirtioMmioTransport, ram: GuestRam, irq: Level,
                 features: int, ring_area: int = 0x100000) -> None:
        self.ram, self.irq = ram, irq
        self.driver = MmioDriver(transport, ram, Allocator(ram, ring_area), features)
        self.queue = self.driver.queues[0]

    def raw(self, request: bytes, response_size: int = RESPONSE_SIZE) -> bytes:
        self.ram.write(REQ_BUF, request)
        self.queue.add([(REQ_BUF, len(request))], [], "request")
        self.queue.add([], [(RESP_BUF, response_size)], "response")
        self.driver.kick(0)
        assert self.irq.high, "no used-buffer interrupt"
        assert self.driver.ack_interrupt() == M.INT_VRING and not self.irq.high
        used = self.queue.get_used()
        # like virtqueue_get_buf with EVENT_IDX: ask for an interrupt at the next used entry
        self.ram.write_u16(self.queue.avail + 4 + 2 * self.queue.size, self.queue.last_used)
        assert [token for token, _ in used] == ["request", "response"]
        length = min(used[1][1], RESPONSE_SIZE)
        return self.ram.read(RESP_BUF, length)

    def ask(self, request: object) -> object:
        return cbor2.loads(self.raw(cbor2.dumps(request)))


@pytest.fixture(params=[M.RING_FEATURES, VIRTIO_F_VERSION_1], ids=["ring-features", "plain"])
def guest(request, tmp_path):
    device = create_nsm_device(pcr0=pcr_from_digest(b"k"), pcr1=pcr_from_digest(b"b"), pcr2=pcr_from_digest(b"a"),
                               pcr8=None, parent_role=None, parent_id="i-0123456789abcdef0",
                               debug_mode=False, state_dir=tmp_path)
    ram, irq = GuestRam(4 << 20), Level()
    transport = M.VirtioMmioTransport(device, ram, irq)
    assert transport.mmio_read(M.DEVICE_ID, 4) == 33
    kernel = KernelNsm(transport, ram, irq, request.param)
    return kernel, transport, LocalCA.load_or_create(tmp_path)


def test_nsm_check_sequence(guest):
    nsm, transport, ca = guest
    description = nsm.ask("DescribeNSM")["DescribeNSM"]
    assert description["max_pcrs"] == 32 and description["locked_pcrs"] == list(range(16))
    assert description["digest"] == "SHA384"
    for index in range(32):
        pcr = nsm.ask({"DescribePCR": {"index": index}})["DescribePCR"]
        assert pcr["lock"] == (index < 16) and len(pcr["data"]) == 48
    assert nsm.ask({"DescribePCR": {"index": 4}})["DescribePCR"]["data"] != bytes(48)
    assert nsm.ask({"DescribePCR": {"index": 3}})["DescribePCR"]["data"] == bytes(48)
    for index in range(16):
        assert "Error" in nsm.ask({"LockPCR": {"index": index}})
        assert "Error" in nsm.ask({"ExtendPCR": {"index": index, "data": b"x"}})
    for index in range(16, 32):
        nsm.ask({"ExtendPCR": {"index": index, "data": b"data"}})
        assert nsm.ask({"LockPCR": {"index": index}}) == "LockPCR"
        assert "Error" in nsm.ask({"ExtendPCR": {"index": index, "data": b"x"}})
    assert "Error" in nsm.ask({"LockPCRs": {"range": 33}})
    assert nsm.ask({"LockPCRs": {"range": 32}}) == "LockPCRs"
    blob = bytes(range(256)) * 4
    document = nsm.ask({"Attestation": {"user_data": blob, "nonce": blob,
                                        "public_key": blob}})["Attestation"]["document"]
    result = verify_document(document, [ca.certificate], nonce=blob, user_data=blob,
                             public_key=blob)
    assert sorted(result.payload["pcrs"]) == list(range(32))
    assert not transport.broken


def test_hwrng_read_prefix(guest):
    nsm, _, _ = guest
    raw = nsm.raw(bytes.fromhex("6947657452616e646f6d"))
    assert raw[:19] == bytes.fromhex("a16947657452616e646f6da16672616e646f6d")
    assert raw[19:22] == b"\x59\x01\x00" and len(raw) == 22 + 256


def test_request_over_4096_bytes(guest):
    nsm, _, _ = guest
    assert cbor2.loads(nsm.raw(b"\xa0" * 4097)) == {"Error": "InputTooLarge"}


def test_malformed_chain_breaks_only_the_device(guest, caplog):
    nsm, transport, _ = guest
    nsm.queue.add([], [(RESP_BUF, 16)], "response without request")
    with caplog.at_level(logging.ERROR, logger="nitro_emu.virtio"):
        nsm.driver.kick(0)
    assert transport.broken and "NSM chain" in caplog.text


def test_requests_after_device_reset_and_reprobe(guest):
    nsm, transport, _ = guest
    nsm.ask({"ExtendPCR": {"index": 20, "data": b"kept"}})
    value = nsm.ask({"DescribePCR": {"index": 20}})["DescribePCR"]["data"]
    transport.mmio_write(M.STATUS, 4, 0)
    again = KernelNsm(transport, nsm.ram, nsm.irq, M.RING_FEATURES, ring_area=0x200000)
    assert again.ask({"DescribePCR": {"index": 20}})["DescribePCR"]["data"] == value
    assert isinstance(transport.device, NsmDevice)


class HoldDriverOk:
    """The transport, except that the driver's DRIVER_OK write is held back until
    `release()`: lets a test kick in between, as Linux's nsm hwrng thread does."""

    def __init__(self, transport: M.VirtioMmioTransport) -> None:
        self.transport = transport
        self.held: int | None = None
        self.mmio_read = transport.mmio_read

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == M.STATUS and value & M.STATUS_DRIVER_OK and self.held is None:
            self.held = value
            return
        self.transport.mmio_write(offset, size, value)

    def release(self) -> None:
        assert self.held is not None
        self.transport.mmio_write(M.STATUS, 4, self.held)


def test_request_kicked_before_driver_ok_is_served_at_activation(tmp_path):
    """drivers/misc/nsm.c registers its hwrng before the device is ready; the hwrng
    thread's first GetRandom can be kicked before DRIVER_OK (seen booting attest.eif)."""
    device = create_nsm_device(pcr0=pcr_from_digest(b"k"), pcr1=pcr_from_digest(b"b"), pcr2=pcr_from_digest(b"a"),
                               pcr8=None, parent_role=None, parent_id=None, debug_mode=False,
                               state_dir=tmp_path)
    ram, irq = GuestRam(4 << 20), Level()
    transport = M.VirtioMmioTransport(device, ram, irq)
    held = HoldDriverOk(transport)
    driver = MmioDriver(held, ram, Allocator(ram, 0x100000), M.RING_FEATURES)
    queue = driver.queues[0]
    ram.write(REQ_BUF, bytes.fromhex("6947657452616e646f6d"))
    queue.add([(REQ_BUF, 10)], [], "request")
    queue.add([], [(RESP_BUF, RESPONSE_SIZE)], "response")
    driver.kick(0)                                   # before DRIVER_OK: not live yet
    assert queue.get_used() == [] and not irq.high
    held.release()
    assert irq.high and not transport.broken
    used = queue.get_used()
    assert [token for token, _ in used] == ["request", "response"] and used[1][1] == 22 + 256
