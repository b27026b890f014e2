"""The NSM virtio device driven through real split virtqueues in guest RAM by a small
Python driver that behaves like Linux's drivers/misc/nsm.c (request chain, response
chain, kick, expect both back in order)."""
from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.nsm import NsmDevice, NsmHandler, PcrBank
from devices.virtio.queue import Virtqueue, VirtqueueError
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.verify import verify_document
from board.memory import GuestRam

CA = LocalCA.create()
SIGNER = CA.signer("m")
QSIZE = 8
DESC, AVAIL, USED, DATA = 0x1000, 0x2000, 0x3000, 0x10000
F_NEXT, F_WRITE = 1, 2


class Driver:
    """Posts buffers the way the kernel driver does and reads the used ring."""

    def __init__(self, ram: GuestRam) -> None:
        self.ram = ram
        self.next_desc = 0
        self.avail_idx = 0
        self.used_seen = 0
        self.data = DATA

    def _alloc(self, size: int) -> int:
        addr = self.data
        self.data += (size + 15) & ~15
        return addr

    def chain(self, parts: list[tuple[bytes | int, bool]]) -> int:
        """parts: (bytes to place, or a size to reserve, device-writable?)."""
        head = self.next_desc
        for i, (content, writable) in enumerate(parts):
            size = content if isinstance(content, int) else len(content)
            addr = self._alloc(size)
            if not isinstance(content, int):
                self.ram.write(addr, content)
            flags = (F_WRITE if writable else 0) | (F_NEXT if i + 1 < len(parts) else 0)
            index = self.next_desc
            self.next_desc += 1
            self.ram.write(DESC + 16 * index,
                           struct.pack("<QIHH", addr, size, flags, self.next_desc % QSIZE))
        self.ram.write_u16(AVAIL + 4 + 2 * (self.avail_idx % QSIZE), head)
        self.avail_idx += 1
        self.ram.write_u16(AVAIL + 2, self.avail_idx)
        return head

    def used(self) -> list[tuple[int, int]]:
        out = []
        idx = self.ram.read_u16(USED + 2)
        while self.used_seen != idx:
            slot = USED + 4 + 8 * (self.used_seen % QSIZE)
            out.append(struct.unpack("<II", self.ram.read(slot, 8)))
            self.used_seen += 1
        return out

    def buffer_of(self, desc_index: int, length: int) -> bytes:
        addr = struct.unpack("<Q", self.ram.read(DESC + 16 * desc_index, 8))[0]
        return self.ram.read(addr, length)

    def reset_ring(self) -> None:
        self.next_desc = 0


@pytest.fixture
def rig():
    ram = GuestRam(1 << 20)
    bank = PcrBank()
    bank.lock_range(16)
    device = NsmDevice(NsmHandler(bank, CA.signer("i-0123456789abcdef0-encaaaa"),
                                  "i-0123456789abcdef0-encaaaa"))
    queue = Virtqueue(ram, QSIZE, DESC, AVAIL, USED)
    interrupts = []
    device.activate(ram, [queue], lambda: interrupts.append(1))
    return device, Driver(ram), interrupts


def transact(device, driver, request: bytes, response_size: int = 0x3000) -> bytes:
    driver.reset_ring()
    req_head = driver.chain([(request, False)])
    resp_head = driver.chain([(response_size, True)])
    device.notify(0)
    used = driver.used()
    assert [u[0] for u in used] == [req_head, resp_head]       # request first, then response
    assert used[0][1] == 0
    return driver.buffer_of(resp_head, used[1][1])


def test_device_identity():
    device = NsmDevice(NsmHandler(PcrBank(), CA.signer("m"), "m"))
    assert device.device_id == 33 and len(device.queue_max_sizes) == 1
    assert device.queue_max_sizes[0] >= 2 and device.device_features() == 0


def test_requests_over_the_queue(rig):
    device, driver, interrupts = rig
    assert cbor2.loads(transact(device, driver, cbor2.dumps("DescribeNSM")))[
        "DescribeNSM"]["max_pcrs"] == 32
    assert interrupts == [1]
    nonce = b"fresh nonce"
    raw = transact(device, driver, cbor2.dumps({"Attestation": {"nonce": nonce}}))
    document = cbor2.loads(raw)["Attestation"]["document"]
    verify_document(document, [CA.certificate], nonce=nonce)
    random = transact(device, driver, cbor2.dumps("GetRandom"))
    assert len(random) == 22 + 256 and device.requests_served == 3


def test_old_driver_small_buffer_gets_buffer_too_small(rig):
    device, driver, _ = rig
    raw = transact(device, driver, cbor2.dumps({"Attestation": {}}), response_size=512)
    assert cbor2.loads(raw) == {"Error": "BufferTooSmall"}
    # a buffer too small even for the error gets nothing written, never an overflow
    driver.reset_ring()
    driver.chain([(cbor2.dumps("GetRandom"), False)])
    head = driver.chain([(4, True)])
    device.notify(0)
    assert driver.used()[-1] == (head, 0)
    assert driver.buffer_of(head, 16) == bytes(16)     # the buffer and what follows it


def test_oversized_request_chain(rig):
    device, driver, _ = rig
    raw = transact(device, driver, b"\x00" * 5000)
    assert cbor2.loads(raw) == {"Error": "InputTooLarge"}


def test_response_chain_posted_later_is_waited_for(rig):
    device, driver, interrupts = rig
    driver.chain([(cbor2.dumps("DescribeNSM"), False)])
    device.notify(0)
    assert driver.used() == [] and interrupts == []
    resp = driver.chain([(0x3000, True)])
    device.notify(0)
    used = driver.used()
    assert [u[0] for u in used] == [0, resp] and used[1][1] > 0


def test_single_chain_with_request_and_response(rig):
    device, driver, _ = rig
    head = driver.chain([(cbor2.dumps("DescribeNSM"), False), (0x1000, True)])
    device.notify(0)
    ((got_head, written),) = driver.used()
    assert got_head == head
    assert "DescribeNSM" in cbor2.loads(driver.buffer_of(head + 1, written))


def test_malformed_chains_raise_virtqueue_error(rig):
    device, driver, _ = rig
    driver.chain([(0x100, True)])                                # response with no request
    with pytest.raises(VirtqueueError):
        device.notify(0)


def test_response_chain_with_readable_part_is_refused(rig):
    device, driver, _ = rig
    driver.chain([(cbor2.dumps("GetRandom"), False)])
    driver.chain([(b"junk", False)])
    with pytest.raises(VirtqueueError):
        device.notify(0)


def test_back_to_back_requests_are_served_in_order(rig):
    device, driver, interrupts = rig
    heads = []
    for index in (16, 17):
        heads.append(driver.chain([(cbor2.dumps({"ExtendPCR": {"index": index, "data": b"a"}}),
                                    False)]))
        heads.append(driver.chain([(0x200, True)]))
    device.notify(0)
    assert [u[0] for u in driver.used()] == heads and interrupts == [1]


def test_reset_stops_service(rig):
    device, driver, interrupts = rig
    device.reset()
    driver.chain([(cbor2.dumps("DescribeNSM"), False)])
    driver.chain([(0x3000, True)])
    device.notify(0)
    assert driver.used() == [] and interrupts == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.builds(cbor2.dumps, st.sampled_from(
           ["DescribeNSM", "GetRandom", {"Attestation": {}}, {"DescribePCR": {"index": 1}}])),
       st.integers(0, 0x3000))
def test_any_request_and_buffer_size(request_, response_size):
    ram = GuestRam(1 << 20)
    bank = PcrBank()
    bank.lock_range(16)
    device = NsmDevice(NsmHandler(bank, SIGNER, "m"))
    device.activate(ram, [Virtqueue(ram, QSIZE, DESC, AVAIL, USED)], lambda: None)
    driver = Driver(ram)
    req_head = driver.chain([(request_, False)] if request_ else [(1, False)])
    resp_head = driver.chain([(response_size, True)])
    sentinel_at = driver.data
    ram.write(sentinel_at, b"\x5a" * 64)               # right after the response buffer
    device.notify(0)
    (req, _), (resp, written) = driver.used()
    assert (req, resp) == (req_head, resp_head) and written <= response_size
    assert ram.read(sentinel_at, 64) == b"\x5a" * 64
    if written:
        response = cbor2.loads(driver.buffer_of(resp_head, written))
        assert isinstance(response, (dict, str))
    else:
        assert response_size < len(cbor2.dumps({"Error": "BufferTooSmall"}))


def test_answers_before_a_bad_chain_still_get_their_interrupt(rig):
    device, driver, interrupts = rig
    driver.chain([(cbor2.dumps("DescribeNSM"), False)])
    driver.chain([(0x1000, True)])
    driver.chain([(0x100, True)])                        # malformed: no request
    with pytest.raises(VirtqueueError):
        device.notify(0)
    assert len(driver.used()) == 2 and interrupts == [1]
