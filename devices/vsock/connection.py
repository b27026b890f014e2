"""One vsock connection between the guest and a host socket, seen from the parent (CID 3).

The state machine follows Linux's virtio transport (net/vmw_vsock/virtio_transport_common.c)
and docs/spec/nsm-vsock.md section 5.5/5.6:

- credit: we never send the guest more payload than `peer_buf_alloc - (tx_cnt -
  peer_fwd_cnt)`, and we read from the host socket only what that credit, our own
  per-connection cap and the budget shared by all connections allow, so nothing is dropped.
  Our `buf_alloc` bounds the bytes waiting for the host; `fwd_cnt` advances as the host
  socket takes them, and a CREDIT_UPDATE goes out before the guest's view of our free space
  runs low.
- close: a guest SHUTDOWN(both) is answered with RST at once (data already received still
  drains to the host before its socket closes: LINGERING); a host EOF becomes
  SHUTDOWN(SEND) after the pending data; when both directions are finished we send
  SHUTDOWN(both) and wait (CLOSING) for the guest's RST.

A connection knows nothing of its owner. The muxer calls it (`on_packet`, `on_host_event`,
`recv_pkt`, `expire`, `reset`, `close`) and afterwards reads what changed: `state`,
`has_pending_rx()`, `wanted_events()` (the host events to select), `owes_rst`. It never
touches the reactor; the host socket is closed by `dispose()`, which the muxer calls once it
has unregistered it.
"""
from __future__ import annotations

import enum
import errno
import logging
import selectors
import socket
from collections import deque

from devices.virtio.queue import DescriptorChain
from devices.vsock import packet as P
from devices.vsock.limits import BufferBudget

log = logging.getLogger("nitro_emu.vsock")


class State(enum.Enum):
    CONNECTING_HOST = "connecting-host"    # the guest sent REQUEST; host connect in progress
    CONNECTING_GUEST = "connecting-guest"  # we sent REQUEST to the guest
    ESTABLISHED = "established"
    CLOSING = "closing"                    # we sent SHUTDOWN(both); waiting for RST
    LINGERING = "lingering"                # the guest left; its data still drains to the host
    CLOSED = "closed"                      # nothing more; the host socket may be disposed of


class Pending(enum.Flag):
    """Control packets waiting for an rx buffer (data waits in `to_guest`)."""
    NONE = 0
    REQUEST = enum.auto()
    RESPONSE = enum.auto()
    CREDIT_REQUEST = enum.auto()
    CREDIT_UPDATE = enum.auto()
    SHUTDOWN = enum.auto()       # with `shutdown_flags`, once `to_guest` is empty


READ_CHUNK = 256 * 1024
EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
_PAYLOAD_OFF = P.HEADER_SIZE
_pack_header = P.HEADER.pack
_pack_header_into = P.HEADER.pack_into
_NOT_CREDIT_UPDATE = ~Pending.CREDIT_UPDATE
_NOT_SHUTDOWN = ~Pending.SHUTDOWN
_HANDSHAKE = Pending.REQUEST | Pending.RESPONSE
_NO_PENDING = Pending.NONE      # the one object every empty set is (Flag caches it)
_ESTABLISHED = State.ESTABLISHED
_CONNECTING_HOST = State.CONNECTING_HOST


class Connection:
    """A connection (local_port on CID 3) <-> (peer_port on the guest at `guest_cid`) over
    the non-blocking host socket `sock`.

    `buf_alloc` is our receive window (bytes from the guest not yet taken by the host),
    `max_guest_bound` the most bytes read from the host and not yet taken by the guest,
    `budget` the account shared by all connections. `host_seqpacket`: the host socket keeps
    message boundaries (SEQPACKET to a Unix or vsock target)."""

    def __init__(self, local_port: int, peer_port: int, sock: socket.socket, *,
                 guest_cid: int, state: State, buf_alloc: int, max_guest_bound: int,
                 budget: BufferBudget, type_: int = P.TYPE_STREAM,
                 host_seqpacket: bool = False, peer_buf_alloc: int = 0,
                 peer_fwd_cnt: int = 0) -> None:
        self.local_port = local_port
        self.peer_port = peer_port
        self.guest_cid = guest_cid
        self.type = type_
        self.sock = sock
        self.host_seqpacket = host_seqpacket
        self.state = state
        self.budget = budget
        self.max_guest_bound = max_guest_bound
        sock.setblocking(False)
        # credit: ours
        self.buf_alloc = buf_alloc
        self.fwd_cnt = 0            # bytes handed to the host socket
        self.rx_cnt = 0             # payload bytes received from the guest
        self.last_fwd_sent = 0      # fwd_cnt the guest last heard from us
        # credit: the guest's
        self.peer_buf_alloc = peer_buf_alloc
        self.peer_fwd_cnt = peer_fwd_cnt
        self.tx_cnt = 0             # payload bytes sent to the guest
        self.credit_requested = False
        # host-bound data: chunks not yet taken by the host socket
        self.to_host: deque[bytes] = deque()
        self.to_host_bytes = 0
        self.uncounted = 0          # leading to_host bytes that are ours, not guest payload
        self.seq_parts: list[bytes] = []   # guest SEQPACKET message being assembled
        # guest-bound data: [chunk, offset, flags of its last byte]
        self.to_guest: deque[list] = deque()
        self.to_guest_bytes = 0
        self.read_need = 1          # room needed before the next host read (a whole message)
        self.budget_blocked = False  # set by wanted_events(): only the shared budget stops reads
        self.credit_blocked = False  # set by wanted_events(): the guest's credit stops reads
        # pending control output
        self.pending = Pending.REQUEST if state is State.CONNECTING_GUEST else Pending.NONE
        self.shutdown_flags = 0     # for the pending SHUTDOWN
        self.shutdown_sent = 0
        self.owes_rst = False       # the guest must hear an RST once we drop the connection
        # end-of-stream bookkeeping
        self.host_eof = False       # the host will send no more
        self.host_wr_closed = False  # we shut the host socket's write side
        self.guest_shut_send = False
        self.guest_shut_rcv = False

    def __repr__(self) -> str:
        return (f"Connection(3:{self.local_port} <-> guest:{self.peer_port} "
                f"{self.state.value}, to_host={self.to_host_bytes}, "
                f"to_guest={self.to_guest_bytes})")

    @property
    def key(self) -> tuple[int, int]:
        return (self.local_port, self.peer_port)

    # -- what the muxer reads after each change -------------------------------------------

    def credit_room(self) -> int:
        """Payload bytes the guest can still take (its credit minus what is queued)."""
        room = self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF)
        return room if room > 0 else 0

    def has_pending_rx(self) -> bool:
        """Whether `recv_pkt` has a packet for the guest now."""
        if self.to_guest_bytes:     # data to send, or one CREDIT_REQUEST per stall
            if not self.credit_requested or \
                    self.peer_buf_alloc > (self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF:
                return True
            return bool(self.pending & _NOT_SHUTDOWN)   # SHUTDOWN waits behind the data
        return self.pending is not _NO_PENDING

    def wanted_events(self) -> int:
        """The host events this connection can act on now (selectors mask); sets
        `budget_blocked` when reading waits only for the shared guest-bound budget, and
        `credit_blocked` when it waits for the guest's credit (which packets sent to the
        guest never give back)."""
        self.budget_blocked = self.credit_blocked = False
        if self.state is not _ESTABLISHED:
            return EVENT_WRITE if (self.to_host or self.state is _CONNECTING_HOST) else 0
        mask = EVENT_WRITE if self.to_host else 0
        if self.host_eof or self.guest_shut_rcv:
            return mask
        queued = self.to_guest_bytes
        room = (self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF)
                - queued)                      # the guest's credit not yet spoken for
        need = self.read_need
        if room < need:
            self.credit_blocked = True
            return mask
        cap = self.max_guest_bound - queued
        if cap < room:
            room = cap
        if room >= need:
            budget = self.budget
            if budget.guest_bound_limit - budget.guest_bound >= need:
                return mask | EVENT_READ
            self.budget_blocked = True
        return mask

    # -- packets to the guest -------------------------------------------------------------

    def _header(self, op: int, length: int = 0, flags: int = 0) -> bytes:
        self.last_fwd_sent = self.fwd_cnt
        if self.pending is not _NO_PENDING:
            self.pending &= _NOT_CREDIT_UPDATE   # every header carries our credit
        return _pack_header(P.CID_PARENT, self.guest_cid, self.local_port, self.peer_port,
                            length, self.type, op, flags, self.buf_alloc, self.fwd_cnt)

    def recv_pkt(self, chain: DescriptorChain) -> int:
        """Write the next packet for the guest into `chain` (its writable area holds at
        least a header); returns the used length, or 0 if there is nothing to send now."""
        pending = self.pending
        if pending is not _NO_PENDING and pending & _HANDSHAKE:
            if Pending.REQUEST in pending:
                self.pending = pending & ~Pending.REQUEST
                return chain.write(self._header(P.OP_REQUEST))
            self.pending = pending & ~Pending.RESPONSE
            return chain.write(self._header(P.OP_RESPONSE))
        if self.to_guest_bytes:
            room = self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF)
            if room > 0:
                return self._send_data(chain, room)
            if not self.credit_requested:
                self.credit_requested = True
                self.pending = pending = pending | Pending.CREDIT_REQUEST
        if pending is _NO_PENDING:
            return 0
        if Pending.CREDIT_REQUEST in pending:
            self.pending = pending & ~Pending.CREDIT_REQUEST
            return chain.write(self._header(P.OP_CREDIT_REQUEST))
        if Pending.CREDIT_UPDATE in pending:
            return chain.write(self._header(P.OP_CREDIT_UPDATE))
        if Pending.SHUTDOWN in pending and not self.to_guest_bytes:
            self.pending = pending & ~Pending.SHUTDOWN
            flags = self.shutdown_flags
            self.shutdown_flags = 0
            self.shutdown_sent |= flags
            return chain.write(self._header(P.OP_SHUTDOWN, 0, flags))
        return 0

    def _send_data(self, chain: DescriptorChain, room: int) -> int:
        """One RW packet of at most `room` bytes from the head of `to_guest`."""
        capacity = chain.writable_length - _PAYLOAD_OFF
        entry = self.to_guest[0]
        data, offset, flags = entry
        n = len(data) - offset
        if n > capacity or n > room:
            n = capacity if capacity < room else room
            flags = 0                           # the message's end goes in a later packet
            entry[1] = offset + n
        else:
            self.to_guest.popleft()
        self.to_guest_bytes -= n
        self.budget.guest_bound -= n            # budget.give(n), inline: once per packet
        self.tx_cnt = (self.tx_cnt + n) & 0xFFFFFFFF
        end = _PAYLOAD_OFF + n
        buf = chain.writable[0]
        if len(buf) >= end:                     # the usual single-descriptor rx buffer
            buf[_PAYLOAD_OFF:end] = memoryview(data)[offset:offset + n]
            self.last_fwd_sent = self.fwd_cnt
            if self.pending is not _NO_PENDING:
                self.pending &= _NOT_CREDIT_UPDATE
            _pack_header_into(buf, 0, P.CID_PARENT, self.guest_cid, self.local_port,
                              self.peer_port, n, self.type, P.OP_RW, flags, self.buf_alloc,
                              self.fwd_cnt)
        else:
            chain.write(memoryview(data)[offset:offset + n], _PAYLOAD_OFF)
            chain.write(self._header(P.OP_RW, n, flags))
        return end

    # -- events from the guest ------------------------------------------------------------

    def on_packet(self, hdr: P.Header, payload: list[memoryview]) -> None:
        """A packet from the guest for this connection; `payload` holds exactly `hdr.len`
        bytes (views into guest memory, copied only if they must wait)."""
        op = hdr.op
        if hdr.type != self.type:
            log.info("vsock: type %d packet on %r; resetting", hdr.type, self)
            self.reset()
            return
        if op == P.OP_RST:
            self._guest_gone()
            return
        if hdr.buf_alloc != self.peer_buf_alloc or hdr.fwd_cnt != self.peer_fwd_cnt:
            self.peer_buf_alloc = hdr.buf_alloc
            self.peer_fwd_cnt = hdr.fwd_cnt
            self.credit_requested = False
        if op == P.OP_RW:
            self._guest_data(payload, hdr.len, hdr.flags)
        elif op == P.OP_CREDIT_UPDATE:
            pass
        elif op == P.OP_CREDIT_REQUEST:
            self.pending |= Pending.CREDIT_UPDATE
        elif op == P.OP_SHUTDOWN:
            self._guest_shutdown(hdr.flags)
        elif op == P.OP_RESPONSE and self.state is State.CONNECTING_GUEST:
            self.state = _ESTABLISHED
        else:
            log.info("vsock: unexpected %s on %r; resetting", P.OP_NAMES.get(op, op), self)
            self.reset()

    def _guest_data(self, payload: list[memoryview], length: int, flags: int) -> None:
        if self.state is not _ESTABLISHED or self.guest_shut_send:
            log.info("vsock: RW on %r after it stopped accepting data; resetting", self)
            self.reset()
            return
        if not length and not (self.type == P.TYPE_SEQPACKET and flags & P.SEQ_EOM):
            return
        queued = (self.rx_cnt - self.fwd_cnt) & 0xFFFFFFFF
        if queued + length > self.buf_alloc:
            log.warning("vsock: guest sent %d bytes beyond the credit of %r; resetting",
                        queued + length - self.buf_alloc, self)
            self.reset()
            return
        self.rx_cnt = (self.rx_cnt + length) & 0xFFFFFFFF
        if self.type == P.TYPE_SEQPACKET:
            self.seq_parts.extend(bytes(v) for v in payload)
            if flags & P.SEQ_EOM:
                message = b"".join(self.seq_parts)
                self.to_host.append(message)
                self.to_host_bytes += len(message)
                self.seq_parts = []
                self._flush_to_host()
            return
        if self.to_host:
            for view in payload:
                self.to_host.append(bytes(view))
                self.to_host_bytes += len(view)
            return
        sock = self.sock
        for i, view in enumerate(payload):
            try:
                sent = sock.send(view)
            except _WOULD_BLOCK:
                sent = 0
            except OSError as error:
                self._host_failed(error)
                return
            self.fwd_cnt = (self.fwd_cnt + sent) & 0xFFFFFFFF
            if sent < len(view):
                self.to_host.append(bytes(view[sent:]))
                self.to_host_bytes += len(view) - sent
                for rest in payload[i + 1:]:
                    self.to_host.append(bytes(rest))
                    self.to_host_bytes += len(rest)
                break
        self._credit_check()

    def _credit_check(self) -> None:
        """Queue a CREDIT_UPDATE if the guest's view of our free space is getting low."""
        if self.fwd_cnt == self.last_fwd_sent or (
                self.pending is not _NO_PENDING and Pending.CREDIT_UPDATE in self.pending):
            return
        # Linux sends at most min(our buf_alloc, its own buf_alloc) unacknowledged bytes
        # (virtio_transport_tx_buf_size), so that is the window the guest sees.
        window = self.buf_alloc
        if 0 < self.peer_buf_alloc < window:
            window = self.peer_buf_alloc
        guest_view_free = window - ((self.rx_cnt - self.last_fwd_sent) & 0xFFFFFFFF)
        if guest_view_free < window // 2 or guest_view_free < P.MAX_PKT_PAYLOAD:
            self.pending |= Pending.CREDIT_UPDATE

    def _guest_shutdown(self, flags: int) -> None:
        if flags & P.SHUTDOWN_SEND:
            self.guest_shut_send = True
            self.seq_parts = []         # an unfinished message can never complete
        if flags & P.SHUTDOWN_RCV:
            self.guest_shut_rcv = True
            self._drop_guest_bound()
        if self.guest_shut_send and self.guest_shut_rcv:
            # Linux: full shutdown and nothing left for the peer -> RST.
            self.owes_rst = True
            self._guest_gone()
            return
        if self.guest_shut_send:
            self._maybe_shut_host_write()
        self._maybe_finish()

    def _guest_gone(self) -> None:
        """The guest left this connection: deliver what it already sent, then close."""
        self._drop_guest_bound()
        self.pending = Pending.NONE
        if self.to_host and self.state is not State.CONNECTING_HOST:
            self.state = State.LINGERING
            self.guest_shut_send = True
        else:
            self._close()

    # -- events from the host socket ------------------------------------------------------

    def on_host_event(self, mask: int) -> None:
        if mask & EVENT_WRITE:
            if self.state is State.CONNECTING_HOST:
                self._host_connect_done()
            elif self.to_host:
                self._flush_to_host()
        if mask & EVENT_READ and self.state is _ESTABLISHED:
            self._read_host()

    def _host_connect_done(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            log.info("vsock: connect for guest port %d -> parent port %d failed: %s",
                     self.peer_port, self.local_port, errno.errorcode.get(err, err))
            self.reset()
            return
        self.host_connected()

    def host_connected(self) -> None:
        """The host side is connected: accept the guest's REQUEST."""
        self.state = _ESTABLISHED
        self.pending |= Pending.RESPONSE

    def _read_host(self) -> None:
        queued = self.to_guest_bytes
        credit = self.credit_room() - queued
        room = credit
        if self.max_guest_bound - queued < room:
            room = self.max_guest_bound - queued
        if self.budget.room() < room:
            room = self.budget.room()
        if room < self.read_need:
            return                      # wanted_events() stops selecting READ
        sock = self.sock
        try:
            if self.host_seqpacket:
                probe = bytearray(1)
                size = sock.recv_into(probe, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
                if size > min(self.peer_buf_alloc, self.max_guest_bound):
                    log.warning("vsock: %d-byte message from the host exceeds what the guest "
                                "can be sent at once on %r; resetting", size, self)
                    self.reset()
                    return
                if size > room:         # wait until the whole message fits
                    self.read_need = size
                    if size > credit and not self.credit_requested:
                        self.credit_requested = True
                        self.pending |= Pending.CREDIT_REQUEST
                    return
                self.read_need = 1
                data = sock.recv(max(size, 1)) if size else b""
            else:
                data = sock.recv(room if room < READ_CHUNK else READ_CHUNK)
        except _WOULD_BLOCK:
            return
        except OSError as error:
            self._host_failed(error)
            return
        if not data:   # EOF (an empty SEQPACKET message reads the same; not forwarded)
            self.host_eof = True
            self.shutdown_flags |= P.SHUTDOWN_SEND
            self.pending |= Pending.SHUTDOWN
            self._maybe_finish()
            return
        n = len(data)
        self.to_guest.append([data, 0, P.SEQ_EOM if self.type == P.TYPE_SEQPACKET else 0])
        self.to_guest_bytes += n
        self.budget.take(n)

    def _flush_to_host(self) -> None:
        sock = self.sock
        to_host = self.to_host
        seq = self.host_seqpacket
        sent_total = 0
        while to_host:
            chunk = to_host[0]
            try:
                sent = sock.send(chunk)
            except _WOULD_BLOCK:
                break
            except OSError as error:
                self._host_failed(error)
                return
            if seq or sent == len(chunk):
                to_host.popleft()
                sent = len(chunk)
            else:
                to_host[0] = chunk[sent:]
            sent_total += sent
            if sent < len(chunk):
                break
        if sent_total:
            self.to_host_bytes -= sent_total
            if self.uncounted:
                own = min(self.uncounted, sent_total)
                self.uncounted -= own
                sent_total -= own
            self.fwd_cnt = (self.fwd_cnt + sent_total) & 0xFFFFFFFF
            if self.state is not State.LINGERING:
                self._credit_check()
        if not to_host:
            if self.guest_shut_send:
                self._maybe_shut_host_write()
            if self.state is State.LINGERING:   # everything the guest sent was delivered
                self._close()
                return
            self._maybe_finish()

    def _maybe_shut_host_write(self) -> None:
        if self.to_host or self.host_wr_closed:
            return
        self.host_wr_closed = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _maybe_finish(self) -> None:
        """Both directions done: SHUTDOWN(both) and wait for the guest's RST."""
        if (self.state is _ESTABLISHED and self.host_eof and self.guest_shut_send
                and not self.to_host):
            self.state = State.CLOSING
            self.shutdown_flags = P.SHUTDOWN_BOTH
            self.pending |= Pending.SHUTDOWN

    def _host_failed(self, error: OSError) -> None:
        log.info("vsock: host socket of %r failed: %s; resetting", self, error)
        self.reset()

    # -- the host side's own output and teardown ----------------------------------------

    def greet_host(self, data: bytes) -> None:
        """Send `data` to the host before anything from the guest (not guest payload, so it
        moves no credit): the hybrid handshake's `OK <port>` line."""
        self.to_host.appendleft(data)
        self.to_host_bytes += len(data)
        self.uncounted += len(data)

    def expire(self) -> None:
        """The muxer's timer for CONNECTING_GUEST or CLOSING ran out: reset."""
        if self.state in (State.CONNECTING_GUEST, State.CLOSING):
            self.reset()

    def reset(self) -> None:
        """Abort: RST to the guest (if it still knows this connection), drop everything."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.LINGERING:
            self.owes_rst = True
        self._close()

    def close(self) -> None:
        """Drop the connection without telling the guest (its driver was reset)."""
        self._close()

    def _close(self) -> None:
        self.state = State.CLOSED
        self.pending = Pending.NONE
        self._drop_guest_bound()
        self.to_host.clear()
        self.to_host_bytes = 0
        self.seq_parts = []

    def _drop_guest_bound(self) -> None:
        if self.to_guest_bytes:
            self.budget.give(self.to_guest_bytes)
        self.to_guest.clear()
        self.to_guest_bytes = 0

    def dispose(self) -> None:
        """Close the host socket (after the muxer stopped watching it)."""
        try:
            self.sock.close()
        except OSError:
            pass
