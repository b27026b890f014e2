"""The NSM request handler: every request and error of docs/spec/nsm-vsock.md 2.4-2.11, the exact
wire bytes, and hostile input (hypothesis) always answered with a CBOR error."""
from __future__ import annotations

import hashlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.nsm.handler import ERROR_CODES, REQUEST_MAX, NsmHandler
from devices.nsm.pcr import PcrBank
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.verify import verify_document
from eif.pcr import pcr_from_digest

CA = LocalCA.create()


def make_handler(**kwargs) -> NsmHandler:
    bank = PcrBank()
    bank.set_initial(0, pcr_from_digest(b"image"))
    bank.lock_range(16)
    return NsmHandler(bank, CA.signer("i-0123456789abcdef0-enc0123456789abcdef"),
                      "i-0123456789abcdef0-enc0123456789abcdef", **kwargs)


def ask(handler: NsmHandler, request) -> object:
    return cbor2.loads(handler.handle(cbor2.dumps(request)))


def test_worked_request_bytes_from_the_spec():
    h = make_handler()
    # DescribePCR{index:16}
    raw = bytes.fromhex("a16b4465736372696265504352a165696e64657810")
    assert cbor2.loads(h.handle(raw)) == {"DescribePCR": {"lock": False, "data": bytes(48)}}
    # ExtendPCR{index:16,data:010203}
    raw = bytes.fromhex("a169457874656e64504352a265696e646578106464617461430102 03")
    assert cbor2.loads(h.handle(raw)) == {
        "ExtendPCR": {"data": hashlib.sha384(bytes(48) + b"\x01\x02\x03").digest()}}
    # LockPCRs{range:32} -> "LockPCRs"
    raw = bytes.fromhex("a1684c6f636b50435273a16572616e67651820")
    assert h.handle(raw) == bytes.fromhex("684c6f636b50435273")
    # LockPCR response is a bare text string; errors a one-entry map
    assert h.handle(cbor2.dumps({"LockPCR": {"index": 3}})) == bytes.fromhex(
        "a1654572726f726d526561644f6e6c79496e646578")        # Error(ReadOnlyIndex)


def test_describe_pcr_field_order_and_types():
    h = make_handler()
    response = h.handle(cbor2.dumps({"DescribePCR": {"index": 0}}))
    # Rust field order: lock then data
    assert response.startswith(bytes.fromhex("a16b4465736372696265504352a2646c6f636bf5"))
    assert ask(h, {"DescribePCR": {"index": 0}})["DescribePCR"]["data"] == pcr_from_digest(b"image")


def test_extend_then_lock_then_extend_fails():
    h = make_handler()
    first = ask(h, {"ExtendPCR": {"index": 20, "data": b"abc"}})["ExtendPCR"]["data"]
    assert ask(h, {"DescribePCR": {"index": 20}}) == {"DescribePCR": {"lock": False,
                                                                      "data": first}}
    assert ask(h, {"LockPCR": {"index": 20}}) == "LockPCR"
    assert ask(h, {"ExtendPCR": {"index": 20, "data": b"x"}}) == {"Error": "ReadOnlyIndex"}
    assert ask(h, {"LockPCR": {"index": 20}}) == {"Error": "ReadOnlyIndex"}
    assert ask(h, {"DescribePCR": {"index": 20}})["DescribePCR"]["lock"] is True


@pytest.mark.parametrize("request_, code", [
    ({"DescribePCR": {"index": 32}}, "InvalidIndex"),
    ({"ExtendPCR": {"index": 400, "data": b""}}, "InvalidIndex"),
    ({"LockPCR": {"index": 65535}}, "InvalidIndex"),
    ({"LockPCRs": {"range": 33}}, "InvalidIndex"),
    ({"ExtendPCR": {"index": 0, "data": b"x"}}, "ReadOnlyIndex"),
    ({"LockPCR": {"index": 15}}, "ReadOnlyIndex"),
    ({"DescribePCR": {"index": -1}}, "InvalidOperation"),
    ({"DescribePCR": {"index": 70000}}, "InvalidOperation"),
    ({"DescribePCR": {"index": True}}, "InvalidOperation"),
    ({"DescribePCR": {}}, "InvalidOperation"),
    ({"DescribePCR": None}, "InvalidOperation"),
    ("DescribePCR", "InvalidOperation"),
    ({"ExtendPCR": {"index": 16, "data": "text"}}, "InvalidOperation"),
    ({"ExtendPCR": {"index": 16}}, "InvalidOperation"),
    ({"Attestation": None}, "InvalidOperation"),
    ({"Attestation": {"nonce": 5}}, "InvalidOperation"),
    ({"Attestation": {"user_data": b"x" * 1025}}, "InputTooLarge"),
    ({"Attestation": {"nonce": b"x" * 1025}}, "InputTooLarge"),
    ({"Attestation": {"public_key": b"x" * 1025}}, "InputTooLarge"),
    ({"DescribeNSM": {"x": 1}}, "InvalidOperation"),
    ({"GetRandom": 1}, "InvalidOperation"),
    ("Nonsense", "InvalidOperation"),
    ({"A": 1, "B": 2}, "InvalidOperation"),
    ({1: 2}, "InvalidOperation"),
    ([1, 2], "InvalidOperation"),
    (5, "InvalidOperation"),
])
def test_error_responses(request_, code):
    assert ask(make_handler(), request_) == {"Error": code}


def test_lock_pcrs_is_idempotent_and_range_zero_is_fine():
    h = make_handler()
    assert ask(h, {"LockPCRs": {"range": 0}}) == "LockPCRs"
    assert ask(h, {"LockPCRs": {"range": 20}}) == "LockPCRs"
    assert ask(h, {"LockPCRs": {"range": 20}}) == "LockPCRs"
    assert ask(h, "DescribeNSM")["DescribeNSM"]["locked_pcrs"] == list(range(20))
    assert ask(h, {"LockPCRs": {"range": 32}}) == "LockPCRs"
    assert ask(h, "DescribeNSM")["DescribeNSM"]["locked_pcrs"] == list(range(32))


def test_describe_nsm():
    h = make_handler()
    raw = h.handle(bytes.fromhex("6b44657363726962654e534d"))
    body = cbor2.loads(raw)["DescribeNSM"]
    assert list(body) == ["version_major", "version_minor", "version_patch", "module_id",
                          "max_pcrs", "locked_pcrs", "digest"]
    assert body == {"version_major": 1, "version_minor": 0, "version_patch": 0,
                    "module_id": "i-0123456789abcdef0-enc0123456789abcdef", "max_pcrs": 32,
                    "locked_pcrs": list(range(16)), "digest": "SHA384"}


def test_get_random_has_the_exact_prefix_the_kernel_parses():
    h = make_handler()
    raw = h.handle(bytes.fromhex("6947657452616e646f6d"))
    prefix = bytes.fromhex("a16947657452616e646f6da16672616e646f6d590100")
    assert raw.startswith(prefix) and len(raw) == len(prefix) + 256
    assert raw != h.handle(bytes.fromhex("6947657452616e646f6d"))      # fresh bytes


def test_attestation_echoes_fields_and_verifies():
    h = make_handler()
    response = ask(h, {"Attestation": {"user_data": b"u" * 1024, "nonce": b"n" * 1024,
                                       "public_key": b"k" * 1024}})
    document = response["Attestation"]["document"]
    assert document[:1] == b"\x84"                    # untagged COSE_Sign1
    assert len(h.handle(cbor2.dumps(response))) > 0
    result = verify_document(document, [CA.certificate], nonce=b"n" * 1024,
                             user_data=b"u" * 1024, public_key=b"k" * 1024,
                             expected_pcrs={0: pcr_from_digest(b"image")})
    assert len(cbor2.dumps(response)) <= 0x3000
    assert sorted(result.payload["pcrs"]) == list(range(16))


def test_attestation_absent_fields_are_null_and_empty_stays_empty():
    h = make_handler()
    document = ask(h, {"Attestation": {"user_data": b"", "nonce": None}})["Attestation"]["document"]
    payload = cbor2.loads(cbor2.loads(document)[2])
    assert list(payload) == ["module_id", "digest", "timestamp", "pcrs", "certificate",
                             "cabundle", "public_key", "user_data", "nonce"]
    assert payload["user_data"] == b"" and payload["nonce"] is None
    assert payload["public_key"] is None


def test_attestation_lists_pcrs_locked_later():
    h = make_handler()
    ask(h, {"ExtendPCR": {"index": 17, "data": b"app"}})
    ask(h, {"LockPCR": {"index": 17}})
    document = ask(h, {"Attestation": {}})["Attestation"]["document"]
    pcrs = cbor2.loads(cbor2.loads(document)[2])["pcrs"]
    assert sorted(pcrs) == list(range(16)) + [17]


def test_field_limit_can_be_lifted():
    h = make_handler(field_limit=None)
    response = ask(h, {"Attestation": {"user_data": b"u" * 3000}})
    assert "Attestation" in response


def test_timestamp_is_wall_clock_milliseconds():
    h = make_handler(wall_clock_ms=lambda: 1_770_000_000_123)
    document = ask(h, {"Attestation": {}})["Attestation"]["document"]
    assert cbor2.loads(cbor2.loads(document)[2])["timestamp"] == 1_770_000_000_123


def test_oversized_and_trailing_requests():
    h = make_handler()
    big = cbor2.dumps({"ExtendPCR": {"index": 16, "data": b"x" * REQUEST_MAX}})
    assert cbor2.loads(h.handle(big)) == {"Error": "InputTooLarge"}
    ok = cbor2.dumps("DescribeNSM")
    assert cbor2.loads(h.handle(ok + b"\x00")) == {"Error": "InvalidOperation"}
    assert cbor2.loads(h.handle(b"")) == {"Error": "InvalidOperation"}
    deep = b"\x81" * 4000 + b"\x00"
    assert cbor2.loads(h.handle(deep)) == {"Error": "InvalidOperation"}


def test_signing_failure_is_an_internal_error():
    class BrokenSigner:
        def identity(self, now_ms):
            raise RuntimeError("HSM on fire")
    h = NsmHandler(PcrBank(), BrokenSigner(), "m")
    assert ask(h, {"Attestation": {}}) == {"Error": "InternalError"}


def _is_valid_response(raw: bytes) -> bool:
    value = cbor2.loads(raw)
    if isinstance(value, str):
        return value in ("LockPCR", "LockPCRs")
    assert isinstance(value, dict) and len(value) == 1
    ((name, body),) = value.items()
    if name == "Error":
        return body in ERROR_CODES
    return name in ("DescribePCR", "ExtendPCR", "DescribeNSM", "Attestation", "GetRandom")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_raw_bytes_never_crash(raw):
    assert _is_valid_response(make_handler().handle(raw))


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.binary(max_size=64) | st.text(max_size=16) | st.floats(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12) | st.integers(0, 40), inner, max_size=4),
    max_leaves=12)
names = st.sampled_from(["DescribePCR", "ExtendPCR", "LockPCR", "LockPCRs", "DescribeNSM",
                         "Attestation", "GetRandom", "Error", ""])
fields = st.dictionaries(st.sampled_from(["index", "range", "data", "user_data", "nonce",
                                          "public_key", "x"]), cbor_values, max_size=4)
requests = cbor_values | names | st.builds(lambda n, b: {n: b}, names, fields | cbor_values)


@settings(max_examples=400, deadline=None)
@given(requests)
def test_structured_cbor_never_crashes(request_):
    assert _is_valid_response(make_handler().handle(cbor2.dumps(request_)))
