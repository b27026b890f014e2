"""virtio-vsock with the parent instance (CID 3) built in: heartbeat, forwarding,
publishing, Firecracker hybrid vsock. Wire it as
`VirtioMmioTransport(VsockDevice(cid, reactor, clock, config), ram, pic.line(5))`."""
from devices.vsock.config import (Publish, TcpTarget, UnixTarget, VsockConfig, VsockTarget,
                                  add_arguments, config_from_args, config_from_options,
                                  parse_forward, parse_publish)
from devices.vsock.device import VsockDevice

__all__ = ["VsockDevice", "VsockConfig", "parse_forward", "parse_publish", "Publish",
           "TcpTarget", "UnixTarget", "VsockTarget", "config_from_options", "config_from_args",
           "add_arguments"]
