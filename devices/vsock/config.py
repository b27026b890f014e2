"""What the parent side (CID 3) offers the guest, and the parsers for the command line.

Nothing on the host is reachable from the guest unless it is forwarded here: guest
connections to an unforwarded parent port are refused with RST.

    --forward PORT=tcp:HOST:PORT | PORT=unix:PATH | PORT=vsock:CID:PORT
    --publish [ADDR:]HOSTPORT:GUESTPORT
    --vsock-uds PATH      (Firecracker's hybrid vsock)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

HEARTBEAT_PORT = 9000
HEARTBEAT_BYTE = 0xB7
DEFAULT_BUF_ALLOC = 256 * 1024
MAX_GUEST_PORT = 0xFFFFFFFE      # 0xFFFFFFFF is VMADDR_PORT_ANY


@dataclass(frozen=True)
class TcpTarget:
    """Forward to a TCP address on the host."""
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


@dataclass(frozen=True)
class UnixTarget:
    """Forward to a Unix stream (or, for SEQPACKET guests, seqpacket) socket."""
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class VsockTarget:
    """Forward to the host kernel's AF_VSOCK (CID, port)."""
    cid: int
    port: int

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


Target = Union[TcpTarget, UnixTarget, VsockTarget]


@dataclass(frozen=True)
class Publish:
    """A host TCP listener whose connections go to the guest's `guest_port`."""
    host_addr: str
    host_port: int
    guest_port: int


@dataclass
class VsockConfig:
    """The parent side as configured by the command line (see module docstring).

    `on_heartbeat(ok)` is called when the guest's boot heartbeat was echoed (ok=True) or
    carried a byte other than 0xB7 (ok=False)."""

    forwards: dict[int, Target] = field(default_factory=dict)
    publishes: list[Publish] = field(default_factory=list)
    uds_path: str | None = None
    heartbeat: bool = True
    buf_alloc: int = DEFAULT_BUF_ALLOC
    connect_timeout_s: float = 10.0
    close_timeout_s: float = 8.0
    max_connections: int = 1024
    on_heartbeat: Callable[[bool], None] | None = None

    def add_forward(self, spec: str) -> None:
        """Parse and add one `--forward` value (ValueError on a bad or duplicate port)."""
        port, target = parse_forward(spec)
        if port in self.forwards:
            raise ValueError(f"--forward {spec}: parent port {port} is already forwarded "
                             f"to {self.forwards[port]}")
        self.forwards[port] = target

    def add_publish(self, spec: str) -> None:
        """Parse and add one `--publish` value."""
        self.publishes.append(parse_publish(spec))


def config_from_options(forwards: list[str] = (), publishes: list[str] = (),
                        uds_path: str | None = None, heartbeat: bool = True,
                        on_heartbeat: Callable[[bool], None] | None = None) -> VsockConfig:
    """Build the config from the command line's repeated `--forward` / `--publish` values
    and `--vsock-uds`; ValueError (one line) on the first bad value."""
    config = VsockConfig(uds_path=uds_path or None, heartbeat=heartbeat,
                         on_heartbeat=on_heartbeat)
    for spec in forwards:
        config.add_forward(spec)
    for spec in publishes:
        config.add_publish(spec)
    if uds_path is not None and (not uds_path or "\0" in uds_path):
        raise ValueError(f"--vsock-uds {uds_path!r}: not a usable socket path")
    return config


def add_arguments(parser) -> None:
    """Add --forward, --publish and --vsock-uds to an argparse parser (repeatable)."""
    parser.add_argument("--forward", action="append", default=[],
                        metavar="PORT=tcp:HOST:PORT|unix:PATH|vsock:CID:PORT",
                        help="guest connections to parent port PORT (CID 3) go to this host "
                             "address; unforwarded ports are refused")
    parser.add_argument("--publish", action="append", default=[],
                        metavar="[ADDR:]HOSTPORT:GUESTPORT",
                        help="listen on host TCP ADDR:HOSTPORT (default 127.0.0.1) and "
                             "connect each client to the guest's vsock GUESTPORT")
    parser.add_argument("--vsock-uds", metavar="PATH",
                        help="Firecracker hybrid vsock: host clients connect to PATH and "
                             "write 'CONNECT <port>'; guest connections to parent port P "
                             "go to the Unix socket PATH_P")


def config_from_args(args, on_heartbeat: Callable[[bool], None] | None = None,
                     heartbeat: bool = True) -> VsockConfig:
    """The VsockConfig for arguments added by `add_arguments` (ValueError if bad)."""
    return config_from_options(args.forward, args.publish, args.vsock_uds, heartbeat,
                               on_heartbeat)


def _int(text: str, what: str, low: int, high: int, spec: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{spec!r}: {what} {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{spec!r}: {what} {value} is outside {low}..{high}")
    return value


def _split_host_port(text: str, spec: str) -> tuple[str, str]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port text)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"{spec!r}: expected [IPV6]:PORT, got {text!r}")
        return text[1:end], text[end + 2:]
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{spec!r}: expected HOST:PORT, got {text!r}")
    if ":" in host:
        raise ValueError(f"{spec!r}: write IPv6 addresses in brackets, like [::1]:PORT")
    return host, port


def parse_forward(spec: str) -> tuple[int, Target]:
    """`PORT=tcp:HOST:PORT`, `PORT=unix:PATH` or `PORT=vsock:CID:PORT` -> (parent port the
    guest connects to, host target). ValueError with a one-line message otherwise."""
    port_text, sep, target = spec.partition("=")
    if not sep:
        raise ValueError(f"{spec!r}: expected PORT=tcp:HOST:PORT, PORT=unix:PATH or "
                         "PORT=vsock:CID:PORT")
    port = _int(port_text.strip(), "parent port", 0, MAX_GUEST_PORT, spec)
    kind, sep, rest = target.partition(":")
    if not sep:
        raise ValueError(f"{spec!r}: target {target!r} must start with tcp:, unix: or vsock:")
    if kind == "tcp":
        host, tport = _split_host_port(rest, spec)
        return port, TcpTarget(host, _int(tport, "TCP port", 1, 65535, spec))
    if kind == "unix":
        if not rest:
            raise ValueError(f"{spec!r}: unix: needs a socket path")
        if "\0" in rest:
            raise ValueError(f"{spec!r}: socket path contains a NUL byte")
        return port, UnixTarget(rest)
    if kind == "vsock":
        cid_text, sep, vport = rest.partition(":")
        if not sep:
            raise ValueError(f"{spec!r}: expected vsock:CID:PORT")
        return port, VsockTarget(_int(cid_text, "CID", 0, 0xFFFFFFFF, spec),
                                 _int(vport, "vsock port", 0, MAX_GUEST_PORT, spec))
    raise ValueError(f"{spec!r}: unknown target kind {kind!r} (use tcp, unix or vsock)")


def parse_publish(spec: str) -> Publish:
    """`[ADDR:]HOSTPORT:GUESTPORT` -> Publish. ADDR defaults to 127.0.0.1 (IPv6 in
    brackets); HOSTPORT 0 lets the host pick a free port."""
    text = spec.strip()
    addr = "127.0.0.1"
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"{spec!r}: expected [IPV6]:HOSTPORT:GUESTPORT")
        addr, text = text[1:end], text[end + 2:]
        parts = text.split(":")
        if len(parts) != 2:
            raise ValueError(f"{spec!r}: expected [IPV6]:HOSTPORT:GUESTPORT")
    else:
        parts = text.split(":")
        if len(parts) == 3:
            addr = parts.pop(0)
            if not addr:
                raise ValueError(f"{spec!r}: empty host address")
        elif len(parts) != 2:
            raise ValueError(f"{spec!r}: expected [ADDR:]HOSTPORT:GUESTPORT")
    host_port = _int(parts[0], "host port", 0, 65535, spec)
    guest_port = _int(parts[1], "guest port", 0, MAX_GUEST_PORT, spec)
    return Publish(addr, host_port, guest_port)
