"""The pieces of the enclave lifecycle that need no guest: nitro-cli's value parsing and
--config files, CID/name/ID choice, the error codes, the state directory's locks and
records (with real processes), the control socket on a real reactor, console logs and
long socket paths."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from board.reactor import HostReactor
from devices.vsock.unix_address import address as unix_address
from eif.jsonfmt import Fields, dumps_pretty
from nitro_emu.enclaves import allocate
from nitro_emu.enclaves.console_log import TRUNCATED, ConsoleFile, follow
from nitro_emu.enclaves.control import ControlError, ControlServer, request
from nitro_emu.enclaves.errors import CODES, NitroCliError, parse_code
from nitro_emu.enclaves.json_output import describe_info, run_info, terminate_info
from nitro_emu.enclaves.spec import (RunSpec, parse_cid, parse_memory, parse_unsigned,
                                     spec_from_config)
from nitro_emu.enclaves.store import (EXITED, KEEP_EXITED, RUNNING, EnclaveRecord,
                                      EnclaveStore)


def error_code(call, *args):
    with pytest.raises(NitroCliError) as caught:
        call(*args)
    return caught.value.code


# -- values as nitro-cli parses them ----------------------------------------------------------

@pytest.mark.parametrize("text, mib", [("256", 256), ("2G", 2048), ("2g", 2048),
                                       ("512M", 512), ("1T", 1 << 20), ("0", 0)])
def test_memory_units(text, mib):
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "M", "12X", "256MiB", "-5", " 5", "1.5G"])
def test_memory_refused_with_e03(text):
    assert error_code(parse_memory, text) == 3


@given(st.text(max_size=30))
def test_memory_parser_never_crashes(text):
    try:
        assert parse_memory(text) >= 0
    except NitroCliError as error:
        assert error.code == 3


@pytest.mark.parametrize("text, expected", [("16", 16), ("0", None), ("4294967294", 4294967294),
                                            ("+20", 20)])
def test_cid_values(text, expected):
    assert parse_cid(text) == expected


@pytest.mark.parametrize("text, words", [
    ("1", "well-known"), ("2", "well-known"), ("3", "parent VM"),
    ("4294967295", "well-known"), ("4294967296", "u32 max"), ("abc", "not a valid integer"),
    ("-5", "not a valid integer"), ("0x10", "not a valid integer"), ("1_6", "not a valid")])
def test_cid_refused_with_e03(text, words):
    with pytest.raises(NitroCliError) as caught:
        parse_cid(text)
    assert caught.value.code == 3 and words in str(caught.value)


@given(st.text(max_size=25))
def test_unsigned_parser_matches_rust(text):
    digits = text[1:] if text.startswith("+") else text
    try:
        value = parse_unsigned(text, "x")
    except NitroCliError as error:
        assert error.code == 3
        assert not (digits.isascii() and digits.isdigit() and int(digits) < 1 << 64)
    else:
        assert value == int(digits)


def test_spec_rules():
    base = dict(eif_path="/x/app.eif", memory_mib=256)
    assert error_code(lambda: RunSpec(**base)) == 1
    assert error_code(lambda: RunSpec(**base, cpu_count=2, cpu_ids=[1])) == 2
    assert error_code(lambda: RunSpec(**base, cpu_ids=[1, 3, 1])) == 20
    assert error_code(lambda: RunSpec(**base, cpu_count=0)) == 3
    assert error_code(lambda: RunSpec(**base, cpu_count=1, enclave_cid=3)) == 3
    spec = RunSpec(**base, cpu_count=2, attach_console=True, enclave_cid=0)
    assert spec.debug_mode and spec.enclave_cid is None and spec.default_name == "app"
    assert RunSpec(eif_path="dir/image", memory_mib=1, cpu_count=1).default_name == "image"


def test_config_documents():
    spec = spec_from_config({"eif_path": "a.eif", "memory_mib": 512, "cpu_ids": [1, 3],
                             "debug_mode": False, "attach_console": True,
                             "enclave_cid": 20, "enclave_name": "x", "unknown": [1],
                             "publish": ["127.0.0.1:0:5000"], "forward": []})
    assert (spec.memory_mib, spec.cpu_ids, spec.enclave_cid, spec.debug_mode) == \
        (512, [1, 3], 20, True)
    assert spec.publish == ["127.0.0.1:0:5000"]
    for document, code in [([], 17), ({"memory_mib": 1, "cpu_count": 1}, 17),
                           ({"eif_path": "a", "memory_mib": -1, "cpu_count": 1}, 17),
                           ({"eif_path": "a", "memory_mib": True, "cpu_count": 1}, 17),
                           ({"eif_path": "a", "memory_mib": 1.5, "cpu_count": 1}, 17),
                           ({"eif_path": "a", "memory_mib": 1, "cpu_ids": ["1"]}, 17),
                           ({"eif_path": "a", "memory_mib": 1}, 1),
                           ({"eif_path": "a", "memory_mib": 1, "cpu_count": 2,
                             "cpu_ids": [1]}, 2),
                           ({"eif_path": "a", "memory_mib": 1, "cpu_count": 2,
                             "enclave_cid": 2}, 3)]:
        assert error_code(spec_from_config, document) == code, document


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 1 << 65) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["eif_path", "memory_mib", "cpu_ids", "cpu_count",
                                       "enclave_cid", "debug_mode", "attach_console",
                                       "enclave_name", "forward", "publish", "vsock_uds",
                                       "other"]), children, max_size=8),
    max_leaves=20)


@given(json_values)
@settings(max_examples=300)
def test_any_config_document_is_a_spec_or_a_nitro_cli_error(document):
    try:
        spec = spec_from_config(document)
    except NitroCliError as error:
        assert error.code in (1, 2, 3, 17, 20)
    else:
        assert isinstance(spec.eif_path, str) and isinstance(spec.memory_mib, int)


# -- choosing CIDs, names, IDs -------------------------------------------------------------------

def test_cid_and_name_choice():
    assert allocate.choose_cid(None, {}) == 16
    assert allocate.choose_cid(None, {16: "a", 17: "b", 19: "c"}) == 18
    assert allocate.choose_cid(40, {16: "a"}) == 40
    assert error_code(allocate.choose_cid, 16, {16: "i-0-enc1"}) == 29
    assert allocate.unique_name("app", set()) == "app"
    assert allocate.unique_name("app", {"app", "app_1", "app_3"}) == "app_2"


def test_enclave_ids():
    slot = allocate.new_slot(set())
    enclave_id = allocate.enclave_id(slot, "i-0000000000000000")
    assert enclave_id == f"i-0000000000000000-enc{slot}"
    assert allocate.slot_of(enclave_id) == slot
    assert allocate.slot_of("enc/../x") is None and allocate.slot_of("i-1-enc") is None
    assert allocate.slot_of("i-1-encZZ") is None


# -- error codes ---------------------------------------------------------------------------

def test_error_codes_and_rendering():
    assert sorted(CODES) == list(range(61))
    error = NitroCliError(26, "User provided `memory` is 5 MB.")
    assert error.exit_status == 26
    assert error.render() == ("[ E26 ] Insufficient memory requested. User provided `memory` "
                              "is 5 MB.\nFor more details, please visit "
                              "https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#E26")
    assert parse_code("e07") == 7 and parse_code("E61") is None and parse_code("x") is None


# -- JSON ----------------------------------------------------------------------------------------

def test_json_key_orders_are_nitro_clis():
    record = EnclaveRecord(enclave_id="i-0000000000000000-enc1f", slot="1f", name="app",
                           cid=16, memory_mib=256, debug_mode=True, eif_path="/a.eif")
    assert [k for k, _ in run_info(record, 7)] == [
        "EnclaveName", "EnclaveID", "ProcessID", "EnclaveCID", "NumberOfCPUs", "CPUIDs",
        "MemoryMiB"]
    described = describe_info(record, 7, RUNNING, Fields([("HashAlgorithm", "x")]),
                              [("ImageName", "n"), ("ImageVersion", "v"), ("Metadata", {})])
    assert [k for k, _ in described][7:] == ["State", "Flags", "Measurements", "ImageName",
                                             "ImageVersion", "Metadata"]
    assert dict(described)["Flags"] == "DEBUG_MODE"
    assert dumps_pretty(terminate_info(record)) == (
        '{\n  "EnclaveName": "app",\n  "EnclaveID": "i-0000000000000000-enc1f",\n'
        '  "Terminated": true\n}')


# -- the state directory --------------------------------------------------------------------

def make_record(store: EnclaveStore, cid=16, name="app") -> EnclaveRecord:
    slot = allocate.new_slot(set(store.slots()))
    store.paths(slot).directory.mkdir(parents=True)
    record = EnclaveRecord(enclave_id=allocate.enclave_id(slot), slot=slot, name=name,
                           cid=cid, memory_mib=128, debug_mode=False, eif_path="/x.eif",
                           vsock_uds=str(store.paths(slot).vsock), created=time.time())
    store.write(record)
    return record


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def hold_alive_lock(store, record) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK,
                               str(store.paths(record.slot).alive)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_liveness_is_the_lock_and_dead_enclaves_are_reaped(tmp_path):
    store = EnclaveStore(tmp_path / "enclaves")
    store.ensure()
    assert os.stat(store.root).st_mode & 0o777 == 0o700
    alive, dead = make_record(store, 16, "a"), make_record(store, 17, "b")
    holder = hold_alive_lock(store, alive)
    try:
        assert [r.slot for r in store.live()] == [alive.slot]     # no lock: not running
        dead_holder = hold_alive_lock(store, dead)
        assert {r.slot for r in store.live()} == {alive.slot, dead.slot}
        dead_holder.send_signal(signal.SIGKILL)                   # dies without a word
        dead_holder.wait()
        assert [r.slot for r in store.live()] == [alive.slot]
        socket_file = socket.socket(socket.AF_UNIX)
        socket_file.bind(str(store.paths(dead.slot).control))
        socket_file.close()
        with store.locked():
            running = store.reap()
        assert [r.slot for r in running] == [alive.slot]           # what live() says
        reaped = store.read(dead.slot)
        assert (reaped.state, reaped.end_reason) == (EXITED, "killed")
        assert not store.paths(dead.slot).control.exists()
        assert store.read(alive.slot).state != EXITED
    finally:
        holder.kill()
        holder.wait()


def test_reap_keeps_only_the_newest_exited_logs(tmp_path):
    store = EnclaveStore(tmp_path / "enclaves")
    store.ensure()
    records = [make_record(store, 16 + i) for i in range(KEEP_EXITED + 3)]
    for i, record in enumerate(records):
        store.update(record.slot, state=EXITED, ended=1000.0 + i)
    half_made = store.paths("abc")
    half_made.directory.mkdir()
    with store.locked():
        store.reap()
    kept = {r.slot for r in store.ended()}
    assert kept == {r.slot for r in records[3:]}
    assert not half_made.directory.exists()


def _hammer(root: str, slot: str, field: str, rounds: int) -> None:
    store = EnclaveStore(root)
    for i in range(rounds):
        store.update(slot, **{field: i})


def test_records_are_never_seen_half_written(tmp_path):
    store = EnclaveStore(tmp_path / "enclaves")
    store.ensure()
    record = make_record(store)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_hammer, args=(str(store.root), record.slot, f, 150))
               for f in ("pid", "cid", "memory_mib")]
    for writer in writers:
        writer.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        assert store.read(record.slot) is not None
        reads += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    final = store.read(record.slot)
    assert (final.pid, final.cid, final.memory_mib) == (149, 149, 149)   # no lost update
    assert reads > 10
    assert not [p for p in store.paths(record.slot).directory.iterdir()
                if p.name.startswith(".record-")]


def test_a_state_directory_of_someone_else_is_refused(tmp_path):
    target = tmp_path / "enclaves"
    target.write_text("not a directory")
    with pytest.raises(NitroCliError) as caught:
        EnclaveStore(target).ensure()
    assert caught.value.code == 7


# -- the control socket ----------------------------------------------------------------------

class Served:
    """A ControlServer on a real HostReactor polled by a thread."""

    def __init__(self, path: Path, handlers) -> None:
        self.reactor = HostReactor()
        self.server = ControlServer(str(path), handlers)
        self.server.start(self.reactor)
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.running:
            self.reactor.poll(0.02)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.server.close()
        self.reactor.close()


def test_control_requests_and_bad_input(tmp_path):
    path = tmp_path / ("d" * 120) / "control.sock"    # beyond sun_path: aliased
    path.parent.mkdir()
    calls = []
    served = Served(path, {"describe": lambda r: calls.append(r) or {"ok": True, "entry": "x"},
                           "crash": lambda r: 1 / 0})
    try:
        assert request(str(path), "describe", 5, metadata=True)["entry"] == "x"
        assert calls == [{"op": "describe", "metadata": True}]
        with pytest.raises(ControlError, match="unknown request"):
            request(str(path), "terminate", 5)
        with pytest.raises(ControlError, match="ZeroDivisionError"):
            request(str(path), "crash", 5)
        for garbage in (b"not json\n", b"[1,2]\n", b"x" * 5000, b"\xff\xfe\n", b""):
            with socket.socket(socket.AF_UNIX) as raw, unix_address(path) as address:
                raw.connect(address)
                raw.sendall(garbage)
                raw.shutdown(socket.SHUT_WR)
                raw.settimeout(5)
                try:
                    reply = raw.recv(4096)
                except ConnectionResetError:      # dropped with input unread
                    reply = b""
                assert reply == b"" or json.loads(reply)["ok"] is False
        assert request(str(path), "describe", 5)["ok"] is True      # still serving
    finally:
        served.close()
    assert not path.exists()
    with pytest.raises(ControlError):
        request(str(path), "describe", 1)


@given(st.binary(max_size=200))
@settings(max_examples=50, deadline=None)
def test_control_server_survives_any_line(tmp_path_factory, line):
    path = tmp_path_factory.mktemp("ctl") / "c.sock"
    served = Served(path, {"describe": lambda r: {"ok": True}})
    try:
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(path))
            raw.sendall(line + b"\n")
            raw.settimeout(5)
            try:
                raw.recv(4096)
            except ConnectionResetError:
                pass
        assert request(str(path), "describe", 5) == {"ok": True}
    finally:
        served.close()


def test_asking_an_enclave_that_is_still_starting_or_already_gone(tmp_path):
    from nitro_emu.enclaves.manager import ask
    store = EnclaveStore(tmp_path / "enclaves")
    store.ensure()
    record = make_record(store)
    holder = hold_alive_lock(store, record)
    served = []

    def start_serving_late():
        time.sleep(0.5)                # the enclave process is still importing
        served.append(Served(store.paths(record.slot).control,
                             {"describe": lambda r: {"ok": True, "late": True}}))

    thread = threading.Thread(target=start_serving_late)
    thread.start()
    try:
        assert ask(store, record, "describe") == {"ok": True, "late": True}
    finally:
        thread.join()
        served[0].close()
    holder.kill()
    holder.wait()
    assert ask(store, record, "describe") is None          # it has ended: no error


def test_an_exited_process_is_gone_even_before_it_is_reaped():
    from nitro_emu.enclaves.manager import process_exists
    assert process_exists(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while process_exists(child.pid):         # exits, and stays a zombie until waited for
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(child.pid, 0)                    # still in the process table
    child.wait()
    assert not process_exists(child.pid)


# -- console logs, long socket paths ----------------------------------------------------------

def test_console_file_is_capped(tmp_path):
    sink = ConsoleFile(tmp_path / "console.log", limit=100)
    sink.write(b"a" * 60)
    sink.write(b"b" * 60)
    sink.write(b"c" * 10)
    sink.close()
    assert (tmp_path / "console.log").read_bytes() == b"a" * 60 + b"b" * 40 + TRUNCATED
    assert os.stat(tmp_path / "console.log").st_mode & 0o777 == 0o600


def test_follow_until_gone_or_timeout(tmp_path):
    log = tmp_path / "console.log"
    sink = ConsoleFile(log)
    sink.write(b"boot\n")
    alive = threading.Event()
    alive.set()

    def writer():
        for i in range(5):
            time.sleep(0.05)
            sink.write(f"line {i}\n".encode())
        alive.clear()

    class Out:
        data = bytearray()

        def write(self, b):
            self.data += b

        def flush(self):
            pass

    out = Out()
    thread = threading.Thread(target=writer)
    thread.start()
    follow(log, out, alive.is_set)
    thread.join()
    assert out.data == b"boot\n" + b"".join(f"line {i}\n".encode() for i in range(5))
    started, later = time.monotonic(), Out()
    later.data = bytearray()
    follow(log, later, lambda: True, disconnect_after=0.3)        # alive forever: timeout
    # it returned although the enclave never ended, and not before its timeout
    assert time.monotonic() - started >= 0.3 and later.data == out.data
