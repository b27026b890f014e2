"""The vsock device end to end at device level: a Python guest driver on one side of the
real MMIO transport, real host sockets (TCP on 127.0.0.1, Unix in tmp dirs) on the other."""
import hashlib
import os
import socket
import threading

import pytest

from devices.vsock import VsockConfig
from devices.vsock import packet as P
from devices.vsock import unix_address
from support.host_servers import Server, sink, tcp_forward
from support.vsock_driver import Harness, VsockGuest, harnesses

MB = 1 << 20


@pytest.fixture
def bench():
    with harnesses() as make:
        yield make


def guest_transfer(h, sock, data, read_chunk=None):
    """Send `data` from the guest socket and read everything back until the host's EOF."""
    sock.send(data)
    received = bytearray()

    def done():
        received.extend(sock.read(read_chunk))
        return sock.peer_shutdown & P.SHUTDOWN_SEND or sock.state == "closed"

    h.pump(done)
    received.extend(sock.read())
    return bytes(received)


# -- heartbeat ------------------------------------------------------------------------

@pytest.mark.parametrize("two_descriptor_rx", [False, True])
def test_heartbeat(bench, two_descriptor_rx):
    seen = []
    h = bench(VsockConfig(on_heartbeat=seen.append), two_descriptor_rx=two_descriptor_rx)
    assert h.guest.cid == 16
    s = h.guest.connect(9000)
    h.pump(lambda: s.state == "connected")
    s.send(bytes([0xB7]))
    h.pump(lambda: s.rx)
    assert s.read() == b"\xb7" and seen == [True] and h.muxer.heartbeats == 1
    assert list(h.muxer.conns) == [(9000, s.local_port)]
    s.close()
    h.pump(lambda: s.state == "closed")
    assert s.reset_received and not h.muxer.conns and not h.muxer.lingering


def test_heartbeat_wrong_byte_is_not_answered(bench):
    seen = []
    h = bench(VsockConfig(on_heartbeat=seen.append))
    s = h.guest.connect(9000)
    h.pump(lambda: s.state == "connected")
    s.send(b"\x00")
    h.pump(lambda: s.peer_shutdown or s.state == "closed")
    assert not s.rx and seen == [False]


# -- guest -> parent forwarding -------------------------------------------------------

def test_forward_tcp_echo(bench):
    server = Server()
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    data = os.urandom(3 * MB)
    s.send(data)
    got = bytearray()
    h.pump(lambda: got.extend(s.read()) or len(got) >= len(data))
    assert bytes(got) == data
    s.close()
    h.pump(lambda: s.state == "closed")
    h.pump(lambda: server.results, timeout=60)  # the host side may still be draining
    server.join()
    assert server.results == [len(data)] and h.guest.violations == 0


def test_forward_unix_and_half_close(bench, tmp_path):
    path = str(tmp_path / "echo.sock")
    server = Server(socket.AF_UNIX, path)
    config = VsockConfig()
    config.add_forward(f"7001=unix:{path}")
    h = bench(config)
    s = h.guest.connect(7001)
    h.pump(lambda: s.state == "connected")
    data = os.urandom(500_000)
    s.send(data)
    s.shutdown(P.SHUTDOWN_SEND)          # guest: no more data; host sees EOF, echo ends
    assert guest_transfer(h, s, b"") == data
    s.close()
    h.pump(lambda: s.state == "closed")
    assert not h.muxer.conns


def test_unforwarded_port_gets_rst(bench):
    h = bench()
    s = h.guest.connect(12345)
    h.pump(lambda: s.state == "closed")
    assert s.reset_received


def test_forward_to_nothing_gets_rst(bench):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                                      # nothing listens there now
    config = VsockConfig()
    config.add_forward(f"7002=tcp:127.0.0.1:{port}")
    h = bench(config)
    s = h.guest.connect(7002)
    h.pump(lambda: s.state == "closed")
    assert s.reset_received and not h.muxer.conns


def test_rst_for_other_cids_and_bad_types(bench):
    h = bench()
    g = h.guest
    g.send_raw(P.pack_header(16, 2, 1111, 80, 0, P.TYPE_STREAM, P.OP_REQUEST, 0, 4096, 0))
    g.send_raw(P.pack_header(16, 3, 1112, 9000, 0, 7, P.OP_REQUEST, 0, 4096, 0))
    g.send_raw(P.pack_header(16, 3, 1113, 9000, 0, P.TYPE_STREAM, P.OP_RW, 0, 4096, 0))
    g.send_raw(P.pack_header(16, 3, 1114, 9000, 0, P.TYPE_STREAM, P.OP_RST, 0, 4096, 0))
    g.send_raw(P.pack_header(99, 3, 1115, 9000, 0, P.TYPE_STREAM, P.OP_REQUEST, 0, 4096, 0))
    h.pump(lambda: len(g.unknown) >= 3)
    h.step()
    assert sorted((u.op, u.src_cid, u.dst_port) for u in g.unknown) == [
        (P.OP_RST, 2, 1111), (P.OP_RST, 3, 1112), (P.OP_RST, 3, 1113)]


# -- parent -> guest publishing --------------------------------------------------------

def guest_echo(h):
    """One round of a guest echo server on every accepted socket."""
    for s in list(h.guest.accepted):
        data = s.read()
        if data:
            s.send(data)
        if s.peer_shutdown & P.SHUTDOWN_SEND and not s.rx and not s.pending_tx \
                and s.state == "connected":
            s.close()
            h.guest.accepted.remove(s)


def host_client(address, data, results):
    with socket.create_connection(address) as c:
        sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while chunk := c.recv(65536):
            got += chunk
        sender.join()
    results.append(bytes(got))


def published_address(h):
    return h.muxer.published[0][1]


def test_publish_10mb_echo(bench):
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5000")
    h = bench(config)
    h.guest.listen(5000)
    data = os.urandom(10 * MB)
    results = []
    client = threading.Thread(target=host_client, args=(published_address(h), data, results))
    client.start()
    h.pump(lambda: guest_echo(h) or results, timeout=120)
    client.join()
    assert hashlib.sha256(results[0]).digest() == hashlib.sha256(data).digest()
    h.pump(lambda: not h.muxer.conns)
    assert h.guest.violations == 0


def test_publish_50_concurrent(bench):
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5000")
    h = bench(config)
    h.guest.listen(5000)
    payloads = [os.urandom(50_000 + i) for i in range(50)]
    results = []
    clients = [threading.Thread(target=host_client,
                                args=(published_address(h), p, results)) for p in payloads]
    for c in clients:
        c.start()
    h.pump(lambda: guest_echo(h) or len(results) == 50, timeout=120)
    for c in clients:
        c.join()
    assert sorted(results) == sorted(payloads)
    h.pump(lambda: not h.muxer.conns)


def test_publish_to_port_without_listener_closes_host_socket(bench):
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5555")
    h = bench(config)
    with socket.create_connection(published_address(h)) as c:
        c.settimeout(10)
        h.pump(lambda: h.guest.unknown and not h.muxer.conns)
        assert c.recv(10) == b""                      # closed, not left hanging


def test_publish_guest_never_answers_times_out(bench):
    config = VsockConfig(connect_timeout_s=1.0)
    config.add_publish("127.0.0.1:0:5000")
    h = bench(config)
    h.guest._dispatch = lambda hdr, payload: None     # a guest that ignores REQUESTs
    with socket.create_connection(published_address(h)) as c:
        c.settimeout(10)
        h.pump(lambda: h.muxer.conns)
        h.clock.skip_to(h.clock.now_ns() + 2 * 10**9)
        h.pump(lambda: not h.muxer.conns)
        assert c.recv(10) == b""


# -- credit --------------------------------------------------------------------------

def test_device_respects_small_guest_credit(bench):
    blob = os.urandom(2 * MB)
    server = Server(handler=lambda c: c.sendall(blob))
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000, buf_alloc=8192)
    h.pump(lambda: s.state == "connected")
    got = guest_transfer(h, s, b"", read_chunk=3000)   # CreditViolation if exceeded
    assert got == blob and h.guest.violations == 0


def test_stalled_guest_gets_exactly_its_credit(bench):
    blob = os.urandom(200_000)
    server = Server(handler=lambda c: c.sendall(blob))
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000, buf_alloc=8192)
    h.pump(lambda: s.state == "connected")
    h.pump(lambda: len(s.rx) == 8192)
    for _ in range(50):
        h.step(0.001)
    assert len(s.rx) == 8192                             # the application never read
    assert h.guest.op_counts[P.OP_RW] == 3               # 3776 + 3776 + 640, then silence
    assert guest_transfer(h, s, b"", read_chunk=5000) == blob   # reading resumes the flow
    assert h.guest.violations == 0


@pytest.mark.parametrize("ours, guests", [(1 << 20, 256 * 1024), (64 * 1024, 256 * 1024),
                                           (256 * 1024, 16 * 1024)])
def test_credit_updates_follow_the_smaller_window(bench, ours, guests):
    """Linux sends at most min(peer buf_alloc, own buf_alloc): our CREDIT_UPDATEs must
    come before that window closes, whichever side is smaller."""
    server = Server(handler=sink)
    h = bench(tcp_forward(server, buf_alloc=ours))
    s = h.guest.connect(7000, buf_alloc=guests)
    h.pump(lambda: s.state == "connected")
    data = os.urandom(3 * MB)
    s.send(data)
    h.pump(lambda: not s.pending_tx, timeout=30)
    s.close()
    h.pump(lambda: s.state == "closed")
    # The device may still be draining to the host socket: keep the reactor running
    # until the host side has seen end of file.
    h.pump(lambda: server.results, timeout=60)
    server.join()
    assert server.results == [(len(data), hashlib.sha256(data).hexdigest())]


def test_slow_host_reader_stalls_only_its_connection(bench):
    release = threading.Event()

    def slow_sink(conn):
        release.wait(30)
        return sink(conn)

    server = Server(handler=slow_sink)
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    data = os.urandom(8 * MB)
    s.send(data)
    h.pump(lambda: s.credit() == 0 and not h.guest.tx_backlog)
    conn = h.muxer.conns[(7000, s.local_port)]
    assert conn.to_host_bytes <= conn.buf_alloc
    assert s.pending_tx                                   # the guest is held by credit
    hb = h.guest.connect(9000)                            # tx keeps flowing meanwhile
    h.pump(lambda: hb.state == "connected")
    hb.send(b"\xb7")
    h.pump(lambda: hb.rx)
    release.set()
    h.pump(lambda: not s.pending_tx, timeout=60)
    s.close()
    h.pump(lambda: s.state == "closed")
    # The device may still be draining to the host socket: keep the reactor running
    # until the host side has seen end of file.
    h.pump(lambda: server.results, timeout=60)
    server.join()
    assert server.results == [(len(data), hashlib.sha256(data).hexdigest())]


def test_guest_exceeding_our_credit_is_reset(bench):
    release = threading.Event()
    server = Server(handler=lambda c: release.wait(30))
    h = bench(tcp_forward(server, buf_alloc=16384))
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    assert s.peer_buf_alloc == 16384
    s.peer_buf_alloc = 1 << 30                            # a guest that ignores credit
    s.send(os.urandom(4 * MB))
    h.pump(lambda: s.state == "closed")
    assert s.reset_received
    release.set()


def test_credit_request_is_answered(bench):
    h = bench()
    s = h.guest.connect(9000)
    h.pump(lambda: s.state == "connected")
    before = h.guest.packets_in
    s.send_op(P.OP_CREDIT_REQUEST)
    h.pump(lambda: h.guest.packets_in > before)
    assert s.peer_buf_alloc == VsockConfig().buf_alloc


# -- closing -------------------------------------------------------------------------

def test_machine_stop_mid_transfer_closes_host_sockets(bench):
    server = Server(handler=sink)
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    s.send(os.urandom(4 * MB))
    for _ in range(20):
        h.step()
    h.device.close()
    server.join()
    assert len(server.results) == 1 and not h.muxer.conns   # the sink saw EOF and ended
    assert h.reactor.is_empty()


def test_guest_close_mid_transfer_closes_host_socket(bench):
    results = []
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5000")
    h = bench(config)
    h.guest.listen(5000)

    def client():
        with socket.create_connection(published_address(h)) as c:
            c.settimeout(20)
            try:
                while True:
                    c.sendall(os.urandom(65536))
            except OSError as error:
                results.append(type(error).__name__)

    t = threading.Thread(target=client)
    t.start()
    h.pump(lambda: h.guest.accepted)
    s = h.guest.accepted[0]
    h.pump(lambda: len(s.rx) > 100_000)
    s.close()                                   # guest closes with data unread
    h.pump(lambda: s.state == "closed")
    t.join(20)
    assert results and results[0] in ("BrokenPipeError", "ConnectionResetError")
    assert not h.muxer.conns


def test_host_eof_then_guest_close(bench):
    server = Server(handler=lambda c: c.sendall(b"bye"))
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    assert guest_transfer(h, s, b"") == b"bye"
    assert s.peer_shutdown & P.SHUTDOWN_SEND
    s.close()
    h.pump(lambda: s.state == "closed" and not h.muxer.conns)


def test_full_close_from_both_sides_waits_for_guest_rst(bench):
    server = Server(handler=lambda c: (c.recv(10), c.sendall(b"x")))
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    s.send(b"hi")
    s.shutdown(P.SHUTDOWN_SEND)
    h.pump(lambda: s.peer_shutdown == P.SHUTDOWN_BOTH or s.state == "closed")
    assert s.read() == b"x"
    s.close()                      # the application closes: its SHUTDOWN is answered with RST
    h.pump(lambda: not h.muxer.conns and s.state == "closed")
    assert s.reset_received


def test_close_timeout_when_guest_never_answers(bench):
    server = Server(handler=lambda c: c.recv(10))
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    s.rx += b"unread"              # Linux keeps the socket while data is unread
    s.shutdown(P.SHUTDOWN_SEND)
    h.pump(lambda: s.peer_shutdown == P.SHUTDOWN_BOTH)
    for _ in range(5):
        h.step()
    assert h.muxer.conns and s.state == "connected"
    h.clock.skip_to(h.clock.now_ns() + 9 * 10**9)
    h.pump(lambda: not h.muxer.conns and s.state == "closed")
    assert s.reset_received


# -- Firecracker hybrid vsock ---------------------------------------------------------

def test_hybrid_uds_both_directions(bench, tmp_path):
    base = str(tmp_path / "v.sock")
    server = Server(socket.AF_UNIX, f"{base}_6000")
    h = bench(VsockConfig(uds_path=base))
    # guest -> parent port 6000 goes to base_6000
    s = h.guest.connect(6000)
    h.pump(lambda: s.state == "connected")
    data = os.urandom(200_000)
    s.send(data)
    got = bytearray()
    h.pump(lambda: got.extend(s.read()) or len(got) == len(data))
    assert got == data
    # host -> guest port 5000 via CONNECT
    reply, echoed = hybrid_hello(h, base)
    assert reply.startswith(b"OK ") and int(reply[3:]) >= 1 << 30
    assert echoed == b"hello"


def hybrid_hello(h, path):
    """A host client of the hybrid listener at `path` sends `CONNECT 5000` and "hello" to
    a guest echo server on port 5000: (its OK line, what came back)."""
    h.guest.listen(5000)
    results = []

    def client():
        with socket.socket(socket.AF_UNIX) as c, unix_address.address(path) as short:
            c.connect(short)
            c.sendall(b"CONNECT 5000\nhello")
            reply = b""
            while not reply.endswith(b"\n"):
                reply += c.recv(1)
            results.append(reply)
            results.append(c.recv(5))

    t = threading.Thread(target=client)
    t.start()
    h.pump(lambda: guest_echo(h) or len(results) == 2)
    t.join()
    return results[0], results[1]


@pytest.mark.parametrize("chunks", [
    [b"HELLO\n"],                                 # not a CONNECT line
    [b"CONNECT 5000", b" " * 60],                  # past the line limit without a newline
])
def test_hybrid_uds_bad_or_endless_line_is_closed(bench, tmp_path, chunks):
    base = str(tmp_path / "v.sock")
    h = bench(VsockConfig(uds_path=base))
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(base)
        c.settimeout(10)
        for chunk in chunks:
            c.sendall(chunk)
            for _ in range(5):
                h.step(0.005)
        h.pump(lambda: not h.muxer.helpers)
        try:
            assert c.recv(10) == b""
        except ConnectionResetError:               # closed with bytes unread
            pass


def test_hybrid_uds_partial_line_does_not_spin(bench, tmp_path):
    """A client that sent `CONNECT` without its newline leaves the emulator idle (the
    reactor is level-triggered: unread bytes would make every poll call back at once); the
    rest of the line then completes the handshake, and what follows it reaches the guest."""
    base = str(tmp_path / "v.sock")
    h = bench(VsockConfig(uds_path=base))
    h.guest.listen(5000)
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(base)
        c.settimeout(10)
        c.sendall(b"CONNECT 50")
        callbacks = sum(h.reactor.poll(0.01) for _ in range(50))
        assert 1 <= callbacks <= 3                 # accept, read the bytes; then quiet
        c.sendall(b"00\nhello")
        c.setblocking(False)
        reply = bytearray()

        def answered():
            try:
                reply.extend(c.recv(1))
            except BlockingIOError:
                pass
            return reply.endswith(b"\n")

        h.pump(answered)
        assert reply.startswith(b"OK ")
        got = bytearray()
        h.pump(lambda: got.extend(h.guest.accepted[0].read()) or got == b"hello")


# -- Unix socket paths longer than sun_path ------------------------------------------

def long_directory(tmp_path):
    """A directory whose socket paths go past the 108 bytes of sun_path."""
    directory = tmp_path / ("d" * 120)
    directory.mkdir()
    return directory


def test_unix_addresses_beyond_sun_path(tmp_path):
    """A long path is bound and connected through its directory's descriptor, which is
    closed again after the call; the socket file appears at the real path."""
    path = long_directory(tmp_path) / "s.sock"
    descriptors = len(os.listdir("/proc/self/fd"))
    with socket.socket(socket.AF_UNIX) as server:
        with unix_address.address(path) as short:
            assert short.startswith("/proc/self/fd/") and unix_address.fits(short)
            server.bind(short)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client, unix_address.address(path) as short:
            client.connect(short)
        assert path.exists() and len(os.listdir("/proc/self/fd")) == descriptors + 1
    with unix_address.address(tmp_path / "s.sock") as short:
        assert short == str(tmp_path / "s.sock")


def test_long_unix_paths_for_the_hybrid_listener_and_forwards(bench, tmp_path):
    """--vsock-uds, its PATH_<port> targets and unix: forwards work on paths longer than
    sun_path (the run verb and background enclaves both hand the device such paths)."""
    directory = long_directory(tmp_path)
    base = str(directory / "v.sock")
    servers = {}
    for port, path in ((6000, f"{base}_6000"), (7001, str(directory / "forward.sock"))):
        with unix_address.address(path) as short:
            servers[port] = Server(socket.AF_UNIX, short)
    config = VsockConfig(uds_path=base)
    config.add_forward(f"7001=unix:{directory / 'forward.sock'}")
    h = bench(config)
    for port in servers:
        s = h.guest.connect(port)
        h.pump(lambda: s.state == "connected" or s.state == "closed")
        assert s.state == "connected", f"parent port {port}"
        s.send(b"over a long path")
        got = bytearray()
        h.pump(lambda: got.extend(s.read()) or got == b"over a long path")
    reply, echoed = hybrid_hello(h, base)
    assert reply.startswith(b"OK ") and echoed == b"hello"
    h.device.close()
    assert not os.path.exists(base)


def test_a_socket_name_too_long_even_for_its_directory_says_why(bench, tmp_path):
    base = str(long_directory(tmp_path) / ("n" * 100))
    with pytest.raises(OSError) as info:
        Harness(VsockConfig(uds_path=base))
    assert info.value.strerror.startswith(f"--vsock-uds {base}: path too long for a Unix "
                                          "socket")
    assert "None" not in info.value.strerror and "file name (100 bytes)" in info.value.strerror
    config = VsockConfig()                       # as a forward target: the guest gets RST
    config.add_forward(f"7001=unix:{base}")
    h = bench(config)
    s = h.guest.connect(7001)
    h.pump(lambda: s.state == "closed")
    assert s.reset_received


# -- SEQPACKET -------------------------------------------------------------------------

def test_seqpacket_to_unix_keeps_message_boundaries(bench, tmp_path):
    path = str(tmp_path / "seq.sock")

    def message_echo(conn):
        count = 0
        while msg := conn.recv(1 << 20):
            conn.send(msg)
            count += 1
        return count

    server = Server(socket.AF_UNIX, path, handler=message_echo, kind=socket.SOCK_SEQPACKET)
    config = VsockConfig()
    config.add_forward(f"7003=unix:{path}")
    h = bench(config)
    s = h.guest.connect(7003, type_=P.TYPE_SEQPACKET)
    h.pump(lambda: s.state == "connected")
    messages = [os.urandom(n) for n in (1, 100, 5000, 70_000, 3)]
    for m in messages:
        s.send(m, eom=True)
        h.pump(lambda: not s.pending_tx)
    got = []
    h.pump(lambda: (m := s.read_message()) is not None and got.append(m) or len(got) == 5)
    assert got == messages


def test_seqpacket_to_tcp_is_refused(bench):
    server = Server()
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000, type_=P.TYPE_SEQPACKET)
    h.pump(lambda: s.state == "closed")
    assert s.reset_received


# -- host AF_VSOCK -------------------------------------------------------------------

def _vsock_loopback_port():
    try:
        listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        listener.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
        listener.listen(1)
        probe = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        probe.connect((1, listener.getsockname()[1]))
        probe.close()
        listener.accept()[0].close()
        return listener
    except (AttributeError, OSError):
        return None


def test_forward_to_host_af_vsock(bench):
    listener = _vsock_loopback_port()
    if listener is None:
        pytest.skip("the host kernel offers no AF_VSOCK loopback (vsock_loopback)")
    port = listener.getsockname()[1]
    listener.close()
    server = Server(socket.AF_VSOCK, (socket.VMADDR_CID_ANY, port))
    config = VsockConfig()
    config.add_forward(f"7004=vsock:1:{port}")
    h = bench(config)
    s = h.guest.connect(7004)
    h.pump(lambda: s.state == "connected")
    data = os.urandom(300_000)
    s.send(data)
    got = bytearray()
    h.pump(lambda: got.extend(s.read()) or len(got) == len(data))
    assert got == data


# -- event queue -----------------------------------------------------------------------

def test_transport_reset_event(bench):
    h = bench()
    s = h.guest.connect(9000)
    h.pump(lambda: s.state == "connected")
    assert h.device.send_transport_reset()
    used = h.guest.evq.get_used()
    assert len(used) == 1 and used[0][1] == 4 and not h.muxer.conns


def test_publish_port_in_use_is_a_clear_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    config = VsockConfig()
    config.add_publish(f"127.0.0.1:{taken.getsockname()[1]}:5000")
    with pytest.raises(OSError, match="--publish 127.0.0.1:"):
        Harness(config)
    taken.close()


def test_publish_before_the_driver_is_up(bench):
    """A host connection made before the guest's driver starts waits for it."""
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5000")
    h = bench(config)
    h.transport.mmio_write(0x70, 4, 0)                 # the driver resets the device
    results = []
    client = threading.Thread(target=host_client,
                              args=(published_address(h), b"early bird", results))
    client.start()
    for _ in range(20):
        h.reactor.poll(0.005)
    assert h.muxer.conns                               # accepted, REQUEST pending
    h.guest = VsockGuest(h.transport, h.ram)            # the driver probes again
    h.guest.listen(5000)
    h.pump(lambda: guest_echo(h) or results)
    client.join()
    assert results == [b"early bird"]


def test_close_releases_every_host_socket(bench, tmp_path):
    base = str(tmp_path / "v.sock")
    config = VsockConfig(uds_path=base)
    config.add_publish("127.0.0.1:0:5000")
    h = bench(config)
    hb = h.guest.connect(9000)                              # heartbeat socketpair open
    h.pump(lambda: hb.state == "connected")
    pending = socket.socket(socket.AF_UNIX)                 # handshake never finished
    pending.connect(base)
    for _ in range(5):
        h.step(0.005)
    assert h.muxer.helpers and not h.reactor.is_empty()
    h.device.close()
    assert h.reactor.is_empty() and not h.muxer.helpers
    assert not os.path.exists(base)
    pending.settimeout(5)
    assert pending.recv(1) == b""
    pending.close()
