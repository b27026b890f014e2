"""virtio-vsock with the parent instance (CID 3) built in: heartbeat, forwarding,
publishing, Firecracker hybrid vsock. Wire it as
`VirtioMmioTransport(VsockDevice(cid, reactor, clock, config), ram, pic.line(5))`.

Layout (as Firecracker's devices/virtio/vsock): `device` (virtio only) talks to a
`backend.VsockBackend`; `muxer` (the parent: connection table, listeners, RSTs) is that
backend; `connection` is one connection's state machine; `handshakes` the heartbeat and
hybrid-vsock conversations; `limits` the byte budget; `config` the settings and parsers;
`host_port` the `[HOST:]PORT` grammar; `unix_address` Unix socket paths of any length;
`packet` the header and addressing; `parent.VsockDevice` puts device and muxer together."""
from devices.vsock.config import (Publish, TcpTarget, UnixTarget, VsockConfig, VsockTarget,
                                  config_from_options, parse_forward, parse_publish)
from devices.vsock.packet import MAX_GUEST_CID, MIN_GUEST_CID, check_guest_cid
from devices.vsock.parent import VsockDevice

__all__ = ["VsockDevice", "VsockConfig", "parse_forward", "parse_publish", "Publish",
           "TcpTarget", "UnixTarget", "VsockTarget", "config_from_options",
           "check_guest_cid", "MIN_GUEST_CID", "MAX_GUEST_CID"]
