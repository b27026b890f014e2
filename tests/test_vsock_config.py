"""--forward / --publish parsers and the vsock settings: good values pass, bad ones give a
one-line ValueError (or, from the run verb, one line on stderr)."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.vsock.config import (Publish, TcpTarget, UnixTarget, VsockConfig, VsockTarget,
                                  config_from_options, parse_forward, parse_publish)
from devices.vsock.packet import (HEADER_SIZE, Header, check_guest_cid, pack_header,
                                  parse_header)
from support.vsock_driver import Harness


@pytest.mark.parametrize("spec, expected", [
    ("8000=tcp:kms.us-east-1.amazonaws.com:443",
     (8000, TcpTarget("kms.us-east-1.amazonaws.com", 443))),
    ("5005=tcp:127.0.0.1:5005", (5005, TcpTarget("127.0.0.1", 5005))),
    ("1=tcp:[::1]:80", (1, TcpTarget("::1", 80))),
    ("9=unix:/run/x.sock", (9, UnixTarget("/run/x.sock"))),
    ("9=unix:rel:with:colons", (9, UnixTarget("rel:with:colons"))),
    ("77=vsock:1:1234", (77, VsockTarget(1, 1234))),
])
def test_parse_forward(spec, expected):
    assert parse_forward(spec) == expected


@pytest.mark.parametrize("spec, words", [
    ("8000", "expected PORT="), ("x=tcp:h:1", "not a number"),
    ("8000=tcp:h", "HOST:PORT"), ("8000=tcp:h:0", "outside 1..65535"),
    ("8000=tcp:h:99999", "outside"), ("8000=udp:h:1", "unknown target kind"),
    ("8000=unix:", "needs a socket path"), ("8000=tcp:::1:80", "brackets"),
    ("4294967295=tcp:h:1", "parent port"), ("8000=vsock:1", "vsock:CID:PORT"),
    ("8000=h:1", "unknown target kind"), ("8000=", "must start with"),
])
def test_parse_forward_errors(spec, words):
    with pytest.raises(ValueError, match=words) as info:
        parse_forward(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, expected", [
    ("5005:5000", Publish("127.0.0.1", 5005, 5000)),
    ("0.0.0.0:80:8080", Publish("0.0.0.0", 80, 8080)),
    ("[::1]:5005:5000", Publish("::1", 5005, 5000)),
    ("127.0.0.1:0:1", Publish("127.0.0.1", 0, 1)),
])
def test_parse_publish(spec, expected):
    assert parse_publish(spec) == expected


@pytest.mark.parametrize("spec", ["5005", "a:b", "1:2:3:4", ":1:2", "70000:1", "[::1]:1",
                                  "[::1:1:2", "1:-2", ""])
def test_parse_publish_errors(spec):
    with pytest.raises(ValueError) as info:
        parse_publish(spec)
    assert spec in str(info.value) or repr(spec) in str(info.value)


def test_config_from_options():
    config = config_from_options(["1=tcp:h:1", "2=unix:/s"], ["5005:5000"], "/tmp/v.sock")
    assert set(config.forwards) == {1, 2} and config.publishes[0].guest_port == 5000
    assert config.uds_path == "/tmp/v.sock" and config.heartbeat
    with pytest.raises(ValueError, match="already forwarded"):
        config_from_options(["1=tcp:h:1", "1=tcp:h:2"])


def test_argparse_helpers():
    import argparse

    from nitro_emu.cli.vsock_options import add_arguments, config_from_args
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--forward", "8000=tcp:h:443", "--forward", "9=unix:/s",
                              "--publish", "5005:5000", "--vsock-uds", "/tmp/v"])
    config = config_from_args(args)
    assert config.forwards[8000] == TcpTarget("h", 443) and config.uds_path == "/tmp/v"
    assert config_from_args(parser.parse_args([])).forwards == {}
    with pytest.raises(ValueError, match="unknown target kind"):
        config_from_args(parser.parse_args(["--forward", "1=ftp:x"]))


def test_duplicate_forward():
    config = VsockConfig()
    config.add_forward("1=tcp:h:1")
    with pytest.raises(ValueError, match="already forwarded"):
        config.add_forward("1=unix:/x")


@given(st.text(max_size=40))
def test_parsers_only_raise_value_error(text):
    for parser in (parse_forward, parse_publish):
        try:
            parser(text)
        except ValueError as error:
            assert "\n" not in str(error)


@given(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                 *[st.integers(0, 2**32 - 1)] * 3, st.integers(0, 0xFFFF),
                 st.integers(0, 0xFFFF), *[st.integers(0, 2**32 - 1)] * 3))
def test_header_round_trip(fields):
    raw = pack_header(*fields)
    assert len(raw) == HEADER_SIZE == 44
    assert parse_header(raw) == Header(*fields) and Header(*fields).pack() == raw


def test_forwarding_the_heartbeat_port_needs_the_heartbeat_off():
    with pytest.raises(ValueError, match="--no-heartbeat") as info:
        config_from_options(["9000=tcp:127.0.0.1:80"])
    assert "\n" not in str(info.value) and "9000" in str(info.value)
    config = config_from_options(["9000=tcp:127.0.0.1:80"], heartbeat=False)
    assert config.forwards[9000] == TcpTarget("127.0.0.1", 80) and not config.heartbeat
    with pytest.raises(ValueError, match="boot heartbeat"):
        VsockConfig(forwards={9000: UnixTarget("/x")}).validate()


def test_run_verb_refuses_forwarding_the_heartbeat_port():
    import subprocess
    import sys
    from pathlib import Path
    completed = subprocess.run(
        [sys.executable, "-m", "nitro_emu", "hello.eif", "--guest-cid", "8",
         "--forward", "9000=tcp:127.0.0.1:80"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert completed.returncode == 1
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr
    assert "--forward 9000=tcp:127.0.0.1:80" in completed.stderr
    assert "--no-heartbeat" in completed.stderr


@pytest.mark.parametrize("cid", [4, 16, 4294967294])
def test_check_guest_cid_accepts_enclave_cids(cid):
    assert check_guest_cid(cid) == cid


@pytest.mark.parametrize("cid", [0, 1, 2, 3, 4294967295, 1 << 40, -1, True, "16", None])
def test_check_guest_cid_refuses_the_rest(cid):
    with pytest.raises(ValueError, match="not a valid enclave CID") as info:
        check_guest_cid(cid)
    assert "\n" not in str(info.value)


def test_device_refuses_a_reserved_cid():
    with pytest.raises(ValueError, match="not a valid enclave CID"):
        Harness(VsockConfig(), guest_cid=3)
