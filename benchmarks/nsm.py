"""NSM benchmark. Device level: host time the device spends per request through the
real virtio path (a split virtqueue in guest RAM, request + response chains, used ring,
interrupt), as the guest driver drives it. Guest level (when build/guest/attest.eif
exists): attest.eif's kernel and rootfs with a command that loops `nsm attest` (one
process per document, as a shell script would) and then reads 100 GetRandom responses
in one process, timed between console markers, plus the device's own share of that time.
Prints figures; never fails on time.

Run: .venv/bin/python benchmarks/nsm.py [--seconds S] [--guest-count N] [--no-guest]
"""
from __future__ import annotations

import argparse
import re
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2  # noqa: E402

from devices.nsm import NsmDevice, NsmHandler, PcrBank  # noqa: E402
from devices.virtio.queue import Virtqueue  # noqa: E402
from nitro_emu.attestation.ca import LocalCA  # noqa: E402
from board.memory import GuestRam  # noqa: E402
from eif.pcr import pcr_from_digest

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
        bank.set_initial(i, pcr_from_digest(bytes([i])))
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


ROOT = Path(__file__).resolve().parent.parent
TARGET_DOCUMENTS_PER_S = 1500   # from one guest process (the figure)
ATTEST_EIF = ROOT / "build" / "guest" / "attest.eif"


def _loop_eif(work: Path, count: int) -> Path:
    """attest.eif with a third ramdisk whose /cmd replaces the image's command (a later
    initramfs archive overwrites a file of the same name)."""
    from eif import read_eif
    from eif.builder import build_eif
    from eif import cpio

    image = read_eif(ATTEST_EIF)
    raw = ATTEST_EIF.read_bytes()
    (work / "kernel").write_bytes(image.read_kernel())
    ramdisks = []
    for i, section in enumerate(image.ramdisk_sections):
        path = work / f"ramdisk{i}"
        path.write_bytes(raw[section.offset:section.offset + section.size])
        ramdisks.append(path)
    script = ("echo BENCH-START; i=0; "
              f"while [ $i -lt {count} ]; do nsm attest --nonce 00 >/dev/null || exit 1; "
              "i=$((i+1)); done; echo BENCH-ATTEST-END; "
              f"nsm attest --count {count} --nonce 00 | head -n 1 && echo BENCH-LOOP-END; "
              "nsm get-random 25600 >/dev/null && echo BENCH-RANDOM-END")
    command = "".join(s + "\n" for s in ("sh", "-c", script)).encode()
    (work / "cmd.cpio").write_bytes(cpio.newc_archive([cpio.file("cmd", command)]))
    ramdisks.append(work / "cmd.cpio")
    output = work / "attest-loop.eif"
    build_eif(output, kernel=work / "kernel", cmdline=image.cmdline,
              ramdisks=ramdisks)
    return output


def bench_guest(count: int) -> None:
    """Attestations per second as a guest program sees them, and the device's share."""
    from nitro_emu import Machine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        eif = _loop_eif(work, count)
        marks: dict[str, float] = {}
        seen = bytearray()

        def console(data: bytes) -> None:
            seen.extend(data)
            for name in re.findall(rb"BENCH-([A-Z-]+)", bytes(seen[-len(data) - 32:])):
                marks.setdefault(name.decode(), time.perf_counter())

        machine = Machine(eif, guest_cid=16, console=console, state_dir=work / "state")
        handler = machine.nsm.handler
        spent = {"attest": [0, 0.0], "other": [0, 0.0]}
        handle = handler.handle

        def timed(request: bytes) -> bytes:
            start = time.perf_counter()
            try:
                return handle(request)
            finally:
                kind = "attest" if request[2:13] == b"Attestation" else "other"
                spent[kind][0] += 1
                spent[kind][1] += time.perf_counter() - start

        handler.handle = timed
        try:
            result = machine.run(timeout=600)
        finally:
            machine.close()
    if "ATTEST-END" not in marks or "START" not in marks:
        tail = bytes(seen[-1500:]).decode("utf-8", "replace")
        print(f"guest benchmark did not complete: {result.reason}: {result.message}\n{tail}")
        return
    elapsed = marks["ATTEST-END"] - marks["START"]
    n, device = spent["attest"]
    print(f"guest attest      {count / elapsed:10.1f} documents/s   "
          f"{elapsed / count * 1e3:8.2f} ms/document (nsm process per document), "
          f"device {device / max(n, 1) * 1e3:.2f} ms/document ({n} served)")
    if "LOOP-END" in marks:
        elapsed = marks["LOOP-END"] - marks["ATTEST-END"]
        print(f"guest attest loop {count / elapsed:10.1f} documents/s   "
              f"{elapsed / count * 1e3:8.2f} ms/document (one nsm process, --count {count}; "
              f"target >= {TARGET_DOCUMENTS_PER_S}/s)")
    if "RANDOM-END" in marks:
        elapsed = marks["RANDOM-END"] - marks.get("LOOP-END", marks["ATTEST-END"])
        print(f"guest get-random  {100 / elapsed:10.1f} requests/s    "
              f"{elapsed / 100 * 1e3:8.2f} ms/request (100 ioctls in one process)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case")
    parser.add_argument("--guest-count", type=int, default=200,
                        help="documents requested by the guest")
    parser.add_argument("--no-guest", action="store_true", help="device level only")
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
    if args.no_guest:
        return 0
    if not ATTEST_EIF.exists():
        print(f"guest benchmark skipped: {ATTEST_EIF} missing (make guest)")
        return 0
    bench_guest(args.guest_count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
