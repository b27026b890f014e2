"""The Nitro Secure Module: PCR bank, request handler, attestation documents and the
virtio device (id 33) that carries requests from the guest's `nsm` driver."""
from devices.nsm.device import NSM_DEVICE_ID, NsmDevice
from devices.nsm.document import DocumentSigner, SigningIdentity, build_document
from devices.nsm.handler import NsmHandler
from devices.nsm.pcr import PCR_COUNT, PCR_SIZE, PcrBank, PcrError

__all__ = ["NSM_DEVICE_ID", "NsmDevice", "NsmHandler", "DocumentSigner", "SigningIdentity",
           "build_document", "PcrBank", "PcrError", "PCR_COUNT", "PCR_SIZE"]
