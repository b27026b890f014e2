"""The enclave lifecycle with real guests, through the `nitro-cli` drop-in: run-enclave ->
describe-enclaves -> vsock -> console -> terminate-enclave; production mode; a guest that
ends by itself; a guest that cannot boot; a killed enclave process; ten enclaves started
at once; vsock forwarding and publishing; and a shell script written for nitro-cli.

Every test has its own state directory and checks that no enclave process is left."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from eif import cpio
from support.enclave_cli import ROOT, NitroCli, assert_nitro_error, pid_alive
from support.images import guest_image
from test_vsock_guest import build_sender_eif

pytestmark = pytest.mark.guest

RUN_KEYS = ["EnclaveName", "EnclaveID", "ProcessID", "EnclaveCID", "NumberOfCPUs", "CPUIDs",
            "MemoryMiB"]
DESCRIBE_KEYS = RUN_KEYS + ["State", "Flags", "Measurements"]
ZERO_PCR = "0" * 96


@pytest.fixture
def cli(tmp_path):
    nitro_cli = NitroCli(tmp_path / "state")
    yield nitro_cli
    assert nitro_cli.cleanup() == [], "enclave processes were left running"


def run_echo(cli, *extra, memory=256):
    return cli.json("run-enclave", "--eif-path", guest_image("echo.eif"), "--cpu-count", "2",
                    "--memory", memory, *extra)


def echo_through(cli, cid, data: str) -> str:
    result = cli("vsock-connect", cid, 5000, input=data, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def enclave_dir(cli, enclave_id):
    return cli.state_dir / "enclaves" / enclave_id.rsplit("-enc", 1)[1]


def test_lifecycle_of_a_debug_enclave(cli, monkeypatch):
    eif = guest_image("echo.eif")
    described_eif = cli.json("describe-eif", "--eif-path", eif)
    run = run_echo(cli, "--debug-mode")
    assert list(run) == RUN_KEYS
    assert (run["EnclaveName"], run["EnclaveCID"], run["NumberOfCPUs"], run["CPUIDs"],
            run["MemoryMiB"]) == ("echo", 16, 1, [0], 256)
    assert run["EnclaveID"].startswith("i-") and "-enc" in run["EnclaveID"]
    assert pid_alive(run["ProcessID"], settle=0)

    [described] = cli.json("describe-enclaves")
    assert list(described) == DESCRIBE_KEYS
    assert {k: described[k] for k in RUN_KEYS} == run
    assert (described["State"], described["Flags"]) == ("RUNNING", "DEBUG_MODE")
    # What the enclave's NSM reports: zeros for PCR0-2 in debug mode (the EIF's are not).
    assert described["Measurements"] == {
        "HashAlgorithm": described_eif["Measurements"]["HashAlgorithm"],
        "PCR0": ZERO_PCR, "PCR1": ZERO_PCR, "PCR2": ZERO_PCR}
    assert described_eif["Measurements"]["PCR0"] != ZERO_PCR
    [with_metadata] = cli.json("describe-enclaves", "--metadata")
    assert list(with_metadata)[-3:] == ["ImageName", "ImageVersion", "Metadata"]
    assert with_metadata["Metadata"] == described_eif["Metadata"]
    assert with_metadata["ImageName"] == described_eif["ImageName"]

    assert echo_through(cli, 16, "hello through the enclave\n") == "hello through the enclave\n"
    monkeypatch.setenv("NITRO_EMU_STATE_DIR", str(cli.state_dir))
    from nitro_emu.vsock import connect
    blob = os.urandom(300_000)
    with connect(16, 5000, timeout=60) as sock:
        threading.Thread(target=lambda: (sock.sendall(blob), sock.shutdown(socket.SHUT_WR)),
                         daemon=True).start()
        echoed = bytearray()
        while chunk := sock.recv(65536):
            echoed += chunk
    assert echoed == blob
    with pytest.raises(ConnectionRefusedError):
        connect(16, 5999, timeout=60)

    console = cli("console", "--enclave-id", run["EnclaveID"], "--disconnect-timeout", "1")
    assert console.returncode == 0, console.stderr
    assert console.stdout.startswith("Connecting to the console for enclave 16...\n"
                                     "Successfully connected to the console.\n")
    assert "Linux version" in console.stdout                      # from boot on
    assert "vsock-echo: listening on port 5000" in console.stdout

    directory = enclave_dir(cli, run["EnclaveID"])
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / "console.log").st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(directory / "vsock.sock").st_mode)

    result = cli("terminate-enclave", "--enclave-id", run["EnclaveID"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"EnclaveName": "echo", "EnclaveID": run["EnclaveID"],
                                         "Terminated": True}
    assert result.stderr == f"Successfully terminated enclave {run['EnclaveID']}.\n"
    assert not pid_alive(run["ProcessID"], settle=0)
    assert not (directory / "control.sock").exists() and not (directory / "vsock.sock").exists()
    assert cli("describe-enclaves").stdout == "[]\n"
    # Its CID is free again, and its console log is still there.
    assert run_echo(cli, "--debug-mode")["EnclaveCID"] == 16
    kept = cli("console", "--enclave-id", run["EnclaveID"])
    assert kept.returncode == 0 and "vsock-echo: listening" in kept.stdout


def test_production_enclaves_names_cids_and_errors(cli):
    eif_pcrs = cli.json("describe-eif", "--eif-path", guest_image("echo.eif"))["Measurements"]
    first = run_echo(cli, "--enclave-name", "prod", "--enclave-cid", "42", memory="128")
    second = run_echo(cli, "--enclave-name", "prod", memory="128M")
    assert (first["EnclaveName"], first["EnclaveCID"]) == ("prod", 42)
    assert (second["EnclaveName"], second["EnclaveCID"]) == ("prod_1", 16)
    described = cli.json("describe-enclaves")
    assert [d["EnclaveName"] for d in described] == ["prod", "prod_1"]
    assert all(d["Flags"] == "NONE" for d in described)
    assert all(d["Measurements"] == eif_pcrs for d in described)   # the NSM has the EIF's
    assert_nitro_error(cli("console", "--enclave-name", "prod"), 44, "debug mode")
    assert_nitro_error(cli("run-enclave", "--eif-path", guest_image("echo.eif"),
                           "--cpu-count", "2", "--memory", "128", "--enclave-cid", "42"),
                       29, "CID 42 is already in use", first["EnclaveID"])
    assert_nitro_error(cli("console", "--enclave-name", "prod_2"), 58)
    assert echo_through(cli, 42, "to 42\n") == "to 42\n"
    terminated = cli.json("terminate-enclave", "--all")
    assert [t["EnclaveName"] for t in terminated] == ["prod", "prod_1"]
    assert all(t["Terminated"] for t in terminated)
    assert cli.json("describe-enclaves") == []


def test_a_guest_that_ends_keeps_its_console(cli):
    result = cli("run-enclave", "--eif-path", guest_image("hello.eif"), "--cpu-count", "1",
                 "--memory", "128", "--attach-console")
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    run, end = decoder.raw_decode(result.stdout)
    assert run["EnclaveName"] == "hello"
    rest = result.stdout[end:]
    assert rest.startswith("\nConnecting to the console for enclave 16...\n")
    assert "Hello from the enclave side!" in rest
    # --attach-console returned because the enclave ended: it is gone from the list.
    assert cli.json("describe-enclaves") == []
    assert not pid_alive(run["ProcessID"])
    later = cli("console", "--enclave-name", "hello")
    assert later.returncode == 0
    assert "Hello from the enclave side!" in later.stdout
    assert "has exited (reset)" in later.stderr



def test_the_enclave_id_is_the_module_id_its_nsm_attests(cli):
    """On Nitro the enclave ID nitro-cli prints is the NSM's module_id in every document."""
    import base64

    import cbor2

    result = cli("run-enclave", "--eif-path", guest_image("attest.eif"), "--cpu-count", "1",
                 "--memory", "128", "--attach-console")
    assert result.returncode == 0, result.stderr
    run, end = json.JSONDecoder().raw_decode(result.stdout)
    document = re.search(r"-----BEGIN ATTESTATION DOCUMENT-----\s*(.*?)\s*-----END",
                         result.stdout[end:], re.S).group(1)
    payload = cbor2.loads(cbor2.loads(base64.b64decode("".join(document.split())))[2])
    assert payload["module_id"] == run["EnclaveID"]

def test_a_guest_that_cannot_boot_is_e36(cli, tmp_path):
    from eif.builder import build_eif
    source = guest_image("echo")
    ramdisk = tmp_path / "no-init.cpio"
    ramdisk.write_bytes(cpio.newc_archive([cpio.file("README", b"there is no init here")]))
    eif = tmp_path / "no-init.eif"
    build_eif(eif, kernel=source / "bzImage", cmdline=(source / "cmdline").read_text(),
              ramdisks=[ramdisk])
    result = cli("run-enclave", "--eif-path", eif, "--cpu-count", "2", "--memory", "128",
                 "--debug-mode")
    assert_nitro_error(result, 36, "before it booted", "panic")
    assert result.stdout == ""
    assert cli.json("describe-enclaves") == []
    console = cli("console", "--enclave-name", "no-init")      # what it printed is kept
    assert "Kernel panic" in console.stdout


def test_signalled_and_killed_enclaves_are_gone_and_their_cid_reused(cli):
    first = run_echo(cli, "--enclave-cid", "30", memory="128")
    os.kill(first["ProcessID"], signal.SIGTERM)            # a clean stop
    assert not pid_alive(first["ProcessID"], settle=30)
    record = json.loads((enclave_dir(cli, first["EnclaveID"]) / "record.json").read_text())
    assert (record["state"], record["end_message"]) == ("EXITED", "terminated by SIGTERM")
    assert not (enclave_dir(cli, first["EnclaveID"]) / "vsock.sock").exists()
    second = run_echo(cli, "--enclave-cid", "30", memory="128")
    os.kill(second["ProcessID"], signal.SIGKILL)           # no chance to say anything
    assert not pid_alive(second["ProcessID"])
    assert cli.json("describe-enclaves") == []
    assert_nitro_error(cli("terminate-enclave", "--enclave-id", second["EnclaveID"]), 11)
    third = run_echo(cli, "--enclave-cid", "30", memory="128")
    assert third["EnclaveCID"] == 30 and third["EnclaveName"] == "echo"
    assert not (enclave_dir(cli, second["EnclaveID"]) / "control.sock").exists()   # reaped


def test_a_stop_signal_ignored_at_start_stays_ignored(cli):
    """As for the run verb (nitro_emu.stop_signals): run-enclave under nohup starts an
    enclave that SIGHUP does not stop; SIGTERM still does."""
    started = subprocess.run(
        [sys.executable, "-m", "nitro_emu.cli.nitro_cli", "run-enclave", "--eif-path",
         guest_image("echo.eif"), "--cpu-count", "2", "--memory", "128"],
        capture_output=True, text=True, env=cli.env, stdin=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN), timeout=900)
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    os.kill(run["ProcessID"], signal.SIGHUP)        # discarded: it is ignored
    assert [d["State"] for d in cli.json("describe-enclaves")] == ["RUNNING"]
    assert echo_through(cli, run["EnclaveCID"], "still here\n") == "still here\n"
    os.kill(run["ProcessID"], signal.SIGTERM)
    assert not pid_alive(run["ProcessID"], settle=30)
    record = json.loads((enclave_dir(cli, run["EnclaveID"]) / "record.json").read_text())
    assert (record["state"], record["end_message"]) == ("EXITED", "terminated by SIGTERM")


def test_ten_enclaves_started_at_once(cli):
    started = time.monotonic()
    runs = [cli.popen("run-enclave", "--eif-path", guest_image("echo.eif"), "--cpu-count", "2",
                      "--memory", "128") for _ in range(10)]
    time.sleep(1.0)                    # while they boot, describe still answers
    during = cli.json("describe-enclaves")
    assert {d["State"] for d in during} <= {"STARTING", "RUNNING"}
    outputs = [run.communicate(timeout=900) for run in runs]
    print(f"\nten concurrent run-enclave: {time.monotonic() - started:.1f} s")
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err
    infos = [json.loads(out) for out, _ in outputs]
    assert sorted(i["EnclaveCID"] for i in infos) == list(range(16, 26))
    assert sorted(i["EnclaveName"] for i in infos) == sorted(
        ["echo"] + [f"echo_{n}" for n in range(1, 10)])
    assert len({i["EnclaveID"] for i in infos}) == 10
    described = cli.json("describe-enclaves")
    assert len(described) == 10 and all(d["State"] == "RUNNING" for d in described)
    for info in infos:
        assert echo_through(cli, info["EnclaveCID"], f"{info['EnclaveName']}\n") == \
            f"{info['EnclaveName']}\n"
    assert len(cli.json("terminate-enclave", "--all")) == 10
    assert cli.json("describe-enclaves") == []


def test_forward_and_publish_on_run_enclave(cli, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = bytearray()

    def sink():
        connection, _ = listener.accept()
        with connection:
            while data := connection.recv(65536):
                received.extend(data)

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    eif = build_sender_eif(tmp_path, "vsock-send 3 7000 100000; vsock-echo 5000")
    config = tmp_path / "enclave.json"
    config.write_text(json.dumps({
        "eif_path": str(eif), "memory_mib": 128, "cpu_count": 2, "enclave_name": "fwd",
        "forward": [f"7000=tcp:127.0.0.1:{listener.getsockname()[1]}"],
        "publish": ["127.0.0.1:0:5000"]}))
    result = cli("run-enclave", "--config", config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["EnclaveName"] == "fwd"
    [published] = [line for line in result.stderr.splitlines() if "published" in line]
    match = re.fullmatch(r"nitro-emu: published 127\.0\.0\.1:(\d+) -> guest port 5000",
                         published)
    port = int(match.group(1))
    thread.join(300)
    assert len(received) == 100000                         # guest -> forwarded parent port
    deadline = time.monotonic() + 120
    while True:                                            # host -> published guest port
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
                client.sendall(b"published\n")
                client.shutdown(socket.SHUT_WR)
                assert client.recv(100) == b"published\n"
            break
        except (ConnectionError, AssertionError):
            if time.monotonic() > deadline:                # vsock-echo not listening yet
                raise
            time.sleep(0.5)
    cli.json("terminate-enclave", "--enclave-name", "fwd")
    with pytest.raises(ConnectionRefusedError):            # the publisher is closed too
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    listener.close()


SCRIPT = r"""#!/bin/bash
# Written for a Nitro host: nothing here knows about nitro-emu.
set -euo pipefail
EIF=$1
nitro-cli --version
PCR0=$(nitro-cli describe-eif --eif-path "$EIF" | jq -r .Measurements.PCR0)
OUT=$(nitro-cli run-enclave --cpu-count 2 --memory 256 --eif-path "$EIF" --enclave-name app)
ID=$(echo "$OUT" | jq -r .EnclaveID)
CID=$(echo "$OUT" | jq -r .EnclaveCID)
test "$(nitro-cli describe-enclaves | jq -r '.[0].State')" = RUNNING
test "$(nitro-cli describe-enclaves | jq -r '.[0].Measurements.PCR0')" = "$PCR0"
test "$(nitro-cli describe-enclaves | jq length)" = 1
status=0
nitro-cli run-enclave --cpu-count 2 --memory 256 --eif-path "$EIF" --enclave-cid "$CID" \
    2> clash.txt || status=$?
test "$status" = 29
status=0
nitro-cli console --enclave-id "$ID" --disconnect-timeout 1 2> /dev/null || status=$?
test "$status" = 44
nitro-cli terminate-enclave --enclave-id "$ID" | jq -e '.Terminated == true' > /dev/null
test "$(nitro-cli describe-enclaves)" = "[]"
echo "all good on CID $CID"
"""


def test_a_script_written_for_nitro_cli(cli, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "nitro-cli"           # what pip writes for the console script
    wrapper.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                       "from nitro_emu.cli.nitro_cli import entry_point\nentry_point()\n")
    wrapper.chmod(0o755)
    script = tmp_path / "deploy.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    env = {**cli.env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run([str(script), str(guest_image("echo.eif"))], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["Nitro CLI 1.5.0", "all good on CID 16"]
    assert "[ E29 ]" in (tmp_path / "clash.txt").read_text()
