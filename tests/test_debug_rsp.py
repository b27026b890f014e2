"""The GDB remote protocol's framing: checksums, escapes, hex, and a decoder that turns
any byte stream, cut anywhere, into packets, acks, interrupts and refusals, never an
exception (the connection is untrusted host input)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nitro_emu.debug import rsp


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@given(st.binary(max_size=512))
def test_escape_round_trips_and_leaves_no_special_byte(data: bytes) -> None:
    escaped = rsp.escape(data)
    assert rsp.unescape(escaped) == data
    assert not any(byte in b"#$*" for byte in escaped)


@given(st.binary(max_size=300), st.lists(st.integers(0, 1000), max_size=8))
def test_framed_packets_come_back_whole_however_the_stream_is_cut(data: bytes, cuts: list[int]) -> None:
    payload = rsp.escape(data)
    stream = b"+" + rsp.frame(payload) + b"\x03" + rsp.frame(b"OK") + b"-"
    decoder = rsp.PacketDecoder()
    events = [event for piece in chunks(stream, cuts) for event in decoder.feed(piece)]
    assert events == [rsp.Ack(True), rsp.Packet(payload), rsp.Interrupt(), rsp.Packet(b"OK"),
                      rsp.Ack(False)]


@given(st.binary(max_size=2000), st.lists(st.integers(0, 3000), max_size=8))
def test_the_decoder_takes_anything_without_raising(data: bytes, cuts: list[int]) -> None:
    decoder = rsp.PacketDecoder()
    for piece in chunks(data, cuts):
        for event in decoder.feed(piece):
            assert isinstance(event, (rsp.Packet, rsp.BadPacket, rsp.Ack, rsp.Interrupt))
            if isinstance(event, rsp.Packet):
                assert len(event.payload) <= rsp.MAX_PACKET
    # whatever came before, a complete packet after a terminator is understood
    decoder.feed(b"#00")
    assert decoder.feed(rsp.frame(b"?")) == [rsp.Packet(b"?")]


def test_bad_checksums_and_overlong_packets_are_refused() -> None:
    decoder = rsp.PacketDecoder()
    assert decoder.feed(b"$?#00") == [rsp.BadPacket("bad checksum")]
    assert decoder.feed(b"$?#zz") == [rsp.BadPacket("bad checksum")]
    assert decoder.feed(b"$" + b"x" * (rsp.MAX_PACKET + 1) + b"#00") == [
        rsp.BadPacket(f"packet longer than {rsp.MAX_PACKET} bytes")]
    assert decoder.feed(b"junk$m0,1$?#3f") == [rsp.Packet(b"?")]  # a cut packet restarts


@pytest.mark.parametrize("bad", [b"", b"zz", b"123456789abcdef01", b"-1", b" 1"])
def test_hex_numbers_are_checked(bad: bytes) -> None:
    with pytest.raises(ValueError):
        rsp.hex_number(bad)


def test_hex_and_frames() -> None:
    assert rsp.hex_number(b"ffffffff81000000") == 0xFFFFFFFF81000000
    assert rsp.from_hex(rsp.to_hex(b"\x00\xff")) == b"\x00\xff"
    with pytest.raises(ValueError):
        rsp.from_hex(b"abc")
    with pytest.raises(ValueError):
        rsp.unescape(b"ab}")
    assert rsp.frame(b"OK") == b"$OK#9a"
    with pytest.raises(ValueError):
        rsp.frame(b"a*b")
