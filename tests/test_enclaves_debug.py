"""The debugging tools on `run-enclave` (background enclaves), through the `nitro-cli`
drop-in: stock GDB attached to an enclave that waits for it, describe-enclaves and
terminate-enclave answered while the debugger holds the CPU, a trace written by an
enclave that runs detached, and post-mortem reports of enclaves that die before and after
run-enclave has returned; without a guest, the options' errors on the command line and
in --config files, and the control thread's manners."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from eif.jsonfmt import Fields
from nitro_emu.enclaves.control import ControlServer, request
from nitro_emu.enclaves.control_thread import ServingThread
from nitro_emu.enclaves.errors import NitroCliError
from nitro_emu.enclaves.json_output import describe_info
from nitro_emu.enclaves.spec import spec_from_config
from nitro_emu.enclaves.store import EnclaveRecord
from support.enclave_cli import assert_nitro_error, pid_alive
from support.gdb_client import GdbClient
from support.images import GUEST_DIR, guest_image
from test_debug_gdb import gdb_command
from test_debug_postmortem import FRAME, no_init_image
from test_enclaves_cli import assert_usage_error, run_args, small_eif  # noqa: F401 (fixture)
from test_enclaves_guest import DESCRIBE_KEYS, RUN_KEYS, cli, echo_through, enclave_dir  # noqa: F401

LISTENING = re.compile(r"^nitro-emu: gdb stub listening on 127\.0\.0\.1:(\d+)"
                       r" \(the CPU waits for a debugger before its first instruction\)$", re.M)


def wait_for_state(cli, state: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        [described] = cli.json("describe-enclaves")
        if described["State"] == state or time.monotonic() > deadline:
            return described
        time.sleep(0.5)


def record_of(cli, enclave_id: str) -> dict:
    return json.loads((enclave_dir(cli, enclave_id) / "record.json").read_text())


# -- with a guest -----------------------------------------------------------------------------

@pytest.mark.guest
def test_gdb_breaks_at_start_kernel_of_an_enclave_that_waits_for_it(cli, tmp_path):
    result = cli(*run_args(guest_image("echo.eif"), "--debug-mode", "--gdb", "0", "--gdb-wait"))
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert list(run) == RUN_KEYS
    port = int(LISTENING.search(result.stderr).group(1))        # as the foreground verb says
    [waiting] = cli.json("describe-enclaves")
    assert list(waiting) == DESCRIBE_KEYS + ["GdbStub"]           # nitro-cli's keys, then ours
    assert (waiting["State"], waiting["GdbStub"]) == ("WAITING_FOR_DEBUGGER", f"127.0.0.1:{port}")

    held = tmp_path / "held.json"           # describe-enclaves while GDB holds the CPU
    describe = (f"{shlex.quote(sys.executable)} -m nitro_emu.cli.nitro_cli describe-enclaves "
                f"> {shlex.quote(str(held))}")
    gdb = subprocess.run(gdb_command(GUEST_DIR / "tiny" / "vmlinux", port,
                                     "break start_kernel", "continue", "bt",
                                     f"shell {describe}", "delete", "detach"),
                         capture_output=True, text=True, timeout=300, env=cli.env)
    output = gdb.stdout + gdb.stderr
    assert "Breakpoint 1, start_kernel () at" in output, output
    assert re.search(r"#1 .* in x86_64_start_reservations", output), output
    assert "[Inferior 1 (Remote target) detached]" in output, output
    [during] = json.loads(held.read_text())
    assert during["State"] == "WAITING_FOR_DEBUGGER" and during["ProcessID"] == run["ProcessID"]

    assert wait_for_state(cli, "RUNNING")["State"] == "RUNNING"  # detached: it boots
    assert echo_through(cli, run["EnclaveCID"], "after gdb\n") == "after gdb\n"
    terminated = cli.json("terminate-enclave", "--enclave-id", run["EnclaveID"])
    assert terminated["Terminated"] is True
    assert not pid_alive(run["ProcessID"])
    record = record_of(cli, run["EnclaveID"])
    assert (record["end_reason"], record["post_mortem_report"]) == ("terminated", None)
    log = (enclave_dir(cli, run["EnclaveID"]) / "process.log").read_text()
    assert f"gdb stub listening on 127.0.0.1:{port}" in log
    assert "debugger attached from 127.0.0.1:" in log and "debugger detached" in log


@pytest.mark.guest
def test_terminate_an_enclave_whose_cpu_a_debugger_holds(cli):
    result = cli(*run_args(guest_image("echo.eif"), "--gdb", "127.0.0.1:0", "--gdb-wait"))
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    client = GdbClient(("127.0.0.1", int(LISTENING.search(result.stderr).group(1))))
    try:
        assert client.command(b"?") == b"T05thread:01;"           # the CPU is held
        assert cli.json("describe-enclaves")[0]["State"] == "WAITING_FOR_DEBUGGER"
        assert cli.json("terminate-enclave", "--all")[0]["Terminated"] is True
        client.sock.settimeout(60)
        assert client.sock.recv(100) == b""                       # the stub hung up
    finally:
        client.close()
    assert not pid_alive(run["ProcessID"])
    assert record_of(cli, run["EnclaveID"])["end_message"] == "terminated on request"


@pytest.mark.guest
def test_a_background_enclave_writes_its_trace(cli, tmp_path):
    trace = tmp_path / "trace.txt"
    config = tmp_path / "enclave.json"        # the trace file relative to the caller
    config.write_text(json.dumps({
        "eif_path": str(guest_image("hello.eif")), "memory_mib": 128, "cpu_count": 1,
        "trace": "syscalls", "trace_file": os.path.relpath(trace)}))
    first = cli.json("run-enclave", "--config", config)
    assert not pid_alive(first["ProcessID"], settle=300)          # hello ends by itself
    assert 'write(1, "Hello from the enclave side!\\n", 29)' in trace.read_text()
    assert record_of(cli, first["EnclaveID"])["trace_file"] == str(trace)

    result = cli(*run_args(guest_image("hello.eif"), "--trace", "exceptions"))
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)
    default = enclave_dir(cli, second["EnclaveID"]) / "trace.txt"
    assert f"nitro-emu: tracing exceptions to {default}" in result.stderr
    assert not pid_alive(second["ProcessID"], settle=300)
    assert re.search(r"#PF error=0x[0-9a-f]+ cr2=0x", default.read_text())


@pytest.mark.guest
def test_an_enclave_that_panics_while_booting_leaves_a_report(cli, tmp_path):
    eif = no_init_image(tmp_path)                       # its kernel panics: no init
    copy = tmp_path / "copy.txt"
    system_map = GUEST_DIR / "tiny" / "System.map"
    result = cli(*run_args(eif, "--system-map", system_map, "--post-mortem",
                           os.path.relpath(copy)))
    assert_nitro_error(result, 36, "before it booted", "panic: Kernel panic", "post-mortem report in")
    report_path = re.search(r"post-mortem report in (\S+)\.$", result.stderr, re.M).group(1)
    report = open(report_path).read()
    assert report_path.endswith("/post-mortem.txt") and copy.read_text() == report
    assert report.startswith("--- post-mortem: panic: Kernel panic - not syncing")
    assert f"--- symbols from {system_map}" in report
    assert "kernel stack (ORC unwind):" in report
    functions = [name for _, _, name in FRAME.findall(report)]
    assert "panic" in functions and "kernel_init" in functions, report
    console = cli("console", "--enclave-name", "panic")   # a production enclave: no console
    assert_nitro_error(console, 44, f"It has exited (panic); post-mortem report in {report_path}.")
    described = cli("describe-enclaves")                  # run-enclave already said where
    assert (described.stdout, described.stderr) == ("[]\n", "")


@pytest.mark.guest
def test_an_enclave_that_dies_after_booting_leaves_a_report(cli):
    from nitro_emu.debug.symbols import SystemMap
    result = cli(*run_args(guest_image("echo.eif"), "--debug-mode", "--gdb", "0"))
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    port = int(re.search(r"gdb stub listening on 127\.0\.0\.1:(\d+)$", result.stderr,
                         re.M).group(1))
    assert cli.json("describe-enclaves")[0]["State"] == "RUNNING"
    idt = SystemMap.load(GUEST_DIR / "echo" / "System.map").address_of("idt_table")
    client = GdbClient(("127.0.0.1", port))               # stops the running guest
    try:
        assert client.command(b"M%x,1000:" % idt + b"00" * 0x1000) == b"OK"  # every gate gone
        assert client.command(b"c") == b"T0bthread:01;"   # the next interrupt: triple fault
        assert client.command(b"c") == b"X0b"
    finally:
        client.close()
    assert not pid_alive(run["ProcessID"], settle=60)
    report = enclave_dir(cli, run["EnclaveID"]) / "post-mortem.txt"
    text = report.read_text()
    assert text.startswith("--- post-mortem: triple-fault: triple fault")
    assert f"--- symbols from {GUEST_DIR / 'echo' / 'System.map'}" in text   # beside the image
    message = record_of(cli, run["EnclaveID"])["end_message"]
    assert message.startswith("triple fault")
    first = cli("describe-enclaves")
    assert first.stdout == "[]\n"
    assert first.stderr == (f"nitro-emu: enclave {run['EnclaveID']} (echo) ended: triple-fault: "
                            f"{message.rstrip('.')}; post-mortem report in {report}\n")
    assert cli("describe-enclaves").stderr == ""          # said once
    console = cli("console", "--enclave-id", run["EnclaveID"])
    assert console.returncode == 0
    assert console.stderr == (f"nitro-emu: enclave {run['EnclaveID']} has exited (triple-fault); "
                              f"post-mortem report in {report}; its console log follows\n")
    assert "vsock-echo: listening on port 5000" in console.stdout


# -- without a guest ----------------------------------------------------------------------------

def test_debugging_options_on_the_command_line(cli, small_eif, tmp_path):
    assert_usage_error(cli(*run_args(small_eif, "--gdb-wait")), "'--gdb-wait' requires '--gdb")
    assert_usage_error(cli(*run_args(small_eif, "--trace-file", "t")), "requires '--trace")
    assert_usage_error(cli(*run_args(small_eif, "--gdb", "host:port")), "[HOST:]PORT")
    assert_usage_error(cli(*run_args(small_eif, "--gdb", "70000")), "[HOST:]PORT")
    assert_usage_error(cli(*run_args(small_eif, "--trace", "everything")), "unknown trace event")
    assert_usage_error(cli("run-enclave", "--config", "c.json", "--gdb", "0"), "--config", "--gdb")
    assert_nitro_error(cli(*run_args(small_eif, "--system-map", tmp_path / "none")), 19,
                       "none", "'Open'")
    assert not list((tmp_path / "state").glob("enclaves/*/"))      # nothing was started


def test_debugging_keys_in_config_files(cli, small_eif, tmp_path):
    config = tmp_path / "c.json"
    base = {"eif_path": str(small_eif), "memory_mib": 256, "cpu_count": 2}
    for extra, code, words in [({"gdb": 1234}, 17, "`gdb` must be a str"),
                               ({"gdb": "host:x"}, 3, "[HOST:]PORT"),
                               ({"trace": "everything"}, 3, "unknown trace event"),
                               ({"gdb_wait": True}, 1, "`gdb-wait` needs `gdb`"),
                               ({"trace_file": "t"}, 1, "`trace-file` needs `trace`"),
                               ({"system_map": str(tmp_path)}, 19,
                                "a directory, not a regular file")]:
        config.write_text(json.dumps({**base, **extra}))
        assert_nitro_error(cli("run-enclave", "--config", config), code, words)
    spec = spec_from_config({**base, "gdb": "[::1]:0", "gdb_wait": True, "trace": "all",
                             "trace_file": "t", "system_map": "m", "post_mortem": "p"})
    assert (spec.gdb, spec.gdb_wait, spec.trace_file, spec.system_map, spec.post_mortem) == \
        (("::1", 0), True, "t", "m", "p")
    assert spec.trace == {"syscalls", "exceptions", "interrupts", "io"}


def test_tools_that_cannot_be_served_are_e03_and_leave_nothing_running(cli, small_eif, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = cli(*run_args(small_eif, "--gdb", str(port)))
    assert_nitro_error(result, 3, f"cannot listen on 127.0.0.1:{port}", "Address already in use")
    result = cli(*run_args(small_eif, "--trace", "io", "--trace-file", tmp_path / "no" / "t"))
    assert_nitro_error(result, 3, "trace file", "No such file or directory")
    assert cli.json("describe-enclaves") == []


debug_values = st.none() | st.booleans() | st.integers(-1, 70000) | st.text(max_size=12) \
    | st.sampled_from(["0", "127.0.0.1:0", "[::1]:1", ":5", "syscalls,io", "all", "x:"])


@given(st.dictionaries(st.sampled_from(["gdb", "gdb_wait", "trace", "trace_file",
                                        "system_map", "post_mortem"]), debug_values))
@settings(max_examples=300)
def test_any_debugging_keys_are_a_spec_or_a_nitro_cli_error(keys):
    try:
        spec = spec_from_config({"eif_path": "a.eif", "memory_mib": 256, "cpu_count": 1, **keys})
    except NitroCliError as error:
        assert error.code in (1, 3, 17)
    else:
        assert spec.gdb is None or (isinstance(spec.gdb[0], str) and 0 <= spec.gdb[1] <= 65535)
        assert not spec.gdb_wait or spec.gdb is not None
        assert not spec.trace_file or spec.trace


def test_the_gdb_stub_comes_after_every_key_of_nitro_cli():
    record = EnclaveRecord(enclave_id="i-0-enc1", slot="1", name="n", cid=16, memory_mib=128,
                           debug_mode=True, eif_path="/x.eif")
    plain = describe_info(record, 1, "RUNNING", Fields(), Fields([("ImageName", "x")]))
    served = describe_info(record, 1, "RUNNING", Fields(), Fields([("ImageName", "x")]),
                           gdb_stub="127.0.0.1:1234")
    assert served[:-1] == plain and served[-1] == ("GdbStub", "127.0.0.1:1234")


def test_the_control_socket_is_served_while_the_main_thread_is_busy(tmp_path):
    """What the enclave process relies on when a debugger holds its emulator thread: the
    control thread answers on its own, stop signals stay with the main thread, and a
    wake of the main thread's reactor gets it out of its wait."""
    from board.reactor import HostReactor
    seen = []

    def describe(request_: dict) -> dict:
        seen.append((threading.current_thread() is threading.main_thread(),
                     signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        main_reactor.wake()
        return {"ok": True}

    path = tmp_path / "control.sock"
    main_reactor = HostReactor()
    serving = ServingThread()
    server = ControlServer(str(path), {"describe": describe})
    server.start(serving.reactor)
    serving.start()
    try:
        answers = []
        asker = threading.Thread(target=lambda: answers.append(request(str(path), "describe", 30)))
        asker.start()
        assert main_reactor.poll(60) == 1          # blocked until the request woke it
        asker.join(30)
        assert answers == [{"ok": True}] and seen == [(False, True)]
        assert not main_reactor.poll(0)            # the wake was drained
    finally:
        serving.stop()
        server.close()
        serving.close()
        main_reactor.close()
    assert not path.exists()
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # main: untouched
