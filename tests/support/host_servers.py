"""Real host-side peers for device-level vsock tests: a threaded server on a real socket
and the handlers the tests give it, and the config forwarding a parent port to it."""
from __future__ import annotations

import hashlib
import socket
import threading

from devices.vsock import VsockConfig


class Server:
    """A threaded server on a real socket; `handler(conn)` runs per connection and what it
    returns (or the OSError it raised) is appended to `results`."""

    def __init__(self, family=socket.AF_INET, address=("127.0.0.1", 0), handler=None,
                 kind=socket.SOCK_STREAM):
        self.sock = socket.socket(family, kind)
        if family == socket.AF_INET:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(128)
        self.address = self.sock.getsockname()
        self.handler = handler or echo
        self.results = []
        self.threads = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, conn):
        with conn:
            try:
                self.results.append(self.handler(conn))
            except OSError as error:
                self.results.append(error)

    def join(self, timeout=20):
        for t in list(self.threads):
            t.join(timeout)

    def close(self):
        self.sock.close()


def echo(conn) -> int:
    total = 0
    while data := conn.recv(65536):
        conn.sendall(data)
        total += len(data)
    return total


def sink(conn) -> tuple[int, str]:
    digest, total = hashlib.sha256(), 0
    while data := conn.recv(65536):
        digest.update(data)
        total += len(data)
    return total, digest.hexdigest()


def tcp_forward(server: Server, port: int = 7000, **config_options) -> VsockConfig:
    """A VsockConfig (with `config_options`) forwarding parent port `port` to `server`."""
    host, tport = server.address[:2]
    config = VsockConfig(**config_options)
    config.add_forward(f"{port}=tcp:{host}:{tport}")
    return config
