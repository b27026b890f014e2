"""What the parent side (CID 3) offers the guest, its limits, and the parsers for the
values of the command line (the options themselves are in nitro_emu/cli/vsock_options.py).

Nothing on the host is reachable from the guest unless it is forwarded here: guest
connections to an unforwarded parent port are refused with RST.

    --forward PORT=tcp:HOST:PORT | PORT=unix:PATH | PORT=vsock:CID:PORT
    --publish [ADDR:]HOSTPORT:GUESTPORT
    --vsock-uds PATH      (Firecracker's hybrid vsock)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

from devices.vsock.host_port import format_host_port, parse_host_port
from devices.vsock.packet import MAX_PORT

HEARTBEAT_PORT = 9000
HEARTBEAT_BYTE = 0xB7
KIB, MIB = 1 << 10, 1 << 20
DEFAULT_BUF_ALLOC = 256 * KIB
MAX_GUEST_PORT = MAX_PORT        # 0xFFFFFFFF is VMADDR_PORT_ANY
DEFAULT_PUBLISH_HOST = "127.0.0.1"   # a published guest port is for this host only


@dataclass(frozen=True)
class TcpTarget:
    """Forward to a TCP address on the host."""
    host: str
    port: int

    def __str__(self) -> str:
        return f"tcp:{format_host_port(self.host, self.port)}"


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
_HEARTBEAT_TAKEN = (f"parent port {HEARTBEAT_PORT} answers the guest's boot heartbeat, which "
                    "its init needs; turn the heartbeat off (--no-heartbeat) to forward it")


@dataclass(frozen=True)
class Publish:
    """A host TCP listener whose connections go to the guest's `guest_port`."""
    host_addr: str
    host_port: int
    guest_port: int

    def __str__(self) -> str:
        return f"{format_host_port(self.host_addr, self.host_port)}:{self.guest_port}"


@dataclass
class VsockConfig:
    """The parent side as configured by the command line (see module docstring).

    `heartbeat`: answer the guest's boot heartbeat on parent port 9000 (which then cannot
    be forwarded). `on_heartbeat(ok)` is called when the heartbeat was echoed (ok=True) or
    carried a byte other than 0xB7 (ok=False).

    Limits (what a guest or a host peer can make the emulator hold; README "Limits"):
    `max_connections` counts every host socket of the device (open, connecting, still
    delivering after the guest left, unfinished hybrid handshakes). Host-bound data: each
    connection may hold `buf_alloc` bytes the guest sent and the host has not read yet (the
    receive window the guest is told; beyond it the guest is reset). Windows are reserved
    from `max_host_bound_total`, keeping `min_buf_alloc` for every connection that may still
    open: once a full window no longer fits, new connections get `min_buf_alloc`. Guest-bound
    data: reading from a host socket pauses while its connection holds `max_guest_bound`
    bytes the guest has not taken, or all connections together `max_guest_bound_total`;
    it resumes as the guest takes them. Nothing is dropped at any of these limits."""

    forwards: dict[int, Target] = field(default_factory=dict)
    publishes: list[Publish] = field(default_factory=list)
    uds_path: str | None = None
    heartbeat: bool = True
    buf_alloc: int = DEFAULT_BUF_ALLOC
    min_buf_alloc: int = 16 * KIB
    max_host_bound_total: int = 32 * MIB
    max_guest_bound: int = 256 * KIB
    max_guest_bound_total: int = 32 * MIB
    connect_timeout_s: float = 10.0
    close_timeout_s: float = 8.0
    max_connections: int = 1024
    on_heartbeat: Callable[[bool], None] | None = None

    def add_forward(self, spec: str) -> None:
        """Parse and add one `--forward` value (ValueError on a bad or duplicate port, or on
        the heartbeat's port while the heartbeat is on)."""
        port, target = parse_forward(spec)
        if port in self.forwards:
            raise ValueError(f"--forward {spec}: parent port {port} is already forwarded "
                             f"to {self.forwards[port]}")
        if port == HEARTBEAT_PORT and self.heartbeat:
            raise ValueError(f"--forward {spec}: {_HEARTBEAT_TAKEN}")
        self.forwards[port] = target

    def validate(self) -> None:
        """ValueError (one line) if the settings cannot work together."""
        if self.heartbeat and HEARTBEAT_PORT in self.forwards:
            raise ValueError(f"forward of parent port {HEARTBEAT_PORT} to "
                             f"{self.forwards[HEARTBEAT_PORT]}: {_HEARTBEAT_TAKEN}")
        for name in ("buf_alloc", "min_buf_alloc", "max_host_bound_total", "max_guest_bound",
                     "max_guest_bound_total", "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"vsock {name} must be a positive number, not {value!r}")
        if not self.min_buf_alloc <= self.buf_alloc <= 0xFFFFFFFF:
            raise ValueError(f"vsock buf_alloc {self.buf_alloc} is outside min_buf_alloc "
                             f"({self.min_buf_alloc}) to 4294967295")
        if self.max_connections * self.min_buf_alloc > self.max_host_bound_total:
            raise ValueError(f"vsock max_host_bound_total {self.max_host_bound_total} cannot "
                             f"give {self.max_connections} connections {self.min_buf_alloc} "
                             "bytes each")
        if self.max_guest_bound > self.max_guest_bound_total:
            raise ValueError(f"vsock max_guest_bound {self.max_guest_bound} exceeds "
                             f"max_guest_bound_total {self.max_guest_bound_total}")

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
    config.validate()
    return config


def _int(text: str, what: str, low: int, high: int, spec: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{spec!r}: {what} {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{spec!r}: {what} {value} is outside {low}..{high}")
    return value


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
        try:
            host, tcp_port = parse_host_port(rest, min_port=1)
        except ValueError as error:
            raise ValueError(f"{spec!r}: {error}") from None
        return port, TcpTarget(host, tcp_port)
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
    address, sep, guest = spec.strip().rpartition(":")
    if not sep:
        raise ValueError(f"{spec!r}: expected [ADDR:]HOSTPORT:GUESTPORT")
    try:
        host, host_port = parse_host_port(address, default_host=DEFAULT_PUBLISH_HOST)
    except ValueError as error:
        raise ValueError(f"{spec!r}: {error}") from None
    return Publish(host, host_port, _int(guest, "guest port", 0, MAX_GUEST_PORT, spec))
