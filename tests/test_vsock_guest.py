"""vsock with the real Linux guest (images from `make guest`): the boot heartbeat, host ->
guest publishing through echo.eif, guest -> parent forwarding with vsock-send, a refused
parent port, host sockets closed when the machine stops mid-transfer, and the run verb's
--publish address and --no-heartbeat."""
from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import threading
import time

import pytest

from devices.vsock import VsockConfig
from devices.vsock.unix_address import address as unix_address
from eif import cpio
from guest.vsock_pattern import PatternCheck, pattern
from nitro_emu import Machine
from support.images import guest_image

pytestmark = pytest.mark.guest  # boots real guest images

MB = 1 << 20


def make_machine(name_or_path, config: VsockConfig, state_dir, **options) -> Machine:
    path = name_or_path if os.path.isabs(str(name_or_path)) else guest_image(name_or_path)
    return Machine(path, guest_cid=16, console=io.BytesIO(), state_dir=state_dir,
                   vsock=config, **options)


def wait_for(machine: Machine, text: bytes, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while text not in machine.console_output:
        if time.monotonic() > end:
            raise TimeoutError(f"{text!r} never appeared on the console")
        time.sleep(0.05)


def echo_client(address, data: bytes) -> bytes:
    with socket.create_connection(address, timeout=120) as c:
        sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while chunk := c.recv(1 << 20):
            got += chunk
        sender.join()
    return bytes(got)


def run_with(machine: Machine, client, timeout: float = 300):
    """Run the machine on this thread while `client()` works on another and then stops it."""
    outcome = {}

    def work():
        try:
            outcome["value"] = client()
        except BaseException as error:   # reported on the test thread
            outcome["error"] = error
        finally:
            machine.stop()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    result = machine.run(timeout=timeout)
    thread.join(30)
    if "error" in outcome:
        raise outcome["error"]
    return result, outcome.get("value")


def test_echo_guest_heartbeat_10mb_and_50_connections(state_dir):
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5000")
    machine = make_machine("echo.eif", config, state_dir)
    try:
        address = machine.vsock.muxer.published[0][1]
        blob = os.urandom(10 * MB)
        small = [os.urandom(20_000 + i) for i in range(50)]

        def client():
            wait_for(machine, b"vsock-echo: listening on port 5000")
            big = echo_client(address, blob)
            # Open the 50 in waves of 10 (vsock-echo's listen backlog is 16: a burst of 50
            # REQUESTs would overflow it and the guest kernel itself would answer RST), then
            # run all 50 transfers at the same time.
            socks = []
            for wave in range(5):
                batch = [socket.create_connection(address, timeout=120) for _ in range(10)]
                for c in batch:
                    c.sendall(b"!")
                for c in batch:
                    assert c.recv(1) == b"!"
                socks += batch
            results = [None] * 50

            def one(i):
                c = socks[i]
                sender = threading.Thread(
                    target=lambda: (c.sendall(small[i]), c.shutdown(socket.SHUT_WR)))
                sender.start()
                got = bytearray()
                while chunk := c.recv(1 << 20):
                    got += chunk
                sender.join()
                c.close()
                results[i] = bytes(got)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return big, results

        result, (big, results) = run_with(machine, client)
        assert machine.vsock.muxer.heartbeats == 1              # init's boot heartbeat answered
        assert hashlib.sha256(big).digest() == hashlib.sha256(blob).digest()
        assert results == small
    finally:
        machine.close()


def build_sender_eif(tmp_path, command: str):
    """echo.eif's kernel and ramdisks, with the application's /cmd replaced."""
    from eif.builder import build_eif
    source = guest_image("echo")
    entries = []
    for entry in cpio.read_newc((source / "ramdisk-2.cpio").read_bytes()):
        if entry.path == "cmd":
            entry = cpio.file("cmd", f"sh\n-c\n{command}\n".encode())
        entries.append(entry)
    ramdisk = tmp_path / "ramdisk-2.cpio"
    ramdisk.write_bytes(cpio.newc_archive(entries))
    out = tmp_path / "vsock-test.eif"
    build_eif(out, kernel=source / "bzImage", cmdline=(source / "cmdline").read_text(),
              ramdisks=[source / "ramdisk-1.cpio", ramdisk], name="vsock-test")
    return out


def test_guest_send_to_host_refused_port_and_host_to_guest(state_dir, tmp_path):
    size = 20 * MB
    eif = build_sender_eif(
        tmp_path, f"vsock-send 3 7000 {size}; vsock-send 3 7002 10; vsock-recv 5001")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = {}

    def sink():
        conn, _ = listener.accept()
        check = PatternCheck()
        with conn:
            while data := conn.recv(1 << 20):
                check.feed(data)
        received.update(count=check.count, first_wrong=check.first_wrong)

    threading.Thread(target=sink, daemon=True).start()
    config = VsockConfig()
    config.add_forward(f"7000=tcp:127.0.0.1:{listener.getsockname()[1]}")
    config.add_publish("127.0.0.1:0:5001")
    machine = make_machine(eif, config, state_dir)
    try:
        address = machine.vsock.muxer.published[0][1]
        outcome = {}

        def client():
            wait_for(machine, b"vsock-recv: listening on port 5001")
            with socket.create_connection(address, timeout=120) as c:
                for offset in range(0, size, MB):
                    c.sendall(pattern(offset, min(MB, size - offset)))
            outcome["sent"] = True
            wait_for(machine, b"received ")

        result, _ = run_with(machine, client)
        console = machine.console_output.decode("utf-8", "replace")
        sent = re.search(r"sent (\d+) bytes ", console)
        assert sent, console[-2000:]
        assert int(sent.group(1)) == size == received["count"]
        assert received["first_wrong"] is None   # every byte the guest sent arrived intact
        assert "vsock-send: connect to 3:7002: Connection reset by peer" in console
        got = re.search(r"received (\d+) bytes .*\) pattern ok\b", console)
        assert got, console[-2000:]             # the guest checked every byte it received
        assert int(got.group(1)) == size
    finally:
        machine.close()
        listener.close()


def test_the_guest_receiver_reports_the_first_wrong_byte(state_dir, tmp_path):
    """vsock-recv's check is real: one flipped byte is found at its offset."""
    eif = build_sender_eif(tmp_path, "vsock-recv 5001")
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5001")
    machine = make_machine(eif, config, state_dir)
    try:
        data = bytearray(pattern(0, 3 * MB))
        data[2_345_678] ^= 0x40

        def client():
            wait_for(machine, b"vsock-recv: listening on port 5001")
            with socket.create_connection(machine.vsock.muxer.published[0][1], timeout=120) as c:
                c.sendall(data)
            wait_for(machine, b"received ")

        run_with(machine, client)
        console = machine.console_output.decode("utf-8", "replace")
        assert re.search(r"received 3145728 bytes .*\) pattern WRONG at byte 2345678\b", console), \
            console[-2000:]
    finally:
        machine.close()


def test_stopping_mid_transfer_closes_host_sockets(state_dir):
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5000")
    machine = make_machine("echo.eif", config, state_dir)
    progress = {"echoed": 0}
    reader_done = threading.Event()
    try:
        address = machine.vsock.muxer.published[0][1]

        def client():
            wait_for(machine, b"vsock-echo: listening on port 5000")
            c = socket.create_connection(address, timeout=60)
            progress["socket"] = c

            def reader():
                try:
                    while chunk := c.recv(1 << 20):
                        progress["echoed"] += len(chunk)
                    progress["how"] = "eof"
                except OSError as error:
                    progress["how"] = type(error).__name__
                reader_done.set()

            def writer():
                block = os.urandom(MB)
                try:
                    while not reader_done.is_set():
                        c.sendall(block)
                except OSError:
                    pass

            threading.Thread(target=reader, daemon=True).start()
            threading.Thread(target=writer, daemon=True).start()
            end = time.monotonic() + 120
            while progress["echoed"] < 2 * MB and time.monotonic() < end:
                time.sleep(0.01)       # then stop the machine in the middle of the stream

        run_with(machine, client)
    finally:
        machine.close()
    assert progress["echoed"] >= 2 * MB
    assert reader_done.wait(30), "the host socket stayed open after the machine stopped"
    assert progress["how"] in ("eof", "ConnectionResetError")
    progress["socket"].close()


def test_run_verb_prints_published_address_and_can_forward_9000_without_heartbeat(state_dir,
                                                                                   tmp_path):
    """`--publish 127.0.0.1:0:5000` binds a port the user learns from stderr; with
    `--no-heartbeat`, parent port 9000 may be forwarded and the guest's init skips the
    heartbeat (it never connects there, and it keeps running). Its `--vsock-uds` serves
    hybrid vsock on a path longer than sun_path holds."""
    import signal
    import subprocess
    import sys
    from pathlib import Path
    uds = tmp_path / ("d" * 120) / "v.sock"
    uds.parent.mkdir()
    heartbeat_port = socket.socket()
    heartbeat_port.bind(("127.0.0.1", 0))
    heartbeat_port.listen(1)
    heartbeat_port.settimeout(0.1)
    process = subprocess.Popen(
        [sys.executable, "-m", "nitro_emu", str(guest_image("echo.eif")), "--guest-cid", "16",
         "--no-heartbeat", "--forward", f"9000=tcp:127.0.0.1:{heartbeat_port.getsockname()[1]}",
         "--publish", "127.0.0.1:0:5000", "--vsock-uds", str(uds), "--timeout", "600"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent)
    streams = {"out": bytearray(), "err": bytearray()}

    def collect(name, pipe):
        while chunk := os.read(pipe.fileno(), 65536):
            streams[name] += chunk

    readers = [threading.Thread(target=collect, args=(name, pipe), daemon=True)
               for name, pipe in (("out", process.stdout), ("err", process.stderr))]
    for reader in readers:
        reader.start()

    def wait_output(name, pattern, timeout=240):
        end = time.monotonic() + timeout
        while not (match := re.search(pattern, bytes(streams[name]))):
            assert process.poll() is None, bytes(streams["err"]).decode(errors="replace")
            assert time.monotonic() < end, f"{pattern!r} never came on std{name}"
            time.sleep(0.05)
        return match

    try:
        published = wait_output("err", rb"nitro-emu: published 127\.0\.0\.1:(\d+) -> guest port 5000\n")
        port = int(published.group(1))
        assert port != 0
        wait_output("out", rb"vsock-echo: listening on port 5000")
        assert echo_client(("127.0.0.1", port), b"via the printed port") == b"via the printed port"
        with socket.socket(socket.AF_UNIX) as hybrid, unix_address(uds) as short:
            hybrid.settimeout(60)
            hybrid.connect(short)
            hybrid.sendall(b"CONNECT 5000\nvia a long --vsock-uds")
            reply = b""
            while not reply.endswith(b"\n"):
                reply += hybrid.recv(1)
            assert reply.startswith(b"OK ")
            hybrid.shutdown(socket.SHUT_WR)
            echoed = b""
            while chunk := hybrid.recv(4096):
                echoed += chunk
            assert echoed == b"via a long --vsock-uds"
        with pytest.raises(TimeoutError):
            heartbeat_port.accept()            # the guest's init skipped the heartbeat
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        process.kill()
        process.wait()
        heartbeat_port.close()
