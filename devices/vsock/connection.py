"""One vsock connection between the guest and a host socket, seen from the parent (CID 3).

The state machine follows Linux's virtio transport (net/vmw_vsock/virtio_transport_common.c)
and docs/spec/nsm-vsock.md section 5.5/5.6:

- credit: we never send the guest more payload than `peer_buf_alloc - (tx_cnt -
  peer_fwd_cnt)`; we read from the host socket only what that credit allows, so data
  waiting for the guest is bounded and nothing is dropped. Our own `buf_alloc` bounds the
  bytes waiting for the host; `fwd_cnt` advances as the host socket takes them, and a
  CREDIT_UPDATE goes out before the guest's view of our free space runs low.
- close: a guest SHUTDOWN(both) is answered with RST at once (data already received still
  drains to the host before its socket closes); a host EOF becomes SHUTDOWN(SEND) after
  the pending data; when both directions are finished we send SHUTDOWN(both) and wait up
  to `close_timeout` for the guest's RST.

The host socket is non-blocking and registered on the machine's HostIo reactor; only the
events the connection can act on are selected (no read while the guest has no credit).
"""
from __future__ import annotations

import errno
import logging
import selectors
import socket
from collections import deque
from typing import TYPE_CHECKING

from devices.virtio.queue import DescriptorChain
from devices.vsock import packet as P

if TYPE_CHECKING:
    from devices.vsock.device import VsockDevice

log = logging.getLogger("nitro_emu.vsock")

CONNECTING_HOST = "connecting-host"     # guest sent REQUEST; host connect in progress
CONNECTING_GUEST = "connecting-guest"   # we sent REQUEST to the guest
ESTABLISHED = "established"
CLOSING = "closing"                     # we sent SHUTDOWN(both); waiting for RST
CLOSED = "closed"

READ_CHUNK = 256 * 1024
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE
_PAYLOAD_OFF = P.HEADER_SIZE
_pack_header = P.HEADER.pack
_pack_header_into = P.HEADER.pack_into


class Connection:
    """A connection (local_port on CID 3) <-> (peer_port on the guest) over `sock`."""

    def __init__(self, device: VsockDevice, local_port: int, peer_port: int,
                 sock: socket.socket, type_: int = P.TYPE_STREAM,
                 state: str = ESTABLISHED, host_seqpacket: bool = False) -> None:
        self.device = device
        self.local_port = local_port
        self.peer_port = peer_port
        self.type = type_
        self.sock = sock
        self.fd = sock.fileno()
        self.host_seqpacket = host_seqpacket
        self.state = state
        sock.setblocking(False)
        # credit: ours
        self.buf_alloc = device.config.buf_alloc
        self.fwd_cnt = 0            # bytes handed to the host socket
        self.rx_cnt = 0             # payload bytes received from the guest
        self.last_fwd_sent = 0      # fwd_cnt the guest last heard from us
        # credit: the guest's
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.tx_cnt = 0             # payload bytes sent to the guest
        # host-bound data: chunks not yet taken by the host socket
        self.to_host: deque[bytes] = deque()
        self.to_host_bytes = 0
        self.uncounted = 0          # leading to_host bytes that are ours, not guest payload
        self.seq_parts: list[bytes] = []   # guest SEQPACKET message being assembled
        # guest-bound data: [chunk, offset, flags of its last byte]
        self.to_guest: deque[list] = deque()
        self.to_guest_bytes = 0
        # pending control output
        self.want_request = False
        self.want_response = False
        self.want_credit_update = False
        self.want_credit_request = False
        self.credit_requested = False
        self.shutdown_to_send = 0   # flags for a SHUTDOWN after the queued data
        self.shutdown_sent = 0
        # end-of-stream bookkeeping
        self.host_eof = False       # the host will send no more
        self.host_wr_closed = False  # we shut the host socket's write side
        self.guest_shut_send = False
        self.guest_shut_rcv = False
        self.in_work = False
        self.registered = 0
        self.timer = None
        self.on_established = None  # callable run once the guest accepted (hybrid OK line)

    # -- helpers ------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"Connection(3:{self.local_port} <-> guest:{self.peer_port} {self.state}, "
                f"to_host={self.to_host_bytes}, to_guest={self.to_guest_bytes})")

    def credit_room(self) -> int:
        """Payload bytes the guest can still take (its credit minus what is queued)."""
        room = self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF)
        return room if room > 0 else 0

    def has_output(self) -> bool:
        if self.want_response or self.want_request or self.want_credit_update \
                or self.want_credit_request:
            return True
        if self.to_guest_bytes:     # data to send, or one CREDIT_REQUEST per stall
            return self.credit_room() > 0 or not self.credit_requested
        return bool(self.shutdown_to_send)

    def _queue(self) -> None:
        if not self.in_work and self.state != CLOSED:
            self.in_work = True
            self.device.work.append(self)

    def update_interest(self) -> None:
        """Select exactly the host events this connection can act on now."""
        if self.state == CLOSED:
            return
        mask = 0
        if self.state == CONNECTING_HOST or self.to_host:
            mask |= _EVENT_WRITE
        if (self.state == ESTABLISHED and not self.host_eof and not self.guest_shut_rcv
                and self.credit_room() > self.to_guest_bytes):
            mask |= _EVENT_READ
        if mask == self.registered:
            return
        host = self.device.host
        if mask == 0:
            host.unregister(self.sock)
        elif self.registered == 0:
            host.register(self.sock, mask, self.on_host_event)
        else:
            host.modify(self.sock, mask, self.on_host_event)
        self.registered = mask

    # -- packets to the guest -----------------------------------------------------------

    def header(self, op: int, length: int = 0, flags: int = 0) -> bytes:
        self.last_fwd_sent = self.fwd_cnt
        self.want_credit_update = False
        return _pack_header(P.CID_PARENT, self.device.guest_cid, self.local_port,
                            self.peer_port, length, self.type, op, flags,
                            self.buf_alloc, self.fwd_cnt)

    def fill(self, chain: DescriptorChain, capacity: int) -> int:
        """Write the next packet for the guest into `chain` (payload at most `capacity`
        bytes); returns the used length, or 0 if there is nothing to send now."""
        if self.want_request:
            self.want_request = False
            return chain.write(self.header(P.OP_REQUEST))
        if self.want_response:
            self.want_response = False
            return chain.write(self.header(P.OP_RESPONSE))
        if self.to_guest_bytes:
            room = self.credit_room()
            if room:
                entry = self.to_guest[0]
                data, offset, flags = entry
                n = len(data) - offset
                if n > capacity or n > room:
                    n = min(capacity, room)
                    flags = 0
                    entry[1] = offset + n
                else:
                    self.to_guest.popleft()
                self.to_guest_bytes -= n
                self.tx_cnt = (self.tx_cnt + n) & 0xFFFFFFFF
                end = _PAYLOAD_OFF + n
                buf = chain.writable[0]
                if len(buf) >= end:      # the usual single-descriptor rx buffer
                    buf[_PAYLOAD_OFF:end] = memoryview(data)[offset:offset + n]
                    self.last_fwd_sent = self.fwd_cnt
                    self.want_credit_update = False
                    _pack_header_into(buf, 0, P.CID_PARENT, self.device.guest_cid,
                                      self.local_port, self.peer_port, n, self.type, P.OP_RW,
                                      flags, self.buf_alloc, self.fwd_cnt)
                else:
                    chain.write(memoryview(data)[offset:offset + n], _PAYLOAD_OFF)
                    chain.write(self.header(P.OP_RW, n, flags))
                return end
            if not self.credit_requested:
                self.credit_requested = True
                self.want_credit_request = True
        if self.want_credit_request:
            self.want_credit_request = False
            return chain.write(self.header(P.OP_CREDIT_REQUEST))
        if self.want_credit_update:
            return chain.write(self.header(P.OP_CREDIT_UPDATE))
        if self.shutdown_to_send and not self.to_guest_bytes:
            flags = self.shutdown_to_send
            self.shutdown_to_send = 0
            self.shutdown_sent |= flags
            return chain.write(self.header(P.OP_SHUTDOWN, 0, flags))
        return 0

    # -- events from the guest ----------------------------------------------------------

    def on_packet(self, hdr: P.Header, payload: list[memoryview], length: int) -> None:
        """A packet from the guest for this connection (credit fields already applied)."""
        op = hdr.op
        if op == P.OP_RW:
            self._guest_data(payload, length, hdr.flags)
        elif op == P.OP_CREDIT_UPDATE:
            pass
        elif op == P.OP_CREDIT_REQUEST:
            self.want_credit_update = True
            self._queue()
        elif op == P.OP_SHUTDOWN:
            self._guest_shutdown(hdr.flags)
        elif op == P.OP_RST:
            self.device.forget(self)
            self._linger_or_close()
        elif op == P.OP_RESPONSE and self.state == CONNECTING_GUEST:
            self._cancel_timer()
            self.state = ESTABLISHED
            if self.on_established is not None:
                self.on_established(self)
                self.on_established = None
            self.update_interest()
        else:
            log.info("vsock: unexpected %s on %r; resetting", P.OP_NAMES.get(op, op), self)
            self.reset()

    def credit_changed(self, buf_alloc: int, fwd_cnt: int) -> None:
        if buf_alloc == self.peer_buf_alloc and fwd_cnt == self.peer_fwd_cnt:
            return
        self.peer_buf_alloc = buf_alloc
        self.peer_fwd_cnt = fwd_cnt
        self.credit_requested = False
        if self.to_guest_bytes:
            self._queue()
        if self.registered & _EVENT_READ == 0:
            self.update_interest()

    def _guest_data(self, payload: list[memoryview], length: int, flags: int) -> None:
        if self.state != ESTABLISHED or self.guest_shut_send:
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
        if not self.to_host:
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
        else:
            for view in payload:
                self.to_host.append(bytes(view))
                self.to_host_bytes += len(view)
        self.update_interest()

    def _credit_check(self) -> None:
        """Queue a CREDIT_UPDATE if the guest's view of our free space is getting low."""
        if self.fwd_cnt == self.last_fwd_sent or self.want_credit_update:
            return
        # Linux sends at most min(our buf_alloc, its own buf_alloc) unacknowledged bytes
        # (virtio_transport_tx_buf_size), so that is the window the guest sees.
        window = self.buf_alloc
        if 0 < self.peer_buf_alloc < window:
            window = self.peer_buf_alloc
        guest_view_free = window - ((self.rx_cnt - self.last_fwd_sent) & 0xFFFFFFFF)
        if guest_view_free < window // 2 or guest_view_free < P.MAX_PKT_PAYLOAD:
            self.want_credit_update = True
            self._queue()

    def _guest_shutdown(self, flags: int) -> None:
        if flags & P.SHUTDOWN_SEND:
            self.guest_shut_send = True
            if self.seq_parts:          # an unfinished message can never complete
                self.seq_parts = []
        if flags & P.SHUTDOWN_RCV:
            self.guest_shut_rcv = True
            self.to_guest.clear()
            self.to_guest_bytes = 0
        if self.guest_shut_send and self.guest_shut_rcv:
            # Linux: full shutdown and nothing left for the peer -> RST.
            self.device.send_rst(self.local_port, self.peer_port, self.type)
            self.device.forget(self)
            self._linger_or_close()
            return
        if self.guest_shut_send:
            self._maybe_shut_host_write()
        self._maybe_finish()
        self.update_interest()

    # -- events from the host socket ----------------------------------------------------

    def on_host_event(self, mask: int) -> None:
        try:
            if mask & _EVENT_WRITE:
                if self.state == CONNECTING_HOST:
                    self._host_connected()
                elif self.to_host:
                    self._flush_to_host()
            if mask & _EVENT_READ and self.state == ESTABLISHED:
                self._read_host()
        finally:
            self.device.kick()

    def _host_connected(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            log.info("vsock: connect for guest port %d -> parent port %d failed: %s",
                     self.peer_port, self.local_port, errno.errorcode.get(err, err))
            self.device.forget(self)
            self.device.send_rst(self.local_port, self.peer_port, self.type)
            self.close()
            return
        self.established_from_host()

    def established_from_host(self) -> None:
        """The host side is connected: accept the guest's REQUEST."""
        self.state = ESTABLISHED
        self.want_response = True
        self._queue()
        self.update_interest()

    def _read_host(self) -> None:
        room = self.credit_room() - self.to_guest_bytes
        if room <= 0:
            self.update_interest()
            return
        sock = self.sock
        try:
            if self.host_seqpacket:
                probe = bytearray(1)
                size = sock.recv_into(probe, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
                if size > self.peer_buf_alloc:
                    log.warning("vsock: %d-byte message from the host exceeds the guest's "
                                "buffer (%d) on %r; resetting", size, self.peer_buf_alloc, self)
                    self.reset()
                    return
                if size > room:
                    self.registered_wait_credit()
                    return
                data = sock.recv(max(size, 1))
                if size == 0:
                    data = b""
            else:
                data = sock.recv(room if room < READ_CHUNK else READ_CHUNK)
        except _WOULD_BLOCK:
            return
        except OSError as error:
            self._host_failed(error)
            return
        if not data:   # EOF (an empty SEQPACKET message reads the same; not forwarded)
            self.host_eof = True
            self.shutdown_to_send |= P.SHUTDOWN_SEND
            self._queue()
            self._maybe_finish()
            self.update_interest()
            return
        self.to_guest.append([data, 0, P.SEQ_EOM if self.type == P.TYPE_SEQPACKET else 0])
        self.to_guest_bytes += len(data)
        self._queue()
        if self.credit_room() <= self.to_guest_bytes:
            self.update_interest()

    def registered_wait_credit(self) -> None:
        """A whole host message does not fit the guest's credit yet: ask for credit and
        stop reading until it changes."""
        if not self.credit_requested:
            self.credit_requested = True
            self.want_credit_request = True
            self._queue()
        mask = self.registered & ~_EVENT_READ
        if mask != self.registered:
            if mask:
                self.device.host.modify(self.sock, mask, self.on_host_event)
            else:
                self.device.host.unregister(self.sock)
            self.registered = mask

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
            if self.state != CLOSED and self.device.conns.get(self.key) is self:
                self._credit_check()
        if not to_host:
            if self.guest_shut_send:
                self._maybe_shut_host_write()
            if self.state == CLOSED:   # lingering: everything was delivered
                self._really_close()
                return
            self._maybe_finish()
        self.update_interest()

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
        if (self.state == ESTABLISHED and self.host_eof and self.guest_shut_send
                and not self.to_host):
            self.state = CLOSING
            self.shutdown_to_send = P.SHUTDOWN_BOTH
            self._queue()
            self._arm_timer(self.device.config.close_timeout_s, self._close_timeout)

    def _close_timeout(self) -> None:
        self.timer = None
        if self.state == CLOSING:
            log.info("vsock: guest did not answer SHUTDOWN on %r; resetting", self)
            self.reset()
            self.device.kick()

    def _host_failed(self, error: OSError) -> None:
        log.info("vsock: host socket of %r failed: %s; resetting", self, error)
        if self.state == CLOSED:      # lingering after the guest left
            self.close()
            return
        self.reset()

    # -- teardown -----------------------------------------------------------------------

    @property
    def key(self) -> tuple[int, int]:
        return (self.local_port, self.peer_port)

    def _arm_timer(self, seconds: float, callback) -> None:
        self._cancel_timer()
        clock = self.device.clock
        self.timer = clock.add_timer(clock.now_ns() + int(seconds * 1e9), callback)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def reset(self) -> None:
        """Abort: RST to the guest (if it knows this connection) and close the host side."""
        if self.state == CLOSED:
            return
        self.device.forget(self)
        self.device.send_rst(self.local_port, self.peer_port, self.type)
        self.close()

    def _linger_or_close(self) -> None:
        """The guest is gone from this connection; deliver what it already sent, then close."""
        self._cancel_timer()
        self.to_guest.clear()
        self.to_guest_bytes = 0
        if self.to_host and self.state != CONNECTING_HOST:
            self.state = CLOSED
            self.guest_shut_send = True
            self.device.lingering.add(self)
            self.registered_update_linger()
        else:
            self.close()

    def registered_update_linger(self) -> None:
        mask = _EVENT_WRITE
        host = self.device.host
        if self.registered == 0:
            host.register(self.sock, mask, self.on_host_event)
        elif self.registered != mask:
            host.modify(self.sock, mask, self.on_host_event)
        self.registered = mask

    def _really_close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        """Close the host socket now and drop every pending byte."""
        self._cancel_timer()
        self.state = CLOSED
        self.device.lingering.discard(self)
        if self.registered:
            self.device.host.unregister(self.sock)
            self.registered = 0
        self.to_host.clear()
        self.to_guest.clear()
        self.to_host_bytes = self.to_guest_bytes = 0
        try:
            self.sock.close()
        except OSError:
            pass
