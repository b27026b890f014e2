"""PCR semantics (docs/spec/nsm-vsock.md 2.7) and the boot PCRs the factory sets up (docs/spec/eif.md 8-9)."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.nsm.pcr import PCR_COUNT, PcrBank, PcrError
from nitro_emu.attestation.errors import AttestationError
from nitro_emu.attestation.factory import boot_pcrs, make_module_id
from eif.pcr import pcr_from_digest

EMPTY_PCR2 = ("21b9efbc184807662e966d34f390821309eeac6802309798826296bf3e8bec7c"
              "10edb30948c90ba67310f7b964fc500a")


def test_measure_matches_the_eif_spec_known_answer():
    # eif.md 8.2: extend(empty stream) = SHA384(zeros48 || SHA384(b""))
    assert pcr_from_digest(hashlib.sha384(b"").digest()).hex() == EMPTY_PCR2


@given(st.lists(st.binary(max_size=100), max_size=5))
def test_extend_is_a_hash_chain(chunks):
    bank = PcrBank()
    expected = bytes(48)
    for chunk in chunks:
        expected = hashlib.sha384(expected + chunk).digest()
        assert bank.extend(20, chunk) == expected
    assert bank.value(20) == expected


def test_lock_semantics():
    bank = PcrBank()
    bank.lock(5)
    with pytest.raises(PcrError) as info:
        bank.extend(5, b"x")
    assert info.value.code == "ReadOnlyIndex"
    with pytest.raises(PcrError):
        bank.lock(5)
    bank.lock_range(10)
    bank.lock_range(10)
    assert bank.locked_indices() == list(range(10))
    with pytest.raises(PcrError) as info:
        bank.lock_range(PCR_COUNT + 1)
    assert info.value.code == "InvalidIndex"
    for bad in (-1, PCR_COUNT):
        with pytest.raises(PcrError) as info:
            bank.value(bad)
        assert info.value.code == "InvalidIndex"


def test_boot_pcrs_as_on_nitro():
    role, instance = "arn:aws:iam::123456789012:role/parent", "i-0123456789abcdef0"
    bank = boot_pcrs(pcr0=b"\x01" * 48, pcr1=b"\x02" * 48, pcr2=b"\x03" * 48,
                     pcr8=b"\x08" * 48, parent_role=role, parent_id=instance,
                     debug_mode=False)
    assert [bank.value(i) for i in (0, 1, 2, 8)] == [b"\x01" * 48, b"\x02" * 48,
                                                       b"\x03" * 48, b"\x08" * 48]
    assert bank.value(3) == hashlib.sha384(bytes(48) + role.encode()).digest()
    assert bank.value(4) == hashlib.sha384(bytes(48) + instance.encode()).digest()
    assert bank.locked_indices() == list(range(16))
    assert all(bank.value(i) == bytes(48) for i in (5, 6, 7, 9, 15, 16, 31))


def test_debug_mode_zeroes_pcr0_to_2_only():
    bank = boot_pcrs(pcr0=b"\x01" * 48, pcr1=b"\x02" * 48, pcr2=b"\x03" * 48, pcr8=None,
                     parent_role=None, parent_id="i-0123456789abcdef0", debug_mode=True)
    assert [bank.value(i) for i in (0, 1, 2, 3, 8)] == [bytes(48)] * 5
    assert bank.value(4) != bytes(48)


def test_bad_boot_measurement_is_a_clear_error():
    with pytest.raises(AttestationError, match="PCR1 must be 48 bytes"):
        boot_pcrs(pcr0=bytes(48), pcr1=b"short", pcr2=bytes(48), pcr8=None,
                  parent_role=None, parent_id=None, debug_mode=False)


def test_module_id_shape():
    assert make_module_id("i-0123456789abcdef0").startswith("i-0123456789abcdef0-enc")
    other = make_module_id("my-parent")
    assert other.startswith("i-") and len(other) == len("i-0123456789abcdef0-enc") + 16
