"""NSM device benchmark: host time the device spends per request, measured through the
real virtio path (a split virtqueue in guest RAM, request + response chains, used ring,
interrupt), as the guest driver would drive it. Prints figures; never fails on time.

Run: .venv/bin/python benchmarks/nsm.py [--seconds S]
"""
from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2  # noqa: E402

from devices.nsm import NsmDevice, NsmHandler, PcrBank, measure  # noqa: E402
from devices.virtio.queue import Virtqueue  # noqa: E402
from nitro_emu.attestation.ca import LocalCA  # noqa: E402
from nitro_emu.memory import GuestRam  # noqa: E402

QSIZE = 8
DESC, AVAIL, USED, REQ, RESP = 0x1000, 0x2000, 0x3000, 0x10000, 0x20000
F_WRITE = 2


class LoopDriver:
    """Posts the same request/response pair again and again, like drivers/misc/nsm.c."""

    def __init__(self, ram: GuestRam, request: bytes) -> None:
        self.ram = ram
        ram.write(REQ, request)
        ram.write(DESC, struct.pack("<QIHH", REQ, len(request), 0, 0))
        ram.write(DESC + 16, struct.pack("<QIHH", RESP, 0x3000, F_WRITE, 0))
        self.avail = 0

    def post(self) -> None:
        for head in (0, 1):
            self.ram.write_u16(AVAIL + 4 + 2 * (self.avail % QSIZE), head)
            self.avail += 1
        self.ram.write_u16(AVAIL + 2, self.avail & 0xFFFF)

    def response_length(self) -> int:
        slot = USED + 4 + 8 * ((self.avail - 1) % QSIZE)
        return struct.unpack("<II", self.ram.read(slot, 8))[1]


def bench(name: str, request: bytes, seconds: float) -> None:
    ram = GuestRam(1 << 20)
    bank = PcrBank()
    for i in range(3):
        bank.set_initial(i, measure(bytes([i])))
    bank.lock_range(16)
    module_id = "i-0123456789abcdef0-enc0123456789abcdef"
    device = NsmDevice(NsmHandler(bank, LocalCA.create().signer(module_id), module_id))
    interrupts = [0]

    def interrupt() -> None:
        interrupts[0] += 1

    device.activate(ram, [Virtqueue(ram, QSIZE, DESC, AVAIL, USED)], interrupt)
    driver = LoopDriver(ram, request)
    driver.post()
    device.notify(0)                           # warm-up (first leaf certificate etc.)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        driver.post()
        device.notify(0)
        count += 1
        if count % 16 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    size = driver.response_length()
    assert interrupts[0] == count + 1 and size > 0
    print(f"nsm {name:<12} {count / elapsed:10.0f} requests/s   "
          f"{elapsed / count * 1e6:8.1f} us/request   response {size} bytes")


def bench_verify(seconds: float) -> None:
    """Host-side verifier speed on this device's documents (chain of 3, ES384)."""
    from nitro_emu.attestation.verify import verify_document
    ca = LocalCA.create()
    bank = PcrBank()
    bank.lock_range(16)
    handler = NsmHandler(bank, ca.signer("m"), "m")
    response = cbor2.loads(handler.handle(cbor2.dumps({"Attestation": {"nonce": b"n"}})))
    document = response["Attestation"]["document"]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        verify_document(document, [ca.certificate], nonce=b"n")
        count += 1
    elapsed = time.perf_counter() - start
    print(f"verify document  {count / elapsed:10.0f} documents/s  "
          f"{elapsed / count * 1e6:8.1f} us/document  ({len(document)} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case")
    args = parser.parse_args(argv)
    cases = [
        ("Attestation", {"Attestation": {"user_data": b"u" * 64, "nonce": b"n" * 32,
                                         "public_key": None}}),
        ("DescribePCR", {"DescribePCR": {"index": 0}}),
        ("ExtendPCR", {"ExtendPCR": {"index": 16, "data": b"x" * 48}}),
        ("GetRandom", "GetRandom"),
        ("DescribeNSM", "DescribeNSM"),
    ]
    for name, request in cases:
        bench(name, cbor2.dumps(request), args.seconds)
    bench_verify(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
