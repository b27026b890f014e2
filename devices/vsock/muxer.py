"""The parent instance (CID 3) behind the vsock device: the connection table, port
allocation, RSTs, host listeners (`--publish`, `--vsock-uds`) and connections to forward
targets (Firecracker's unix/muxer.rs; implements `devices.vsock.backend.VsockBackend`).

Every change to a connection goes through the muxer: it calls the connection, then
settles what changed (`_settle`): the table, RSTs owed to the guest, the timers of the
CONNECTING_GUEST and CLOSING states, the host events selected on the reactor, and the rx
queue. Output for the guest waits in two typed queues: RST packets for connections the
muxer does not hold, and connections with something to send (each at most once, served
round-robin). Everything runs on the emulator thread; no host call ever blocks.
"""
from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
from collections import deque
from contextlib import nullcontext
from functools import partial
from typing import Callable, NamedTuple

from board.clock import Timer, VirtualClock
from board.interfaces import HostIo
from devices.virtio.queue import DescriptorChain
from devices.vsock import packet as P
from devices.vsock import unix_address
from devices.vsock.config import (HEARTBEAT_PORT, Publish, Target, TcpTarget, UnixTarget,
                                  VsockConfig, VsockTarget)
from devices.vsock.connection import EVENT_READ, Connection, State
from devices.vsock.handshakes import HeartbeatResponder, HybridHandshake
from devices.vsock.host_port import listen_family
from devices.vsock.limits import BufferBudget, GuestWarnings, Throttle

log = logging.getLogger("nitro_emu.vsock")

MAX_RST_PENDING = 4096          # RSTs waiting for rx buffers (44 bytes each)
FIRST_HOST_PORT = 1 << 30       # ports of host-initiated connections (as Firecracker)
RESUME_ROOM = P.MAX_PKT_PAYLOAD  # shared guest-bound room that wakes paused readers
ACCEPT_RETRY_FIRST_S = 0.05     # a listener whose accept() failed rests this long, doubling
ACCEPT_RETRY_MAX_S = 2.0        # ... up to this
LOG_INTERVAL_S = 60.0           # host-side trouble is logged at most this often
_TYPES = (P.TYPE_STREAM, P.TYPE_SEQPACKET)
# accept() failures that concern one client only; the next one may well succeed
_CLIENT_GONE = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR)


class RstPacket(NamedTuple):
    """An RST for the guest about a connection the muxer does not hold."""
    local_port: int
    peer_port: int
    type: int
    src_cid: int = P.CID_PARENT


class _Entry:
    """The muxer's bookkeeping for one connection."""

    __slots__ = ("conn", "window", "events", "queued", "timer", "rst_sent",
                 "on_established", "on_event")

    def __init__(self, conn: Connection, window: int,
                 on_established: Callable[[Connection], None] | None) -> None:
        self.conn = conn
        self.window = window         # host-bound bytes reserved in the budget
        self.events = 0              # host events selected on the reactor
        self.queued = False          # in the muxer's rx queue
        self.timer: Timer | None = None
        self.rst_sent = False
        self.on_established = on_established
        self.on_event: Callable[[int], None] | None = None


class _Listener:
    """A listening socket, and its rest after accept() failed (out of descriptors)."""

    __slots__ = ("sock", "name", "on_accept", "ready", "watched", "delay_s", "timer",
                 "throttle")

    def __init__(self, sock: socket.socket, name: str,
                 on_accept: Callable[[socket.socket], None]) -> None:
        self.sock = sock
        self.name = name
        self.on_accept = on_accept
        self.ready: Callable[[int], None] | None = None
        self.watched = False
        self.delay_s = 0.0
        self.timer: Timer | None = None
        self.throttle = Throttle(LOG_INTERVAL_S)


class VsockMuxer:
    """The parent side for the guest at `guest_cid` (checked by `parent.VsockDevice`),
    configured by `config`.

    Listeners for `config.publishes` and `config.uds_path` are bound here, so a port in use
    is an OSError at start-up (and a bad config a ValueError). `published` lists each
    publish with the address it is bound to. Call `close()` when the machine stops."""

    def __init__(self, guest_cid: int, host: HostIo, clock: VirtualClock,
                 config: VsockConfig) -> None:
        config.validate()
        self.guest_cid = guest_cid
        self.host = host
        self.clock = clock
        self.config = config
        self.budget = BufferBudget(config)
        self.published: list[tuple[Publish, tuple]] = []
        self.heartbeats = 0
        self.helpers: set = set()    # heartbeat responders and hybrid handshakes in progress
        self._table: dict[tuple[int, int], _Entry] = {}
        self._lingering: set[_Entry] = set()
        self._rst_out: deque[RstPacket] = deque()
        self._ready: deque[_Entry] = deque()
        self._notify_rx: Callable[[], None] | None = None
        self._next_port = FIRST_HOST_PORT
        self._listeners: list[_Listener] = []
        self._guest_warning = GuestWarnings(log)
        self._host_refusals = Throttle(LOG_INTERVAL_S)
        self._closed = False
        try:
            for publish in config.publishes:
                self._listen_publish(publish)
            if config.uds_path:
                self._listen_uds(config.uds_path)
        except BaseException:
            self.close()
            raise

    # -- what tests and the run verb look at ------------------------------------------------

    @property
    def conns(self) -> dict[tuple[int, int], Connection]:
        """A snapshot of the connections the guest knows, by (parent port, guest port)."""
        return {key: entry.conn for key, entry in self._table.items()}

    @property
    def lingering(self) -> list[Connection]:
        """Connections the guest left whose data still drains to the host."""
        return [entry.conn for entry in self._lingering]

    # -- VsockBackend: guest -> host ------------------------------------------------------

    def send_pkt(self, hdr: P.Header, payload: list[memoryview]) -> None:
        dst_cid, type_, op = hdr.dst_cid, hdr.type, hdr.op
        if dst_cid != P.CID_PARENT or type_ not in _TYPES:
            if op != P.OP_RST:
                self._queue_rst(hdr.dst_port, hdr.src_port,
                                type_ if type_ in _TYPES else P.TYPE_STREAM, dst_cid)
            return
        entry = self._table.get((hdr.dst_port, hdr.src_port))
        if entry is None:
            if op == P.OP_REQUEST:
                self._open_from_guest(hdr)
            elif op != P.OP_RST:
                self._queue_rst(hdr.dst_port, hdr.src_port, type_)
            return
        conn = entry.conn
        before = conn.state
        conn.on_packet(hdr, payload)
        self._settle(entry, before)
        if self.budget.paused:
            self._resume_paused()

    def reject_pkt(self, hdr: P.Header) -> None:
        entry = self._table.get((hdr.dst_port, hdr.src_port)) \
            if hdr.dst_cid == P.CID_PARENT else None
        if entry is not None:
            self._apply(entry, entry.conn.reset)
        elif hdr.op != P.OP_RST:
            self._queue_rst(hdr.dst_port, hdr.src_port,
                            hdr.type if hdr.type in _TYPES else P.TYPE_STREAM, hdr.dst_cid)

    # -- VsockBackend: host -> guest ------------------------------------------------------

    def has_pending_rx(self) -> bool:
        return bool(self._rst_out or self._ready)

    def recv_pkt(self, chain: DescriptorChain) -> int:
        if self._rst_out:
            rst = self._rst_out.popleft()
            return chain.write(P.HEADER.pack(rst.src_cid, self.guest_cid, rst.local_port,
                                             rst.peer_port, 0, rst.type, P.OP_RST, 0, 0, 0))
        ready = self._ready
        while ready:
            entry = ready.popleft()
            entry.queued = False
            conn = entry.conn
            before = conn.state
            if before is State.CLOSED:
                continue
            used = conn.recv_pkt(chain)
            if not used:    # nothing after all: out of the queue until its next change
                self._settle(entry, before, requeue=False)
                continue
            if conn.state is not before:
                self._settle(entry, before)
            else:
                # The usual data packet, settled in short: back of the queue if it has more
                # (round-robin); what it sent can only let it read from the host again,
                # and not if it waits for the guest's credit.
                if conn.has_pending_rx():
                    entry.queued = True
                    ready.append(entry)
                if not entry.events & EVENT_READ and not conn.credit_blocked:
                    self._select_wanted(entry)
            if self.budget.paused:
                self._resume_paused()
            return used
        return 0

    def set_rx_notifier(self, notify: Callable[[], None]) -> None:
        self._notify_rx = notify

    def _wake(self) -> None:
        """Tell the device there is output for the guest (after host events and timers)."""
        if self._notify_rx is not None and (self._rst_out or self._ready):
            self._notify_rx()

    def _queue_rst(self, local_port: int, peer_port: int, type_: int,
                   src_cid: int = P.CID_PARENT) -> None:
        if len(self._rst_out) >= MAX_RST_PENDING:
            self._guest_warning("vsock: too many RSTs waiting for rx buffers; dropping one")
            return
        self._rst_out.append(RstPacket(local_port, peer_port, type_, src_cid))

    # -- VsockBackend: reset and close ----------------------------------------------------

    def reset(self) -> None:
        for entry in list(self._table.values()):
            self._apply(entry, entry.conn.close)
        self._table.clear()
        self._ready.clear()
        self._rst_out.clear()
        self.budget.paused.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.reset()
        for entry in list(self._lingering):
            self._apply(entry, entry.conn.close)
        for helper in list(self.helpers):
            helper.close()
        for listener in self._listeners:
            if listener.timer is not None:
                listener.timer.cancel()
            if listener.watched:
                self.host.unregister(listener.sock)
            listener.sock.close()
        self._listeners.clear()
        if self.config.uds_path:
            unix_address.remove_socket(self.config.uds_path)

    # -- applying changes to connections --------------------------------------------------

    def _apply(self, entry: _Entry, change: Callable[..., None], *args) -> None:
        """Run `change(*args)` on a connection and settle what it changed."""
        before = entry.conn.state
        change(*args)
        self._settle(entry, before)

    def _settle(self, entry: _Entry, before: State | None, requeue: bool = True) -> None:
        conn = entry.conn
        state = conn.state
        if state is not before:
            self._state_changed(entry, before, state)
            if state is State.CLOSED:
                return
        if requeue and not entry.queued and conn.has_pending_rx():
            entry.queued = True
            self._ready.append(entry)
        self._select_wanted(entry)

    def _select_wanted(self, entry: _Entry) -> None:
        """Select the host events the connection wants now; note it if only the shared
        guest-bound budget keeps it from reading."""
        conn = entry.conn
        events = conn.wanted_events()
        if events != entry.events:
            self._select(entry, events)
        if conn.budget_blocked:
            self.budget.paused.add(entry)

    def _state_changed(self, entry: _Entry, before: State | None, state: State) -> None:
        conn = entry.conn
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if state is State.CONNECTING_GUEST:
            self._arm_timer(entry, self.config.connect_timeout_s)
        elif state is State.CLOSING:
            self._arm_timer(entry, self.config.close_timeout_s)
        elif state is State.ESTABLISHED and before is State.CONNECTING_GUEST \
                and entry.on_established is not None:
            on_established, entry.on_established = entry.on_established, None
            on_established(conn)
        if state is State.LINGERING or state is State.CLOSED:
            if self._table.get(conn.key) is entry:
                del self._table[conn.key]
            if conn.owes_rst and not entry.rst_sent:
                entry.rst_sent = True
                self._queue_rst(conn.local_port, conn.peer_port, conn.type)
        if state is State.LINGERING:
            self._lingering.add(entry)
        elif state is State.CLOSED:
            self._dispose(entry)

    def _dispose(self, entry: _Entry) -> None:
        self._lingering.discard(entry)
        self.budget.paused.discard(entry)
        if entry.events:
            self.host.unregister(entry.conn.sock)
            entry.events = 0
        entry.conn.dispose()
        self.budget.close_window(entry.window)
        entry.window = 0

    def _select(self, entry: _Entry, events: int) -> None:
        sock = entry.conn.sock
        if events == 0:
            self.host.unregister(sock)
        elif entry.events == 0:
            if entry.on_event is None:
                entry.on_event = partial(self._on_host_event, entry)
            self.host.register(sock, events, entry.on_event)
        else:
            self.host.modify(sock, events, entry.on_event)
        entry.events = events

    def _on_host_event(self, entry: _Entry, mask: int) -> None:
        conn = entry.conn
        before = conn.state
        conn.on_host_event(mask)
        self._settle(entry, before)
        self._wake()

    def _resume_paused(self) -> None:
        """Let connections waiting for the shared guest-bound budget read again once there
        is room (for a whole message, on SEQPACKET)."""
        room = self.budget.room()
        if room < RESUME_ROOM:
            return
        paused = self.budget.paused
        for entry in [e for e in paused if e.conn.read_need <= room]:
            paused.discard(entry)
            self._settle(entry, entry.conn.state)

    def _arm_timer(self, entry: _Entry, seconds: float) -> None:
        deadline = self.clock.now_ns() + int(seconds * 1e9)
        entry.timer = self.clock.add_timer(deadline, lambda: self._expire(entry))

    def _expire(self, entry: _Entry) -> None:
        entry.timer = None
        conn = entry.conn
        if conn.state is State.CONNECTING_GUEST:
            log.info("vsock: guest port %d did not answer within %.0f s; giving up",
                     conn.peer_port, self.config.connect_timeout_s)
        elif conn.state is State.CLOSING:
            log.info("vsock: guest did not answer SHUTDOWN on %r; resetting", conn)
        self._apply(entry, conn.expire)
        self._wake()

    # -- the connection table -------------------------------------------------------------

    def _holders(self) -> int:
        """Connections holding a host socket and a receive window."""
        return len(self._table) + len(self._lingering)

    def _at_capacity(self) -> bool:
        return self._holders() + len(self.helpers) >= self.config.max_connections

    def _add(self, conn: Connection, window: int,
             on_established: Callable[[Connection], None] | None = None) -> _Entry:
        entry = _Entry(conn, window, on_established)
        self._table[conn.key] = entry
        self._settle(entry, None)
        return entry

    def _new_connection(self, local_port: int, peer_port: int, sock: socket.socket,
                        window: int, state: State, **options) -> Connection:
        return Connection(local_port, peer_port, sock, guest_cid=self.guest_cid, state=state,
                          buf_alloc=window, max_guest_bound=self.config.max_guest_bound,
                          budget=self.budget, **options)

    # -- connections the guest opens ------------------------------------------------------

    def _open_from_guest(self, hdr: P.Header) -> None:
        guest_port, parent_port, type_ = hdr.src_port, hdr.dst_port, hdr.type
        if self._at_capacity():
            self._guest_warning("vsock: %d connections open; refusing guest port %d -> %d",
                                self._holders(), guest_port, parent_port)
            self._queue_rst(parent_port, guest_port, type_)
            return
        target = self._target(parent_port)
        if target is None:
            log.info("vsock: guest connected to unforwarded parent port %d; RST", parent_port)
            self._queue_rst(parent_port, guest_port, type_)
            return
        seq = type_ == P.TYPE_SEQPACKET
        if seq and not isinstance(target, (UnixTarget, VsockTarget)):
            log.info("vsock: SEQPACKET to parent port %d, whose target is a stream; RST",
                     parent_port)
            self._queue_rst(parent_port, guest_port, type_)
            return
        window = self.budget.open_window(self._holders())
        if not window:
            self._guest_warning("vsock: the connections' buffers are all reserved; refusing "
                                "guest port %d -> %d", guest_port, parent_port)
            self._queue_rst(parent_port, guest_port, type_)
            return
        try:
            sock, in_progress = self._connect(target, seq)
        except OSError as error:
            self.budget.close_window(window)
            log.info("vsock: guest port %d -> parent port %d (%s): %s; RST",
                     guest_port, parent_port, target, error)
            self._queue_rst(parent_port, guest_port, type_)
            return
        conn = self._new_connection(parent_port, guest_port, sock, window,
                                    State.CONNECTING_HOST, type_=type_, host_seqpacket=seq,
                                    peer_buf_alloc=hdr.buf_alloc, peer_fwd_cnt=hdr.fwd_cnt)
        entry = self._add(conn, window)
        if not in_progress:
            self._apply(entry, conn.host_connected)

    def _target(self, parent_port: int) -> Target | str | None:
        config = self.config
        target = config.forwards.get(parent_port)
        if target is None and parent_port == HEARTBEAT_PORT and config.heartbeat:
            return "heartbeat"
        if target is None and config.uds_path:
            return UnixTarget(f"{config.uds_path}_{parent_port}")
        return target

    def _connect(self, target: Target | str, seq: bool) -> tuple[socket.socket, bool]:
        """A non-blocking socket connecting to `target`; (socket, still in progress)."""
        if target == "heartbeat":
            ours, theirs = socket.socketpair()
            self.helpers.add(HeartbeatResponder(theirs, self.host, self._heartbeat_result,
                                                self.helpers.discard))
            return ours, False
        if isinstance(target, TcpTarget):
            family, kind, proto, _, address = socket.getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
            reach = nullcontext(address)
        elif isinstance(target, UnixTarget):
            sock = socket.socket(socket.AF_UNIX,
                                 socket.SOCK_SEQPACKET if seq else socket.SOCK_STREAM)
            reach = unix_address.address(target.path)     # also beyond sun_path's length
        elif isinstance(target, VsockTarget):
            sock = socket.socket(socket.AF_VSOCK,
                                 socket.SOCK_SEQPACKET if seq else socket.SOCK_STREAM)
            reach = nullcontext((target.cid, target.port))
        else:  # pragma: no cover - config types are closed
            raise OSError(f"unknown target {target!r}")
        sock.setblocking(False)
        try:
            with reach as address:
                err = sock.connect_ex(address)
        except OSError:
            sock.close()
            raise
        if err in (0, errno.EISCONN):
            return sock, False
        # A non-blocking AF_UNIX connect never is "in progress": EAGAIN there means the
        # listener's backlog is full, a refusal (connect(2)).
        in_progress = (errno.EINPROGRESS, errno.EALREADY) if sock.family == socket.AF_UNIX \
            else (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)
        if err in in_progress:
            return sock, True
        sock.close()
        raise OSError(err, os.strerror(err))

    def _heartbeat_result(self, ok: bool) -> None:
        if ok:
            self.heartbeats += 1
        if self.config.on_heartbeat is not None:
            self.config.on_heartbeat(ok)

    # -- connections the host opens -------------------------------------------------------

    def _alloc_port(self, guest_port: int) -> int:
        for _ in range(1 << 16):
            port = self._next_port
            self._next_port = port + 1 if port < P.MAX_PORT else FIRST_HOST_PORT
            if (port, guest_port) not in self._table:
                return port
        raise OSError(errno.EADDRINUSE, "no free vsock port on the parent side")

    def connect_to_guest(self, sock: socket.socket, guest_port: int,
                         on_established: Callable[[Connection], None] | None = None
                         ) -> Connection | None:
        """Open a vsock connection parent -> guest:`guest_port` carrying the host socket
        `sock` (closed, and None returned, when the limits refuse it)."""
        window = 0 if self._at_capacity() else self.budget.open_window(self._holders())
        if not window:
            if self._host_refusals.allow():
                log.warning("vsock: %d connections open; refusing host connections to the "
                            "guest for now%s", self._holders(),
                            _more(self._host_refusals.take_held_back()))
            sock.close()
            return None
        try:
            port = self._alloc_port(guest_port)
        except OSError as error:
            self.budget.close_window(window)
            log.warning("vsock: %s; refusing a host connection", error.strerror)
            sock.close()
            return None
        conn = self._new_connection(port, guest_port, sock, window, State.CONNECTING_GUEST)
        self._add(conn, window, on_established)
        self._wake()
        return conn

    # -- host listeners -------------------------------------------------------------------

    def _listen(self, sock: socket.socket, name: str,
                on_accept: Callable[[socket.socket], None]) -> None:
        sock.setblocking(False)
        sock.listen(64)
        listener = _Listener(sock, name, on_accept)
        listener.ready = lambda _mask: self._accept(listener)
        self._listeners.append(listener)
        self._watch_listener(listener)

    def _watch_listener(self, listener: _Listener) -> None:
        listener.timer = None
        if self._closed:
            return
        self.host.register(listener.sock, selectors.EVENT_READ, listener.ready)
        listener.watched = True

    def _accept(self, listener: _Listener) -> None:
        while True:
            try:
                client, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if error.errno in _CLIENT_GONE:
                    continue
                self._accept_failed(listener, error)
                break
            listener.delay_s = 0.0
            client.setblocking(False)
            listener.on_accept(client)
        self._wake()

    def _accept_failed(self, listener: _Listener, error: OSError) -> None:
        """accept() failed for want of a resource (EMFILE, ENFILE, ENOBUFS, ...): the
        pending client keeps the listener readable, so stop watching it for a while
        (doubling) instead of spinning, and say so at most once a minute."""
        listener.delay_s = min(max(2 * listener.delay_s, ACCEPT_RETRY_FIRST_S),
                               ACCEPT_RETRY_MAX_S)
        self.host.unregister(listener.sock)
        listener.watched = False
        deadline = self.clock.now_ns() + int(listener.delay_s * 1e9)
        listener.timer = self.clock.add_timer(deadline,
                                              lambda: self._watch_listener(listener))
        if listener.throttle.allow():
            log.warning("vsock: accepting on %s failed: %s; retrying with back-off (up to "
                        "%.0f s)%s", listener.name, error.strerror or error, ACCEPT_RETRY_MAX_S,
                        _more(listener.throttle.take_held_back()))

    def _listen_publish(self, publish: Publish) -> None:
        sock = socket.socket(listen_family(publish.host_addr), socket.SOCK_STREAM)
        spec = f"--publish {publish}"
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((publish.host_addr, publish.host_port))
        except OSError as error:
            sock.close()
            raise OSError(error.errno, f"{spec}: {error.strerror or error}") from None
        self.published.append((publish, sock.getsockname()))

        def accept(client: socket.socket) -> None:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connect_to_guest(client, publish.guest_port)

        self._listen(sock, spec, accept)

    def _listen_uds(self, path: str) -> None:
        unix_address.remove_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with unix_address.address(path) as address:
                sock.bind(address)
        except OSError as error:
            sock.close()
            raise OSError(error.errno, f"--vsock-uds {path}: {error.strerror or error}") from None
        self._listen(sock, f"--vsock-uds {path}", self._accept_hybrid)

    def _accept_hybrid(self, client: socket.socket) -> None:
        if self._at_capacity():
            if self._host_refusals.allow():
                log.warning("vsock: %d connections open; refusing hybrid vsock clients for "
                            "now%s", self._holders(), _more(self._host_refusals.take_held_back()))
            client.close()
            return
        self.helpers.add(HybridHandshake(client, self.host, self._connect_hybrid,
                                         self.helpers.discard))

    def _connect_hybrid(self, sock: socket.socket, guest_port: int) -> None:
        self.connect_to_guest(sock, guest_port, _answer_ok)


def _answer_ok(conn: Connection) -> None:
    """The hybrid handshake's answer once the guest accepted: `OK <parent port>`."""
    conn.greet_host(f"OK {conn.local_port}\n".encode())


def _more(held_back: int) -> str:
    return f" ({held_back} more since the last message)" if held_back else ""
