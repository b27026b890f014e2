"""The enclave's vsock device as the machine wires it: virtio-vsock (`device.VirtioVsock`)
with the parent instance at CID 3 (`muxer.VsockMuxer`) as its backend."""
from __future__ import annotations

from board.clock import VirtualClock
from board.interfaces import HostIo
from devices.vsock.config import VsockConfig
from devices.vsock.device import VirtioVsock
from devices.vsock.muxer import VsockMuxer
from devices.vsock.packet import check_guest_cid


class VsockDevice(VirtioVsock):
    """virtio-vsock for the guest at `guest_cid` whose only peer is the parent, configured
    by `config`; `muxer` holds the parent's connections, listeners and `published`
    addresses. ValueError for a CID no enclave may use or a config that cannot work,
    OSError for a listener that cannot bind."""

    def __init__(self, guest_cid: int, host: HostIo, clock: VirtualClock,
                 config: VsockConfig | None = None) -> None:
        guest_cid = check_guest_cid(guest_cid)     # where a guest CID enters the device
        self.muxer = VsockMuxer(guest_cid, host, clock, config or VsockConfig())
        super().__init__(guest_cid, self.muxer)
