"""`NsmDevice`: the Nitro Secure Module as a virtio device (id 33, one queue).

The guest driver posts a device-readable chain with the CBOR request followed by a
device-writable chain for the response, kicks, and expects both back on the used ring in
that order: the request with length 0, the response with the exact number of bytes
written (docs/spec/nsm-vsock.md 2.2). A single chain holding both parts is served too. A response
that does not fit the guest's buffer is replaced by {"Error": "BufferTooSmall"}.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from devices.nsm.handler import REQUEST_MAX, NsmHandler, error_response
from devices.virtio.device import VirtioDevice
from devices.virtio.queue import DescriptorChain, VirtqueueError

if TYPE_CHECKING:
    from devices.virtio.queue import Virtqueue
    from board.memory import GuestRam

log = logging.getLogger("nitro_emu.nsm")

NSM_DEVICE_ID = 33
QUEUE_SIZE = 8                 # the driver needs >= 2 (two chains per request)
_TOO_LARGE = error_response("InputTooLarge")
_TOO_SMALL = error_response("BufferTooSmall")


class NsmDevice(VirtioDevice):
    """Virtio backend that feeds the request chains of its single queue to `handler`."""

    device_id = NSM_DEVICE_ID
    queue_max_sizes = (QUEUE_SIZE,)

    def __init__(self, handler: NsmHandler) -> None:
        self.handler = handler
        self._queue: Virtqueue | None = None
        self._interrupt: Callable[[], None] | None = None
        self.requests_served = 0

    def activate(self, memory: GuestRam, queues: list[Virtqueue],
                 interrupt: Callable[[], None]) -> None:
        if len(queues) != 1:
            raise VirtqueueError(f"NSM has one queue, got {len(queues)}")
        self._queue = queues[0]
        self._interrupt = interrupt
        # Linux's nsm driver registers its hwrng before DRIVER_OK, so the hwrng thread can
        # kick before the device is live; the transport drops that kick. Serve whatever
        # is already posted, or that request (and the driver's mutex) waits 120 s.
        if self._queue.has_available():
            self.notify(0)

    def reset(self) -> None:
        """Drop the queue; PCRs keep their values (they belong to the enclave's life)."""
        self._queue = None
        self._interrupt = None

    def notify(self, queue_index: int) -> None:
        queue = self._queue
        if queue is None or queue_index != 0:
            return
        served = False
        try:
            while True:
                pair = self._next_pair(queue)
                if pair is None:
                    break
                request, response_chain = pair
                written = self._serve(request, response_chain)
                if response_chain is not request:
                    queue.push(request, 0)
                queue.push(response_chain, written)
                served = True
        finally:   # answers already pushed get their interrupt even if a later chain is bad
            if served and queue.needs_interrupt() and self._interrupt is not None:
                self._interrupt()

    @staticmethod
    def _next_pair(queue: Virtqueue) -> tuple[DescriptorChain, DescriptorChain] | None:
        """The next (request chain, response chain); the same chain twice when one chain
        carries both; None until both are posted."""
        request = queue.pop()
        if request is None:
            return None
        if request.writable and not request.readable:
            raise VirtqueueError(f"NSM chain {request.head}: expected a request "
                                 "(device-readable), got only a device-writable buffer")
        if request.writable:                # one chain: request then response space
            return request, request
        response_chain = queue.pop()
        if response_chain is None:          # response buffer not posted yet: wait for it
            queue.unpop()
            return None
        if response_chain.readable:
            raise VirtqueueError(f"NSM chain {response_chain.head}: the response buffer has "
                                 "device-readable descriptors")
        return request, response_chain

    def _serve(self, request: DescriptorChain, response_chain: DescriptorChain) -> int:
        """Run one request; returns the bytes written into the response buffers."""
        if request.readable_length > REQUEST_MAX:
            response = _TOO_LARGE
        else:
            response = self.handler.handle(request.read_all())
        capacity = response_chain.writable_length
        if len(response) > capacity:
            log.debug("NSM response of %d bytes does not fit %d", len(response), capacity)
            response = _TOO_SMALL if len(_TOO_SMALL) <= capacity else b""
        self.requests_served += 1
        return response_chain.write(response)
