"""The enclave process's control socket: one JSON line in, one JSON line out.

    -> {"op": "describe", "metadata": true}     <- {"ok": true, "entry": "<JSON text>"}
    -> {"op": "terminate"}                       <- {"ok": true}
    <- {"ok": false, "error": "..."} for anything else

The server runs on any reactor (`HostIo`); the enclave process serves it on the reactor of
its control thread (control_thread.ServingThread), so requests are answered while a
debugger holds the emulator thread. The socket lives in the user's private enclave
directory; only the user can reach it.
"""
from __future__ import annotations

import json
import logging
import selectors
import socket
import time
from typing import Callable

from board.interfaces import HostIo
from devices.vsock.unix_address import address as unix_address, remove_socket

log = logging.getLogger("nitro_emu.enclaves")

REQUEST_LIMIT = 4096
REPLY_LIMIT = 1 << 20
BACKLOG = 64

Handler = Callable[[dict], dict]


class ControlError(OSError):
    """The enclave process could not be reached or gave no usable answer."""


class ControlServer:
    """Listens on `path`; `start(host)` begins serving `handlers[op](request)` on it.

    The socket is bound at construction, so clients that come before `start` wait in the
    backlog instead of being refused."""

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._host: HostIo | None = None
        self._clients: dict[socket.socket, bytearray] = {}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with unix_address(path) as address:
                self._sock.bind(address)
            self._sock.listen(BACKLOG)
            self._sock.setblocking(False)
        except OSError:
            self.close()
            raise

    def start(self, host: HostIo) -> None:
        self._host = host
        host.register(self._sock, selectors.EVENT_READ, self._accept)

    def _accept(self, _mask: int) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("control socket: accept failed: %s", error)
                return
            client.setblocking(False)
            self._clients[client] = bytearray()
            self._host.register(client, selectors.EVENT_READ,
                                lambda mask, c=client: self._read(c))

    def _read(self, client: socket.socket) -> None:
        buffer = self._clients.get(client)
        if buffer is None:
            return
        try:
            data = client.recv(REQUEST_LIMIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        buffer += data
        end = buffer.find(b"\n")
        if end < 0:
            if not data or len(buffer) >= REQUEST_LIMIT:
                self._drop(client)
            return
        reply = self._answer(bytes(buffer[:end]))
        try:
            client.send(json.dumps(reply).encode() + b"\n")
        except OSError as error:
            log.info("control socket: reply not sent: %s", error)
        self._drop(client)

    def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "the request is not JSON"}
        if not isinstance(request, dict) or request.get("op") not in self.handlers:
            return {"ok": False, "error": "unknown request"}
        try:
            return self.handlers[request["op"]](request)
        except Exception as error:      # a bad request must not end the enclave
            log.exception("control socket: %s failed", request.get("op"))
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}

    def _drop(self, client: socket.socket) -> None:
        self._clients.pop(client, None)
        if self._host is not None:
            self._host.unregister(client)
        client.close()

    def close(self) -> None:
        """Stop serving, close every connection and remove the socket file (once)."""
        if self._sock.fileno() < 0:
            return
        for client in list(self._clients):
            self._drop(client)
        if self._host is not None:
            self._host.unregister(self._sock)
        self._sock.close()
        remove_socket(self.path)


def request(path: str, op: str, timeout: float = 10.0, **arguments: object) -> dict:
    """Send one request to the enclave process listening on `path`; its reply as a dict
    with "ok" true. ControlError if it cannot be reached, does not answer in `timeout`
    seconds, or refuses."""
    deadline = time.monotonic() + timeout
    line = json.dumps({"op": op, **arguments}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with unix_address(path) as address:
                sock.connect(address)
            sock.sendall(line)
            reply = bytearray()
            while not reply.endswith(b"\n"):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
                if len(reply) > REPLY_LIMIT:
                    raise ControlError(f"{path}: reply larger than {REPLY_LIMIT} bytes")
        except socket.timeout:
            raise ControlError(f"{path}: no answer within {timeout:.0f} s") from None
        except OSError as error:
            if isinstance(error, ControlError):
                raise
            raise ControlError(f"{path}: {error.strerror or error}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise ControlError(f"{path}: the enclave process closed the connection without "
                           "an answer") from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ControlError(f"{path}: request {op!r} refused: {error}")
    return answer
