"""Test support that is not part of the product: finding the guest images, the import
graph, the Python vsock guest driver. Imported by tests as `support.*`."""
