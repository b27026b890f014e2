"""virtio over MMIO (version 2): the transport shared by every virtio device, split
virtqueues, and the interface a device backend implements."""
