"""The one `[HOST:]PORT` grammar of --forward tcp:, --publish and --gdb, and its printed
form: what is printed reads back the same, the three options agree on hosts and IPv6
brackets, and each keeps its own default host."""
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.vsock.config import (DEFAULT_PUBLISH_HOST, Publish, TcpTarget, parse_forward,
                                  parse_publish)
from devices.vsock.host_port import format_host_port, parse_host_port
from nitro_emu.debug.config import DEFAULT_GDB_HOST, parse_gdb_address
from nitro_emu.debug.gdbstub import GdbStub

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
HOSTS = st.one_of(st.ip_addresses().map(str), st.just("fe80::1%eth0"),
                  st.lists(_LABEL, min_size=1, max_size=4).map(".".join))
PORTS = st.integers(0, 65535)


@given(HOSTS, PORTS)
def test_printed_addresses_read_back_the_same(host, port):
    text = format_host_port(host, port)
    assert parse_host_port(text) == (host, port)
    assert parse_gdb_address(text) == (host, port)
    assert parse_publish(f"{text}:5000") == Publish(host, port, 5000)
    assert str(parse_publish(f"{text}:5000")) == f"{text}:5000"
    if port:
        assert parse_forward(f"7=tcp:{text}") == (7, TcpTarget(host, port))
        assert str(TcpTarget(host, port)) == f"tcp:{text}"


@given(PORTS)
def test_a_port_alone_takes_each_options_own_default(port):
    assert parse_gdb_address(str(port)) == (DEFAULT_GDB_HOST, port) == ("127.0.0.1", port)
    assert parse_publish(f"{port}:5000") == Publish(DEFAULT_PUBLISH_HOST, port, 5000)
    assert DEFAULT_PUBLISH_HOST == "127.0.0.1"
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_forward(f"7=tcp:{port}")


@pytest.mark.parametrize("parse", [
    lambda text: parse_forward(f"7=tcp:{text}"),
    lambda text: parse_publish(f"{text}:5000"),
    parse_gdb_address,
])
def test_the_three_options_refuse_the_same_addresses(parse):
    for text in ("::1:1234", "[::1]1234", "[::1", "[]:80", "host:", "host:x", "host:70000",
                 "h:1:2"):
        with pytest.raises(ValueError) as info:
            parse(text)
        assert text in str(info.value) and "\n" not in str(info.value)


def test_every_interface_only_where_listening_allows_it():
    assert parse_gdb_address(":1234") == ("", 1234)
    with pytest.raises(ValueError, match="no host"):
        parse_publish(":1234:5000")
    with pytest.raises(ValueError, match="no host"):
        parse_forward("7=tcp::1234")


@given(st.text(max_size=30))
def test_the_parser_only_raises_one_line_value_errors(text):
    for options in ({}, {"default_host": "127.0.0.1", "any_host": True}):
        try:
            parse_host_port(text, **options)
        except ValueError as error:
            assert "\n" not in str(error)


def test_gdb_stub_listens_on_an_ipv6_address_and_prints_it_in_brackets():
    lines = []
    stub = GdbStub(("::1", 0), False, lines.append)
    try:
        port = stub.address[1]
        assert lines == [f"nitro-emu: gdb stub listening on [::1]:{port}"]
        with socket.create_connection(("::1", port), timeout=5):
            pass
    finally:
        stub.close()
