"""The virtio-vsock device (id 19) with the parent instance (CID 3) built in.

Queues: 0 rx (device -> guest), 1 tx (guest -> device), 2 event. Config space: le64
guest_cid. The guest's tx queue is always drained at once, whatever the state of rx:
packets for the guest wait in `work` (connections with output, and bare RST headers)
until the guest posts rx buffers, which are then filled in one batch with one interrupt.

Host side (see `devices.vsock.config`): the heartbeat responder on port 9000, `--forward`
targets, `--publish` TCP listeners, Firecracker's hybrid-vsock Unix socket protocol
(`--vsock-uds`), and host AF_VSOCK targets. Everything runs on the emulator thread through
the HostIo reactor; no host call ever blocks.
"""
from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
from collections import deque
from typing import Callable

from devices.virtio.device import VirtioDevice
from devices.virtio.queue import Virtqueue, VirtqueueError
from devices.vsock import packet as P
from devices.vsock.config import (HEARTBEAT_BYTE, HEARTBEAT_PORT, Publish, TcpTarget,
                                  UnixTarget, VsockConfig, VsockTarget)
from devices.vsock.connection import (CLOSED, CONNECTING_GUEST, CONNECTING_HOST,
                                      Connection)
from board.clock import VirtualClock
from board.interfaces import HostIo
from board.memory import GuestRam

log = logging.getLogger("nitro_emu.vsock")

RX, TX, EVENT = 0, 1, 2
QUEUE_SIZES = (256, 256, 64)
MAX_RAW_PENDING = 4096          # bare RST headers waiting for rx buffers
FIRST_HOST_PORT = 1 << 30       # ports of host-initiated connections (as Firecracker)
_HEADER = P.HEADER
_HEADER_SIZE = P.HEADER_SIZE


class VsockDevice(VirtioDevice):
    """virtio-vsock for a guest at `guest_cid`, whose only peer is the parent (CID 3).

    Listeners for `config.publishes` and `config.uds_path` are bound here, so a port in use
    is an OSError at start-up. Call `close()` when the machine stops."""

    device_id = 19
    queue_max_sizes = QUEUE_SIZES

    def __init__(self, guest_cid: int, host: HostIo, clock: VirtualClock,
                 config: VsockConfig | None = None) -> None:
        if not 3 < guest_cid < 0xFFFFFFFF:
            raise ValueError(f"guest CID {guest_cid} is invalid: enclave CIDs are 4..4294967294")
        self.guest_cid = guest_cid
        self.host = host
        self.clock = clock
        self.config = config or VsockConfig()
        self.conns: dict[tuple[int, int], Connection] = {}
        self.lingering: set[Connection] = set()
        self.work: deque = deque()
        self._raw_pending = 0
        self._warnings = 0
        self._next_port = FIRST_HOST_PORT
        self._queues: list[Virtqueue] | None = None
        self._interrupt: Callable[[], None] | None = None
        self._seqpacket = False
        self._broken = False
        self._listeners: list[tuple[socket.socket, Callable[[int], None]]] = []
        self.published: list[tuple[Publish, tuple]] = []   # (publish, bound address)
        self.heartbeats = 0
        self.helpers: set = set()    # heartbeat responders and hybrid handshakes in progress
        self._closed = False
        try:
            for publish in self.config.publishes:
                self._listen_publish(publish)
            if self.config.uds_path:
                self._listen_uds(self.config.uds_path)
        except BaseException:
            self.close()
            raise

    # -- VirtioDevice -------------------------------------------------------------------

    def device_features(self) -> int:
        return P.VIRTIO_VSOCK_F_STREAM | P.VIRTIO_VSOCK_F_SEQPACKET

    def read_config(self, offset: int, size: int) -> int:
        if offset < 0 or size <= 0 or offset + size > 8:
            return 0
        return (self.guest_cid >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def activate(self, memory: GuestRam, queues: list[Virtqueue],
                 interrupt: Callable[[], None]) -> None:
        self._queues = queues
        self._interrupt = interrupt
        self._broken = False
        self._seqpacket = True   # offered; a driver that did not ask never sends it
        self.kick()

    def notify(self, queue_index: int) -> None:
        if self._queues is None or self._broken:
            return
        try:
            if queue_index == TX:
                self._process_tx()
            if queue_index in (TX, RX):
                self._fill_rx()
        except VirtqueueError:
            self._broken = True
            raise

    def reset(self) -> None:
        """Driver reset: every guest connection is gone (host sockets closed)."""
        for conn in list(self.conns.values()):
            conn.close()
        self.conns.clear()
        self.work.clear()
        self._raw_pending = 0
        self._queues = None
        self._interrupt = None
        self._broken = False

    def close(self) -> None:
        """Machine shutdown: close every host socket and listener."""
        if self._closed:
            return
        self._closed = True
        self.reset()
        for conn in list(self.lingering):
            conn.close()
        for helper in list(self.helpers):
            helper.close()
        for sock, _ in self._listeners:
            self.host.unregister(sock)
            sock.close()
        self._listeners.clear()
        if self.config.uds_path:
            _unlink_socket(self.config.uds_path)

    def _guest_warning(self, message: str, *args) -> None:
        """Log a guest mistake; after the first 20, only every 1000th (a guest must not
        be able to flood the host's log)."""
        self._warnings += 1
        n = self._warnings
        if n <= 20 or n % 1000 == 0:
            log.warning(message + (f" [{n} guest warnings so far]" if n >= 20 else ""), *args)

    def has_connections(self) -> bool:
        """Whether any connection is open or still draining to the host. The run loop can
        skip idle guest time while this is False: listeners alone wait for the host, but
        an open connection's peers (and the guest's 2 s connect timeout) run on wall time."""
        return bool(self.conns or self.lingering)

    # -- used by connections ------------------------------------------------------------

    def forget(self, conn: Connection) -> None:
        """Remove `conn` from the connection table (it may still linger on the host)."""
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]

    def send_rst(self, local_port: int, peer_port: int, type_: int,
                 src_cid: int = P.CID_PARENT) -> None:
        """Queue an RST to the guest (dropped if too many are already waiting)."""
        if self._raw_pending >= MAX_RAW_PENDING:
            self._guest_warning("vsock: too many RSTs waiting for rx buffers; dropping one")
            return
        self._raw_pending += 1
        self.work.append(_HEADER.pack(src_cid, self.guest_cid, local_port, peer_port, 0,
                                      type_, P.OP_RST, 0, 0, 0))

    def kick(self) -> None:
        """Move pending output to the guest now (from host-I/O callbacks and timers)."""
        if self._queues is None or self._broken or not self.work:
            return
        try:
            self._fill_rx()
        except VirtqueueError as error:
            self._broken = True
            self.report_error(error)

    # -- guest -> parent ------------------------------------------------------------------

    def _process_tx(self) -> None:
        txq = self._queues[TX]
        handled = False
        while True:
            chain = txq.pop()
            if chain is None:
                break
            try:
                self._handle_tx(chain)
            finally:
                txq.push(chain, 0)
            handled = True
        if handled and txq.needs_interrupt():
            self._interrupt()

    def _handle_tx(self, chain) -> None:
        readable = chain.readable
        total = chain.readable_length - _HEADER_SIZE
        if total < 0:
            self._guest_warning("vsock: tx chain %d holds %d bytes, less than a header; dropped",
                        chain.head, chain.readable_length)
            return
        first = readable[0]
        if len(first) >= _HEADER_SIZE:
            hdr = _HEADER.unpack_from(first)
            payload = readable[1:] if len(first) == _HEADER_SIZE else \
                [first[_HEADER_SIZE:]] + readable[1:]
        else:
            joined = memoryview(chain.read_all())
            hdr = _HEADER.unpack_from(joined)
            payload = [joined[_HEADER_SIZE:]]
        (src_cid, dst_cid, src_port, dst_port, length, type_, op, flags,
         buf_alloc, fwd_cnt) = hdr
        if src_cid != self.guest_cid:
            self._guest_warning("vsock: packet from CID %d, not the guest's %d; dropped",
                        src_cid, self.guest_cid)
            return
        conn = self.conns.get((dst_port, src_port)) if dst_cid == P.CID_PARENT else None
        if length > total or length > P.MAX_PKT_PAYLOAD:
            self._guest_warning("vsock: header says %d payload bytes, chain holds %d; %s",
                        length, total, "resetting" if conn else "dropped")
            if conn is not None:
                conn.reset()
            elif op != P.OP_RST:
                self.send_rst(dst_port, src_port, type_ if type_ in (1, 2) else 1, dst_cid)
            return
        if length != total:
            payload = _trim(payload, length)
        if dst_cid != P.CID_PARENT or type_ not in (P.TYPE_STREAM, P.TYPE_SEQPACKET):
            if op != P.OP_RST:
                self.send_rst(dst_port, src_port, type_ if type_ in (1, 2) else 1, dst_cid)
            return
        if conn is None:
            if op == P.OP_REQUEST:
                self._open_from_guest(src_port, dst_port, type_, buf_alloc, fwd_cnt)
            elif op != P.OP_RST:
                self.send_rst(dst_port, src_port, type_)
            return
        if conn.type != type_:
            conn.reset()
            return
        if buf_alloc != conn.peer_buf_alloc or fwd_cnt != conn.peer_fwd_cnt:
            conn.credit_changed(buf_alloc, fwd_cnt)
        conn.on_packet(P.Header(*hdr), payload, length)

    # -- parent -> guest ------------------------------------------------------------------

    def _fill_rx(self) -> None:
        work = self.work
        if not work:
            return
        rxq = self._queues[RX]
        pushed = False
        pop = rxq.pop
        push = rxq.push
        while work:
            item = work[0]
            if type(item) is bytes:
                chain = pop()
                if chain is None:
                    break
                if chain.writable_length < _HEADER_SIZE:
                    raise VirtqueueError(f"rx buffer of {chain.writable_length} bytes is "
                                         "smaller than the 44-byte vsock header")
                work.popleft()
                self._raw_pending -= 1
                push(chain, chain.write(item))
                pushed = True
                continue
            conn = item
            if conn.state == CLOSED or not conn.has_output():
                work.popleft()
                conn.in_work = False
                continue
            chain = pop()
            if chain is None:
                break
            capacity = chain.writable_length - _HEADER_SIZE
            if capacity < 0:
                raise VirtqueueError(f"rx buffer of {chain.writable_length} bytes is "
                                     "smaller than the 44-byte vsock header")
            used = conn.fill(chain, capacity)
            if not used:
                rxq.unpop()
                work.popleft()
                conn.in_work = False
                continue
            push(chain, used)
            pushed = True
            work.popleft()
            if conn.has_output():
                work.append(conn)
            else:
                conn.in_work = False
                if conn.registered == 0:
                    conn.update_interest()
        if pushed and rxq.needs_interrupt():
            self._interrupt()

    def send_transport_reset(self) -> bool:
        """Tell the guest to drop every connection and re-read guest_cid (event id 0).
        Returns False if the guest posted no event buffer."""
        if self._queues is None or self._broken:
            return False
        evq = self._queues[EVENT]
        chain = evq.pop()
        if chain is None:
            return False
        if chain.writable_length < 4:
            self._broken = True
            self.report_error(VirtqueueError("event buffer shorter than 4 bytes"))
            return False
        evq.push(chain, chain.write(b"\0\0\0\0"))
        for conn in list(self.conns.values()):
            conn.close()
        self.conns.clear()
        if evq.needs_interrupt():
            self._interrupt()
        return True

    # -- connections the guest opens ----------------------------------------------------

    def _open_from_guest(self, guest_port: int, parent_port: int, type_: int,
                         buf_alloc: int, fwd_cnt: int) -> None:
        config = self.config
        if len(self.conns) >= config.max_connections:
            self._guest_warning("vsock: %d connections open; refusing guest port %d -> %d",
                        len(self.conns), guest_port, parent_port)
            self.send_rst(parent_port, guest_port, type_)
            return
        target = config.forwards.get(parent_port)
        if target is None and parent_port == HEARTBEAT_PORT and config.heartbeat:
            target = "heartbeat"
        if target is None and config.uds_path:
            target = UnixTarget(f"{config.uds_path}_{parent_port}")
        if target is None:
            log.info("vsock: guest connected to unforwarded parent port %d; RST", parent_port)
            self.send_rst(parent_port, guest_port, type_)
            return
        seq = type_ == P.TYPE_SEQPACKET
        if seq and not isinstance(target, (UnixTarget, VsockTarget)):
            log.info("vsock: SEQPACKET to parent port %d, whose target is a stream; RST",
                     parent_port)
            self.send_rst(parent_port, guest_port, type_)
            return
        try:
            sock, pending = self._connect(target, seq)
        except OSError as error:
            log.info("vsock: guest port %d -> parent port %d (%s): %s; RST",
                     guest_port, parent_port, target, error)
            self.send_rst(parent_port, guest_port, type_)
            return
        conn = Connection(self, parent_port, guest_port, sock, type_,
                          CONNECTING_HOST, host_seqpacket=seq)
        conn.peer_buf_alloc = buf_alloc
        conn.peer_fwd_cnt = fwd_cnt
        self.conns[conn.key] = conn
        if pending:
            conn.update_interest()
        else:
            conn.established_from_host()

    def _connect(self, target, seq: bool) -> tuple[socket.socket, bool]:
        """A non-blocking socket connecting to `target`; (socket, still in progress)."""
        if target == "heartbeat":
            ours, theirs = socket.socketpair()
            _HeartbeatResponder(self, theirs)
            return ours, False
        if isinstance(target, TcpTarget):
            family, kind, proto, _, address = socket.getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        elif isinstance(target, UnixTarget):
            sock = socket.socket(socket.AF_UNIX,
                                 socket.SOCK_SEQPACKET if seq else socket.SOCK_STREAM)
            address = target.path
        elif isinstance(target, VsockTarget):
            sock = socket.socket(socket.AF_VSOCK,
                                 socket.SOCK_SEQPACKET if seq else socket.SOCK_STREAM)
            address = (target.cid, target.port)
        else:  # pragma: no cover - config types are closed
            raise OSError(f"unknown target {target!r}")
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err in (0, errno.EISCONN):
            return sock, False
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            return sock, True
        sock.close()
        raise OSError(err, os.strerror(err))

    # -- connections the host opens -----------------------------------------------------

    def _alloc_port(self, guest_port: int) -> int:
        for _ in range(1 << 16):
            port = self._next_port
            self._next_port = port + 1 if port < 0xFFFFFFFE else FIRST_HOST_PORT
            if (port, guest_port) not in self.conns:
                return port
        raise OSError(errno.EADDRINUSE, "no free vsock port on the parent side")

    def connect_to_guest(self, sock: socket.socket, guest_port: int,
                         on_established: Callable[[Connection], None] | None = None
                         ) -> Connection | None:
        """Open a vsock connection parent -> guest:`guest_port` carrying `sock`."""
        if len(self.conns) >= self.config.max_connections:
            log.warning("vsock: %d connections open; refusing a host connection",
                        len(self.conns))
            sock.close()
            return None
        conn = Connection(self, self._alloc_port(guest_port), guest_port, sock,
                          P.TYPE_STREAM, CONNECTING_GUEST)
        conn.on_established = on_established
        conn.want_request = True
        self.conns[conn.key] = conn
        conn._arm_timer(self.config.connect_timeout_s, lambda: self._connect_timeout(conn))
        conn._queue()
        self.kick()
        return conn

    def _connect_timeout(self, conn: Connection) -> None:
        conn.timer = None
        if conn.state == CONNECTING_GUEST:
            log.info("vsock: guest port %d did not answer within %.0f s; giving up",
                     conn.peer_port, self.config.connect_timeout_s)
            conn.reset()
            self.kick()

    def _listen(self, sock: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
        sock.setblocking(False)
        sock.listen(64)

        def ready(_mask: int) -> None:
            while True:
                try:
                    client, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as error:
                    log.warning("vsock: accept failed: %s", error)
                    return
                client.setblocking(False)
                on_accept(client)

        self.host.register(sock, selectors.EVENT_READ, ready)
        self._listeners.append((sock, ready))

    def _listen_publish(self, publish: Publish) -> None:
        family = socket.AF_INET6 if ":" in publish.host_addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((publish.host_addr, publish.host_port))
        except OSError as error:
            sock.close()
            raise OSError(error.errno, f"--publish {publish.host_addr}:{publish.host_port}:"
                          f"{publish.guest_port}: {error.strerror}") from None
        self.published.append((publish, sock.getsockname()))

        def accept(client: socket.socket) -> None:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connect_to_guest(client, publish.guest_port)

        self._listen(sock, accept)

    def _listen_uds(self, path: str) -> None:
        _unlink_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as error:
            sock.close()
            raise OSError(error.errno, f"--vsock-uds {path}: {error.strerror}") from None
        self._listen(sock, lambda client: _HybridHandshake(self, client))


def _trim(payload: list[memoryview], length: int) -> list[memoryview]:
    out = []
    for view in payload:
        if length <= 0:
            break
        if len(view) > length:
            view = view[:length]
        out.append(view)
        length -= len(view)
    return out


def _unlink_socket(path: str) -> None:
    """Remove a stale Unix socket file (never any other kind of file)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


class _HeartbeatResponder:
    """The parent's side of the boot heartbeat (spec 5.9): read one byte, require 0xB7,
    echo it back; then wait for the guest to close."""

    def __init__(self, device: VsockDevice, sock: socket.socket) -> None:
        self.device = device
        self.sock = sock
        self.answered = False
        sock.setblocking(False)
        device.host.register(sock, selectors.EVENT_READ, self.ready)
        device.helpers.add(self)

    def ready(self, _mask: int) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data and not self.answered:
            self.answered = True
            ok = data[0] == HEARTBEAT_BYTE
            callback = self.device.config.on_heartbeat
            if ok:
                self.device.heartbeats += 1
                log.info("vsock: heartbeat 0x%02x from the guest; answered", data[0])
                try:
                    self.sock.send(data[:1])
                except OSError:
                    pass
            else:
                log.error("vsock: heartbeat byte 0x%02x instead of 0x%02x; not answered",
                          data[0], HEARTBEAT_BYTE)
            if callback is not None:
                callback(ok)
            if not ok:
                self.close()
            return
        if not data:
            self.close()

    def close(self) -> None:
        self.device.helpers.discard(self)
        self.device.host.unregister(self.sock)
        self.sock.close()


class _HybridHandshake:
    """Firecracker's hybrid vsock: the host writes `CONNECT <port>\\n` on the Unix socket,
    then gets `OK <parent port>\\n` once the guest accepted (or the socket closed)."""

    MAX_LINE = 64

    def __init__(self, device: VsockDevice, sock: socket.socket) -> None:
        self.device = device
        self.sock = sock
        device.host.register(sock, selectors.EVENT_READ, self.ready)
        device.helpers.add(self)

    def ready(self, _mask: int) -> None:
        try:
            peek = self.sock.recv(self.MAX_LINE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peek = b""
        end = peek.find(b"\n")
        if end < 0:
            if not peek or len(peek) >= self.MAX_LINE:
                log.info("vsock-uds: connection closed or sent no CONNECT line")
                self.close()
            return
        line = self.sock.recv(end + 1)  # consume exactly the line
        words = line.decode("ascii", "replace").split()
        if len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit() \
                or int(words[1]) > 0xFFFFFFFE:
            log.info("vsock-uds: bad handshake %r", line[:40])
            self.close()
            return
        self.device.helpers.discard(self)
        self.device.host.unregister(self.sock)
        self.device.connect_to_guest(self.sock, int(words[1]), self._established)

    @staticmethod
    def _established(conn: Connection) -> None:
        line = f"OK {conn.local_port}\n".encode()
        conn.to_host.appendleft(line)
        conn.to_host_bytes += len(line)
        conn.uncounted += len(line)
        conn.update_interest()

    def close(self) -> None:
        self.device.helpers.discard(self)
        self.device.host.unregister(self.sock)
        self.sock.close()
