"""The two short host-side conversations of the parent that come before (or instead of) a
forwarded connection: the boot heartbeat responder and Firecracker's hybrid-vsock handshake.

Each owns one non-blocking socket registered on the reactor, and reports through the
callbacks it was given; `on_done(self)` runs once it no longer needs its socket (after
closing it, or before handing it on)."""
from __future__ import annotations

import logging
import selectors
import socket
from typing import Callable

from board.interfaces import HostIo
from devices.vsock.config import HEARTBEAT_BYTE
from devices.vsock.packet import MAX_PORT

log = logging.getLogger("nitro_emu.vsock")


class _SocketHelper:
    """A socket watched for reading until the conversation ends."""

    def __init__(self, sock: socket.socket, host: HostIo,
                 on_done: Callable[[_SocketHelper], None]) -> None:
        self.sock = sock
        self.host = host
        self.on_done = on_done
        sock.setblocking(False)
        host.register(sock, selectors.EVENT_READ, self.ready)

    def ready(self, mask: int) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        self.host.unregister(self.sock)
        self.on_done(self)

    def close(self) -> None:
        self._release()
        self.sock.close()


class HeartbeatResponder(_SocketHelper):
    """The parent's side of the boot heartbeat (spec 5.9): read one byte, require 0xB7,
    echo it back; then wait for the guest to close. `on_result(ok)` reports the byte."""

    def __init__(self, sock: socket.socket, host: HostIo, on_result: Callable[[bool], None],
                 on_done: Callable[[_SocketHelper], None]) -> None:
        self.on_result = on_result
        self.answered = False
        super().__init__(sock, host, on_done)

    def ready(self, _mask: int) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        if self.answered:
            return
        self.answered = True
        ok = data[0] == HEARTBEAT_BYTE
        if ok:
            log.info("vsock: heartbeat 0x%02x from the guest; answered", data[0])
            try:
                self.sock.send(data[:1])
            except OSError:
                pass
        else:
            log.error("vsock: heartbeat byte 0x%02x instead of 0x%02x; not answered",
                      data[0], HEARTBEAT_BYTE)
        self.on_result(ok)
        if not ok:
            self.close()


class HybridHandshake(_SocketHelper):
    """Firecracker's hybrid vsock: the host writes `CONNECT <port>\\n` on the Unix socket;
    `on_connect(sock, port)` then takes the socket over (and answers `OK <parent port>\\n`
    once the guest accepted).

    The line is consumed as it comes, into a buffer of at most MAX_LINE bytes (the reactor
    is level-triggered: bytes left unread would call back at once, forever), and never past
    its newline, so what the client sends after it stays for the connection. A client that
    fills the buffer without a newline is closed."""

    MAX_LINE = 64

    def __init__(self, sock: socket.socket, host: HostIo,
                 on_connect: Callable[[socket.socket, int], None],
                 on_done: Callable[[_SocketHelper], None]) -> None:
        self.on_connect = on_connect
        self.line = bytearray()
        super().__init__(sock, host, on_done)

    def ready(self, _mask: int) -> None:
        try:
            peek = self.sock.recv(self.MAX_LINE - len(self.line), socket.MSG_PEEK)
            end = peek.find(b"\n")
            # consume the line up to its newline, or all of the part that came
            chunk = self.sock.recv(end + 1 if end >= 0 else len(peek)) if peek else b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            log.info("vsock-uds: connection closed before its CONNECT line")
            self.close()
            return
        self.line += chunk
        if not self.line.endswith(b"\n"):
            if len(self.line) >= self.MAX_LINE:
                log.info("vsock-uds: no CONNECT line within %d bytes", self.MAX_LINE)
                self.close()
            return
        line = bytes(self.line)
        words = line.decode("ascii", "replace").split()
        if len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit() \
                or int(words[1]) > MAX_PORT:
            log.info("vsock-uds: bad handshake %r", line[:40])
            self.close()
            return
        self._release()
        self.on_connect(self.sock, int(words[1]))
