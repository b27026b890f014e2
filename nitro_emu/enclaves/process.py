"""The enclave process: runs one enclave in the background, detached from the CLI.

    python -m nitro_emu.enclaves.process --dir ENCLAVE_DIR --report-fd N --lock-fd M

`run-enclave` starts it (launch.py) holding the enclave's alive lock on fd M and reading
progress from the pipe on fd N, one JSON line per event: `spawned` (with the PID),
`started` (the machine is built), then `booted` (the guest's init sent its heartbeat) or
`failed` (a nitro-cli error code and a message). The pipe is closed once the enclave has
booted or failed, and the CLI returns.

The process then runs the machine until the guest ends, `terminate-enclave` asks it to
stop (control socket), or it gets SIGTERM/SIGHUP/SIGINT; it records how the enclave ended
and removes its sockets. The console (debug mode) goes to console.log, which stays.

An idle background enclave costs almost no CPU: the run loop skips idle guest time only
up to a few seconds ahead of host time (nitro_emu/runloop.py), then waits in real time.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from eif.errors import EifError
from eif.jsonfmt import Fields, dumps_compact
from nitro_emu.enclaves import json_output
from nitro_emu.enclaves.console_log import ConsoleFile
from nitro_emu.enclaves.control import ControlServer
from nitro_emu.enclaves.store import (EXITED, RUNNING, STARTING, TERMINATING, EnclaveRecord,
                                      EnclaveStore)
from nitro_emu.errors import NitroEmuError

log = logging.getLogger("nitro_emu.enclaves")

BOOT_FAILURE, EIF_ERROR, SOCKET_ERROR = 36, 35, 11


class _NullConsole:
    """Where a production enclave's console goes: nowhere (as on Nitro)."""

    def write(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass


class EnclaveProcess:
    """One enclave's life: its machine, its control socket, its record's updates."""

    def __init__(self, store: EnclaveStore, slot: str, report_fd: int) -> None:
        self.store = store
        self.slot = slot
        self.paths = store.paths(slot)
        self.report_fd = report_fd
        self.record: EnclaveRecord | None = None
        self.machine = None
        self.booted = False
        self.terminating = False
        self.stop_signal: int | None = None
        self._console: ConsoleFile | None = None

    # -- talking to run-enclave -------------------------------------------------------------

    def report(self, event: str, **fields: object) -> None:
        if self.report_fd < 0:
            return
        try:
            os.write(self.report_fd, json.dumps({"event": event, **fields}).encode() + b"\n")
        except OSError:      # the CLI went away: the enclave carries on regardless
            pass
        if event in ("booted", "failed"):
            os.close(self.report_fd)
            self.report_fd = -1

    def fail(self, code: int, message: str) -> None:
        log.error("enclave failed: %s", message)
        self.report("failed", code=code, message=message)

    def note(self, **changes: object) -> None:
        """Update the record; a full disk is logged, it does not stop the enclave."""
        try:
            self.store.update(self.slot, **changes)
        except OSError as error:
            log.error("cannot update the enclave's record: %s", error)

    # -- the machine ---------------------------------------------------------------------

    def build_machine(self, record: EnclaveRecord, vsock_uds: str):
        from devices.vsock.config import config_from_options
        from nitro_emu.machine import Machine

        vsock = config_from_options(record.forward, record.publish, vsock_uds,
                                    on_heartbeat=self.on_heartbeat)
        console = _NullConsole()
        if record.debug_mode:
            console = self._console = ConsoleFile(self.paths.console)
        return Machine(record.eif_path, guest_cid=record.cid, memory_mib=record.memory_mib,
                       debug_mode=record.debug_mode, console=console, vsock=vsock,
                       parent_role=record.parent_role, parent_id=record.parent_id,
                       state_dir=self.store.root.parent, module_id=record.enclave_id)

    def on_heartbeat(self, ok: bool) -> None:
        if self.booted:
            return
        if not ok:
            self.fail(BOOT_FAILURE, "The enclave's init sent a wrong heartbeat byte.")
            self.machine.stop()
            return
        self.booted = True
        self.note(state=RUNNING)
        published = [[p.host_addr, p.host_port, p.guest_port, *address[:2]]
                     for p, address in self.machine.vsock.muxer.published]
        self.report("booted", published=published)

    # -- control requests ------------------------------------------------------------------

    def describe(self, request: dict) -> dict:
        machine, record = self.machine, self.record
        registers = machine.nsm.handler.pcrs
        measurements = Fields()
        for key, value in machine.image.measurements.to_json_dict().items():
            if key.startswith("PCR"):
                value = registers.value(int(key[3:])).hex()
            measurements.append((key, value))
        metadata = None
        if request.get("metadata") and machine.image.metadata is not None:
            identity = machine.image.metadata
            try:
                metadata = [("ImageName", identity.image_name),
                            ("ImageVersion", identity.image_version),
                            ("Metadata", identity.describe_fields())]
            except EifError:     # custom metadata that is not an object cannot be shown
                metadata = [("ImageName", identity.image_name),
                            ("ImageVersion", identity.image_version)]
        state = TERMINATING if self.terminating else RUNNING if self.booted else STARTING
        entry = json_output.describe_info(record, os.getpid(), state, measurements, metadata)
        return {"ok": True, "entry": dumps_compact(entry)}

    def terminate(self, request: dict) -> dict:
        self.terminating = True
        self.note(state=TERMINATING)
        self.machine.stop()
        return {"ok": True}

    def on_signal(self, number: int, _frame) -> None:
        self.stop_signal = number
        self.terminating = True
        if self.machine is not None:
            self.machine.stop()

    # -- life ----------------------------------------------------------------------------

    def run(self) -> int:
        os.umask(0o077)
        self.record = self.store.update(self.slot, pid=os.getpid())
        if self.record is None:
            self.fail(BOOT_FAILURE, f"The enclave's record in {self.paths.directory} is "
                                    "missing or unreadable.")
            return 1
        self.report("spawned", pid=os.getpid())
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(number, self.on_signal)
        control = ControlServer(str(self.paths.control),
                                {"describe": self.describe, "terminate": self.terminate})
        try:
            return self._run_machine(control)
        finally:
            control.close()
            if self._console is not None:
                self._console.close()

    def _run_machine(self, control: ControlServer) -> int:
        from nitro_emu.enclaves import sockaddr

        uds, alias = sockaddr.long_lived_address(self.record.vsock_uds)
        try:
            try:
                self.machine = self.build_machine(self.record, uds)
            except (EifError, OSError, NitroEmuError) as error:
                code = EIF_ERROR if isinstance(error, EifError) else \
                    SOCKET_ERROR if isinstance(error, OSError) else BOOT_FAILURE
                self.fail(code, _sentence(error))
                self.record_end("failed", str(error))
                return 1
            control.start(self.machine.reactor)
            self.report("started")
            result = None
            try:
                if self.stop_signal is None:
                    result = self.machine.run()
            finally:
                control.close()        # refuse requests at once: the enclave is ending
                self.machine.close()
            if self.stop_signal is not None:
                reason = "terminated"
                message = f"terminated by {signal.Signals(self.stop_signal).name}"
            elif result is None or self.terminating:
                reason, message = "terminated", "terminated on request"
            else:
                reason, message = result.reason, result.message
            if not self.booted:
                self.fail(BOOT_FAILURE, f"The enclave ended before it booted: {reason}: "
                                        f"{message}.")
            self.record_end(reason, message)
            return 0
        finally:
            if alias is not None:
                alias.close()

    def record_end(self, reason: str, message: str) -> None:
        self.note(state=EXITED, ended=time.time(), end_reason=reason, end_message=message)
        log.info("enclave ended: %s: %s", reason, message)


def _sentence(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if text.endswith(".") else text + "."


def _options(argv: list[str]) -> dict[str, str]:
    """`--dir D --report-fd N --lock-fd M` (launch.py's fixed form) as a dict."""
    names = ("--dir", "--report-fd", "--lock-fd")
    pairs = dict(zip(argv[::2], argv[1::2]))
    if len(argv) != 2 * len(names) or set(pairs) != set(names) \
            or not pairs["--report-fd"].isdigit() or not pairs["--lock-fd"].isdigit():
        raise SystemExit("usage: python -m nitro_emu.enclaves.process --dir DIR "
                         "--report-fd N --lock-fd M")
    return pairs


def main(argv: list[str] | None = None) -> int:
    options = _options(sys.argv[1:] if argv is None else argv)
    # Warnings from the devices, and this process's own events, go to process.log.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    directory = Path(options["--dir"])
    store = EnclaveStore(directory.parent)
    process = EnclaveProcess(store, directory.name, int(options["--report-fd"]))
    try:
        return process.run()
    except BaseException as error:
        log.exception("enclave process failed")
        process.fail(BOOT_FAILURE, f"The enclave process failed: {type(error).__name__}: "
                                   f"{error}.")
        if process.record is not None:
            process.record_end("crashed", f"{type(error).__name__}: {error}")
        return 1
    # the alive lock (fd --lock-fd) is released when the process exits


if __name__ == "__main__":
    sys.exit(main())
