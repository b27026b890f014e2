"""Soak and load: several enclaves for many minutes under continuous vsock echo traffic
(random sizes, random host aborts) while each attests once a second. Prints figures; never
passes or fails on time. Not part of `make bench` (it runs for --minutes).

    .venv/bin/python benchmarks/soak.py [--enclaves 4] [--minutes 10] [--image build/guest/soak.eif]

Each enclave is a `python -m nitro_emu soak.eif` process (guest: `vsock-echo 5000` plus a
loop of `nsm attest --nonce <counter>; sleep 1`). Host side, per enclave, one thread keeps
an echo connection going: it sends 1 byte to 1 MiB of random data and checks every byte
that comes back; one connection in eight is aborted mid-transfer (RST) on purpose. Every
minute the emulators' RSS and open descriptors are sampled from /proc. At the end every
attestation document on the consoles is verified against the local root CA, with its
nonce, and the counters must run without a gap.
"""
from __future__ import annotations

import argparse
import base64
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nitro_emu.attestation.ca import LocalCA  # noqa: E402
from nitro_emu.attestation.verify import verify_document  # noqa: E402

GUEST_PORT = 5000
MAX_MESSAGE = 1 << 20
ABORT_ONE_IN = 8
DOCUMENT = re.compile(rb"-----BEGIN ATTESTATION DOCUMENT-----\s*(.*?)\s*"
                      rb"-----END ATTESTATION DOCUMENT-----", re.S)


@dataclass
class Traffic:
    """What one host thread moved through one enclave."""

    bytes_checked: int = 0
    connections: int = 0
    aborted: int = 0
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def echo_once(port: int, rng: random.Random, traffic: Traffic) -> None:
    """One connection: send a random message, read it back and compare, or abort."""
    size = rng.choice((1, rng.randint(2, 4096), rng.randint(4097, MAX_MESSAGE)))
    message = rng.randbytes(size)
    abort_at = rng.randint(0, size) if rng.randrange(ABORT_ONE_IN) == 0 else None
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        traffic.connections += 1
        received = bytearray()
        sent = 0
        while len(received) < size:
            if sent < size:
                sent += sock.send(message[sent:sent + 65536])
            if abort_at is not None and len(received) >= abort_at:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                traffic.aborted += 1
                break
            sock.settimeout(0 if sent < size else 60)
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            finally:
                sock.settimeout(60)
            if not chunk:
                traffic.errors.append(f"connection closed after {len(received)} of {size} bytes")
                return
            received += chunk
        checked = len(received)
        if bytes(received) != message[:checked]:
            traffic.errors.append(f"echo of {size} bytes differs")
            return
        traffic.bytes_checked += checked


def drive(port: int, seed: int, until: float, traffic: Traffic) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        try:
            echo_once(port, rng, traffic)
        except OSError as error:
            traffic.errors.append(f"{type(error).__name__}: {error} (connection "
                                  f"{traffic.connections}, {time.monotonic() - until:+.0f} s)")
            time.sleep(1)


GUEST_RAM_KIB = 512 * 1024   # the machine's default --memory


def resident_parts(pid: int) -> tuple[int, int]:
    """KiB resident in (the guest RAM mapping, TCG's translated-code buffer: the one rwx
    mapping). Guest RAM grows as the guest's allocator reaches fresh pages, up to
    --memory; the code buffer grows as TCG translates, up to vcpu.TCG_BUFFER_BYTES, then
    is flushed. Neither is the emulator's own heap."""
    guest = code = 0
    size, perms = None, ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 2 and len(fields[1]) == 4:
            perms = fields[1]
        elif line.startswith("Size:"):
            size = int(fields[1])
        elif line.startswith("Rss:"):
            if size == GUEST_RAM_KIB:
                guest += int(fields[1])
            elif perms == "rwxp":
                code += int(fields[1])
    return guest, code


def sample(pid: int) -> tuple[int, int, int, int]:
    """(RSS, guest RAM part, translated-code part, all in KiB; open descriptors)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    guest, code = resident_parts(pid)
    return rss, guest, code, len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_echo(port: int, process: subprocess.Popen, limit: float = 120) -> None:
    """Until the guest's echo server answers (the host listener accepts from the start;
    until the guest listens, the emulator resets those connections)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"an enclave exited during boot (status {process.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"?")
                if sock.recv(1) == b"?":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the enclave behind port {port} never echoed")


def check_documents(console: bytes, roots) -> tuple[int, list[str]]:
    """Verify every document on a console; nonces must count 1, 2, 3, ... without gaps."""
    problems = []
    documents = DOCUMENT.findall(console)
    for expected, encoded in enumerate(documents, start=1):
        nonce = bytes.fromhex(f"{expected:08x}")
        try:
            verify_document(base64.b64decode(b"".join(encoded.split())), roots, nonce=nonce)
        except Exception as error:  # noqa: BLE001 - every failure is a figure here
            problems.append(f"document {expected}: {error}")
    return len(documents), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enclaves", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--image", type=Path, default=ROOT / "build" / "guest" / "soak.eif")
    args = parser.parse_args()
    if not args.image.is_file():
        raise SystemExit(f"{args.image} is missing: make guest")
    work = Path(tempfile.mkdtemp(prefix="nitro-emu-soak-"))
    env = dict(os.environ, NITRO_EMU_STATE_DIR=str(work / "state"))
    enclaves = []
    for index in range(args.enclaves):
        port = free_port()
        console = open(work / f"console-{index}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "nitro_emu", str(args.image), "--guest-cid", str(20 + index),
             "--publish", f"127.0.0.1:{port}:{GUEST_PORT}"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        enclaves.append((process, port, console))
    for process, port, _ in enclaves:
        wait_for_echo(port, process)
    started = time.monotonic()
    until = started + args.minutes * 60
    traffic = [Traffic() for _ in enclaves]
    threads = [threading.Thread(target=drive, args=(port, 1000 + i, until, traffic[i]), daemon=True)
               for i, (_, port, _) in enumerate(enclaves)]
    for thread in threads:
        thread.start()
    series: list[list[tuple[int, int, int, int]]] = [[] for _ in enclaves]
    next_sample = started
    while time.monotonic() < until:
        if time.monotonic() >= next_sample:
            for i, (process, _, _) in enumerate(enclaves):
                series[i].append(sample(process.pid) if process.poll() is None else (0, 0, 0, 0))
            next_sample += 60
        time.sleep(1)
    for thread in threads:
        thread.join()
    for i, (process, _, _) in enumerate(enclaves):
        series[i].append(sample(process.pid) if process.poll() is None else (0, 0, 0, 0))
    exits = []
    for process, _, console in enclaves:
        process.send_signal(signal.SIGINT)
        exits.append(process.wait(timeout=60))
        console.close()
    roots = [LocalCA.load_or_create(work / "state").certificate]
    elapsed = time.monotonic() - started
    print(f"{args.enclaves} enclaves for {elapsed / 60:.1f} min, work dir {work}")
    total_errors = 0
    for i, t in enumerate(traffic):
        count, problems = check_documents((work / f"console-{i}.log").read_bytes(), roots)
        total_errors += len(t.errors) + len(problems)
        rss = " ".join(f"{r // 1024}" for r, _, _, _ in series[i])
        guest = " ".join(f"{g // 1024}" for _, g, _, _ in series[i])
        code = " ".join(f"{c // 1024}" for _, _, c, _ in series[i])
        own = " ".join(f"{(r - g - c) // 1024}" for r, g, c, _ in series[i])
        fds = " ".join(f"{f}" for _, _, _, f in series[i])
        print(f"enclave {i}: {t.bytes_checked / 2**20:.1f} MiB echoed and checked over "
              f"{t.connections} connections ({t.aborted} aborted on purpose); "
              f"{count} attestation documents ({count / elapsed:.2f}/s), "
              f"{len(problems)} bad; {len(t.errors)} echo errors; exit status {exits[i]}")
        print(f"  RSS MiB per minute: {rss}")
        print(f"    guest RAM touched by the guest: {guest}")
        print(f"    translated code (bounded, flushed when full): {code}")
        print(f"    the rest (the emulator's own): {own}")
        print(f"  open fds per minute: {fds}")
        for problem in (t.errors + problems)[:5]:
            print(f"  error: {problem}")
    print(f"errors in all: {total_errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
