"""The NSM request handler: CBOR request bytes in, CBOR response bytes out.

Wire format is serde_cbor's externally tagged enums (docs/spec/nsm-vsock.md 2.3-2.6): a unit
request is a bare text string ("DescribeNSM"), a struct request a one-entry map
{"Name": {fields}}; errors are {"Error": "<code>"}. `handle` never raises for anything
the guest sends: every malformed input becomes an error response.
"""
from __future__ import annotations

import io
import logging
import os
import time
from typing import Any, Callable

import cbor2

from devices.nsm.document import DocumentSigner, build_document
from devices.nsm.pcr import PCR_COUNT, PcrBank, PcrError

log = logging.getLogger("nitro_emu.nsm")

REQUEST_MAX = 0x1000          # largest request the driver passes on
RESPONSE_MAX = 0x3000         # the upstream driver's response buffer
FIELD_LIMIT = 1024            # user_data / nonce / public_key, as AWS documents
RANDOM_SIZE = 256             # GetRandom bytes (QEMU, libnsm); must be >= 24 for the kernel
VERSION = (1, 0, 0)
MAX_DECODE_DEPTH = 16

ERROR_CODES = ("InvalidArgument", "InvalidIndex", "InvalidResponse", "ReadOnlyIndex",
               "InvalidOperation", "BufferTooSmall", "InputTooLarge", "InternalError")


class NsmRequestError(Exception):
    """A request the NSM answers with an error; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_response(code: str) -> bytes:
    """{"Error": code} as CBOR."""
    return cbor2.dumps({"Error": code})


def _decode_request(data: bytes) -> Any:
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, max_depth=MAX_DECODE_DEPTH).decode()
    except Exception as error:  # cbor2 raises several classes on hostile input
        raise NsmRequestError("InvalidOperation", f"request is not valid CBOR: {error}") \
            from None
    if stream.tell() != len(data):
        raise NsmRequestError("InvalidOperation",
                              f"{len(data) - stream.tell()} bytes after the CBOR request")
    return value


def _u16_field(body: Any, name: str, request: str) -> int:
    if not isinstance(body, dict) or name not in body:
        raise NsmRequestError("InvalidOperation", f"{request}: missing field {name!r}")
    value = body[name]
    if type(value) is not int or not 0 <= value <= 0xFFFF:
        raise NsmRequestError("InvalidOperation",
                              f"{request}: {name!r} must be an integer in 0..65535")
    return value


def _optional_bytes(body: dict, name: str, limit: int | None) -> bytes | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise NsmRequestError("InvalidOperation",
                              f"Attestation: {name!r} must be a byte string or null")
    if limit is not None and len(value) > limit:
        raise NsmRequestError("InputTooLarge",
                              f"Attestation: {name} is {len(value)} bytes, limit {limit}")
    return value


class NsmHandler:
    """Serves NSM requests against a PCR bank and a document signer.

    `field_limit` caps user_data/nonce/public_key (None: only the request size limits
    them); `wall_clock_ms` gives document timestamps (Unix milliseconds); `random`
    supplies GetRandom bytes.
    """

    def __init__(self, pcrs: PcrBank, signer: DocumentSigner, module_id: str, *,
                 field_limit: int | None = FIELD_LIMIT,
                 wall_clock_ms: Callable[[], int] | None = None,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.pcrs = pcrs
        self.signer = signer
        self.module_id = module_id
        self.field_limit = field_limit
        self.wall_clock_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.random = random
        self._dispatch: dict[str, Callable[[Any], Any]] = {
            "DescribePCR": self._describe_pcr,
            "ExtendPCR": self._extend_pcr,
            "LockPCR": self._lock_pcr,
            "LockPCRs": self._lock_pcrs,
            "DescribeNSM": self._describe_nsm,
            "Attestation": self._attestation,
            "GetRandom": self._get_random,
        }

    # -- entry points ------------------------------------------------------------------

    def handle(self, request: bytes) -> bytes:
        """Answer one request; always returns a CBOR response, never raises."""
        try:
            return cbor2.dumps(self.process(request))
        except NsmRequestError as error:
            log.debug("NSM request refused (%s): %s", error.code, error)
            return error_response(error.code)
        except Exception:   # a bug or a signing failure must not take the machine down
            log.exception("NSM internal error")
            return error_response("InternalError")

    def process(self, request: bytes) -> Any:
        """Decode and execute a request; returns the response object (before CBOR
        encoding) or raises NsmRequestError."""
        if len(request) > REQUEST_MAX:
            raise NsmRequestError("InputTooLarge",
                                  f"request of {len(request)} bytes exceeds {REQUEST_MAX}")
        value = _decode_request(request)
        if isinstance(value, str):
            name, body = value, None
        elif isinstance(value, dict) and len(value) == 1:
            ((name, body),) = value.items()
            if not isinstance(name, str):
                raise NsmRequestError("InvalidOperation", "request map key is not text")
        else:
            raise NsmRequestError("InvalidOperation",
                                  "request is neither a text string nor a one-entry map")
        operation = self._dispatch.get(name)
        if operation is None:
            raise NsmRequestError("InvalidOperation", f"unknown request {name[:40]!r}")
        try:
            return operation(body)
        except PcrError as error:
            raise NsmRequestError(error.code, str(error)) from None

    # -- requests ----------------------------------------------------------------------

    def _describe_pcr(self, body: Any) -> Any:
        index = _u16_field(body, "index", "DescribePCR")
        value = self.pcrs.value(index)
        return {"DescribePCR": {"lock": self.pcrs.is_locked(index), "data": value}}

    def _extend_pcr(self, body: Any) -> Any:
        index = _u16_field(body, "index", "ExtendPCR")
        data = body.get("data")
        if not isinstance(data, bytes):
            raise NsmRequestError("InvalidOperation", "ExtendPCR: 'data' must be a byte string")
        return {"ExtendPCR": {"data": self.pcrs.extend(index, data)}}

    def _lock_pcr(self, body: Any) -> Any:
        self.pcrs.lock(_u16_field(body, "index", "LockPCR"))
        return "LockPCR"

    def _lock_pcrs(self, body: Any) -> Any:
        self.pcrs.lock_range(_u16_field(body, "range", "LockPCRs"))
        return "LockPCRs"

    def _describe_nsm(self, body: Any) -> Any:
        if body is not None:
            raise NsmRequestError("InvalidOperation", "DescribeNSM takes no arguments")
        major, minor, patch = VERSION
        return {"DescribeNSM": {
            "version_major": major, "version_minor": minor, "version_patch": patch,
            "module_id": self.module_id, "max_pcrs": PCR_COUNT,
            "locked_pcrs": self.pcrs.locked_indices(), "digest": "SHA384"}}

    def _get_random(self, body: Any) -> Any:
        if body is not None:
            raise NsmRequestError("InvalidOperation", "GetRandom takes no arguments")
        return {"GetRandom": {"random": self.random(RANDOM_SIZE)}}

    def _attestation(self, body: Any) -> Any:
        if not isinstance(body, dict):
            raise NsmRequestError("InvalidOperation", "Attestation: body must be a map")
        user_data = _optional_bytes(body, "user_data", self.field_limit)
        nonce = _optional_bytes(body, "nonce", self.field_limit)
        public_key = _optional_bytes(body, "public_key", self.field_limit)
        now_ms = self.wall_clock_ms()
        document = build_document(self.signer.identity(now_ms), module_id=self.module_id,
                                  timestamp_ms=now_ms, pcrs=self.pcrs.locked_values(),
                                  public_key=public_key, user_data=user_data, nonce=nonce)
        return {"Attestation": {"document": document}}
