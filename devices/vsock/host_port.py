"""Host addresses as the command line writes them, `HOST:PORT`, `[IPv6]:PORT` and, where a
default host is given, `PORT` alone: the one grammar of --forward tcp:, --publish and
--gdb, and the one printed form, which reads back the same.

An IPv6 address always goes in brackets: `::1:80` could be `::1` port 80 or `::1:80` with
no port, so it is refused.
"""
from __future__ import annotations

import socket

MAX_TCP_PORT = 65535


def parse_host_port(text: str, *, default_host: str | None = None, any_host: bool = False,
                    min_port: int = 0) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` as (host, port); `PORT` alone means `default_host`
    (refused when it is None); `:PORT` means every interface, host "" (only with
    `any_host`). The port lies in `min_port`..65535. ValueError with a one-line reason
    (the caller says which option it was)."""
    form = "[HOST:]PORT" if default_host is not None else "HOST:PORT"
    if text.startswith("["):
        end = text.find("]")
        if end < 2 or text[end + 1:end + 2] != ":":
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
        host, port = text[1:end], text[end + 2:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError("write IPv6 addresses in brackets, like [::1]:PORT")
        if not host and not any_host:
            raise ValueError(f"expected {form}, got {text!r} (no host before the colon)")
    elif default_host is not None:
        host, port = default_host, text
    else:
        raise ValueError(f"expected {form}, got {text!r}")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"port {port!r} is not a number")
    number = int(port)
    if not min_port <= number <= MAX_TCP_PORT:
        raise ValueError(f"port {number} is outside {min_port}..{MAX_TCP_PORT}")
    return host, number


def format_host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets (what `parse_host_port` reads back)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_family(host: str) -> socket.AddressFamily:
    """The family of a TCP listener on `host` (an address or name; "" for every IPv4
    interface): IPv6 for an address with colons, else IPv4."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET
