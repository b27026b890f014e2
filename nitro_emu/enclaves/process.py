"""The enclave process: runs one enclave in the background, detached from the CLI.

    python -m nitro_emu.enclaves.process --dir ENCLAVE_DIR --report-fd N --lock-fd M

`run-enclave` starts it (launch.py) holding the enclave's alive lock on fd M and reading
progress from the pipe on fd N, one JSON line per event: `spawned` (with the PID),
`announce` (a line from the GDB stub: where it listens, the port it picked for port 0),
`started` (the machine is built), then `booted` (the guest's init sent
its heartbeat), `waiting` (--gdb-wait: the stub listens and the CPU waits for a debugger,
so the heartbeat will come only as the debugger lets it) or `failed` (a nitro-cli error
code and a message). The pipe is closed after `booted`, `waiting` or `failed`, and the CLI
returns.

The process then runs the machine until the guest ends, `terminate-enclave` asks it to
stop (control socket), or it gets a stop signal (nitro_emu.stop_signals: SIGTERM, SIGHUP
or SIGINT, unless ignored when it started, as SIGHUP under nohup); it records how the enclave ended
and removes its sockets. The console (debug mode) goes to console.log, which stays; so
does post-mortem.txt, the report of an enclave that died (nitro_emu.debug.postmortem).
The control socket is served on a thread of its own (control_thread.py): a debugger may
hold the emulator thread for as long as it likes.

An idle background enclave costs almost no CPU: the run loop skips idle guest time only
up to a few seconds ahead of host time (nitro_emu/runloop.py), then waits in real time.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from devices.vsock.host_port import format_host_port
from eif.errors import EifError, FileError
from eif.jsonfmt import Fields, dumps_compact
from nitro_emu.enclaves import json_output
from nitro_emu.enclaves.console_log import ConsoleFile
from nitro_emu.enclaves.control import ControlServer
from nitro_emu.enclaves.control_thread import ServingThread
from nitro_emu.enclaves.store import (EXITED, RUNNING, STARTING, TERMINATING,
                                      WAITING_FOR_DEBUGGER, EnclaveRecord, EnclaveStore)
from nitro_emu.errors import NitroEmuError
from nitro_emu.stop_signals import StopSignals

log = logging.getLogger("nitro_emu.enclaves")

BOOT_FAILURE, EIF_ERROR, SOCKET_ERROR, INVALID_ARGUMENT = 36, 35, 11, 3


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
        self.signals = StopSignals()
        self._console: ConsoleFile | None = None
        # booted and terminating change on both threads (heartbeat, control requests)
        self._state_lock = threading.Lock()

    # -- talking to run-enclave -------------------------------------------------------------

    def report(self, event: str, **fields: object) -> bool:
        """Send `event` to run-enclave; whether it got there."""
        if self.report_fd < 0:
            return False
        try:
            os.write(self.report_fd, json.dumps({"event": event, **fields}).encode() + b"\n")
            sent = True
        except OSError:      # the CLI went away: the enclave carries on regardless
            sent = False
        if event in ("booted", "waiting", "failed"):
            os.close(self.report_fd)
            self.report_fd = -1
        return sent

    def announce(self, line: str) -> None:
        """A message of the GDB stub: to process.log, and to run-enclave while it waits."""
        log.info("%s", line)
        self.report("announce", line=line)

    def fail(self, code: int, message: str) -> bool:
        """Report a failure to run-enclave (which prints it); whether it got there."""
        log.error("enclave failed: %s", message)
        return self.report("failed", code=code, message=message)

    def note(self, **changes: object) -> None:
        """Update the record; a full disk is logged, it does not stop the enclave."""
        try:
            self.store.update(self.slot, **changes)
        except OSError as error:
            log.error("cannot update the enclave's record: %s", error)

    # -- the machine ---------------------------------------------------------------------

    def build_machine(self, record: EnclaveRecord):
        from devices.vsock.config import config_from_options
        from nitro_emu.machine import Machine

        vsock = config_from_options(record.forward, record.publish, record.vsock_uds,
                                    on_heartbeat=self.on_heartbeat)
        console = _NullConsole()
        if record.debug_mode:
            console = self._console = ConsoleFile(self.paths.console)
        return Machine(record.eif_path, guest_cid=record.cid, memory_mib=record.memory_mib,
                       debug_mode=record.debug_mode, console=console, vsock=vsock,
                       parent_role=record.parent_role, parent_id=record.parent_id,
                       state_dir=self.store.root.parent, module_id=record.enclave_id,
                       debug=self.debug_config(record),
                       keep_transcript=False)   # console.log has it (debug mode)

    def debug_config(self, record: EnclaveRecord):
        """The DebugConfig the record asks for (None for none); the stub's messages go to
        process.log and, while it waits, to run-enclave."""
        if record.gdb is None and not record.trace:
            return None
        from nitro_emu.debug.config import DebugConfig
        return DebugConfig(gdb=tuple(record.gdb) if record.gdb is not None else None,
                           gdb_wait=record.gdb_wait, trace=frozenset(record.trace),
                           trace_file=record.trace_file, announce=self.announce)

    @property
    def gdb_stub(self) -> tuple[str, int] | None:
        """Where the machine's GDB stub listens (port 0 was replaced by the one it got)."""
        debug = self.machine.debug if self.machine is not None else None
        return debug.stub.address if debug is not None and debug.stub is not None else None

    def on_heartbeat(self, ok: bool) -> None:
        if self.booted:
            return
        if not ok:
            self.fail(BOOT_FAILURE, "The enclave's init sent a wrong heartbeat byte.")
            self.machine.stop()
            return
        with self._state_lock:
            self.booted = True
            if not self.terminating:
                self.note(state=RUNNING)
        self.report("booted", published=self.published())

    def published(self) -> list[list]:
        """Each --publish as [host_addr, host_port, guest_port, bound host, bound port]."""
        return [[p.host_addr, p.host_port, p.guest_port, *address[:2]]
                for p, address in self.machine.vsock.muxer.published]

    # -- control requests (on the control thread) -------------------------------------------

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
        with self._state_lock:
            state = TERMINATING if self.terminating else RUNNING if self.booted else \
                WAITING_FOR_DEBUGGER if record.gdb_wait else STARTING
        stub = self.gdb_stub
        entry = json_output.describe_info(record, os.getpid(), state, measurements, metadata,
                                          gdb_stub=format_host_port(*stub) if stub else None)
        return {"ok": True, "entry": dumps_compact(entry)}

    def terminate(self, request: dict) -> dict:
        with self._state_lock:
            self.terminating = True
            self.note(state=TERMINATING)
        self.machine.stop()     # wakes the emulator thread even when the guest idles
        return {"ok": True}

    def on_stop_signal(self) -> None:
        """A stop signal came (on the main thread, between two bytecodes of anything)."""
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
        with self.signals:
            self.signals.connect(self.on_stop_signal)
            control = ControlServer(str(self.paths.control),
                                    {"describe": self.describe, "terminate": self.terminate})
            serving = ServingThread()
            try:
                return self._run_machine(control, serving)
            finally:
                serving.stop()
                control.close()
                serving.close()
                if self._console is not None:
                    self._console.close()

    def _run_machine(self, control: ControlServer, serving: ServingThread) -> int:
        try:
            self.machine = self.build_machine(self.record)
        except (EifError, OSError, NitroEmuError) as error:
            self.fail(_failure_code(error), _sentence(error))
            self.record_end("failed", str(error))
            return 1
        try:
            control.start(serving.reactor)
            serving.start()
            self.started()
            result = None
            try:
                if self.signals.received is None:
                    result = self.machine.run()
            finally:
                serving.stop()         # refuse requests at once: the enclave is ending
                control.close()
            reason, message = self.outcome(result)
            report = self.write_post_mortem(reason, message)
        finally:
            self.machine.close()
        told = False            # run-enclave printed where the report is
        if not self.booted and self.report_fd >= 0:     # run-enclave still waits
            where = f"; post-mortem report in {report}" if report else ""
            told = self.fail(BOOT_FAILURE, f"The enclave ended before it booted: "
                                           f"{reason}: {message.rstrip('.')}{where}.")
        self.record_end(reason, message, post_mortem_report=report,
                        post_mortem_noticed=told and report is not None)
        return 0

    def started(self) -> None:
        """Tell run-enclave the machine is built; with --gdb-wait, that it waits for a
        debugger (run-enclave returns: the boot now goes at the debugger's pace)."""
        self.report("started")
        if self.record.gdb_wait:
            self.note(state=WAITING_FOR_DEBUGGER)
            self.report("waiting", published=self.published())

    def outcome(self, result) -> tuple[str, str]:
        """(reason, message) of the enclave's end."""
        if self.signals.received is not None:
            return "terminated", f"terminated by {self.signals.received.name}"
        if result is None or self.terminating:
            return "terminated", "terminated on request"
        return result.reason, result.message

    def write_post_mortem(self, reason: str, message: str) -> str | None:
        """For an enclave that died (nitro_emu.debug.postmortem.REPORTED): its report in
        post-mortem.txt (and --post-mortem's file); the path, or None if none was due or
        it could not be written (said in process.log)."""
        from nitro_emu.debug.postmortem import death_report, save_report
        record = self.record
        try:
            lines = death_report(self.machine.vcpu, reason, message, record.eif_path,
                                 record.system_map)
        except Exception:          # the enclave's end is recorded even so
            log.exception("the post-mortem report failed")
            return None
        if lines is None:
            return None
        written = None
        for path in (self.paths.post_mortem, record.post_mortem):
            if path is None:
                continue
            try:
                save_report(lines, path)
            except FileError as error:
                log.error("post-mortem report not written: %s", error)
                continue
            written = written or str(path)
        return written

    def record_end(self, reason: str, message: str, **more: object) -> None:
        self.note(state=EXITED, ended=time.time(), end_reason=reason, end_message=message,
                  **more)
        log.info("enclave ended: %s: %s", reason, message)


def _failure_code(error: BaseException) -> int:
    """The nitro-cli code for a machine that could not be built: E35 for the EIF, E03 for
    debugging tools that cannot be set up as asked (a busy port, an unwritable trace
    file), E11 for other sockets, else E36."""
    from nitro_emu.debug.config import DebugError
    if isinstance(error, EifError):
        return EIF_ERROR
    if isinstance(error, DebugError):
        return INVALID_ARGUMENT
    return SOCKET_ERROR if isinstance(error, OSError) else BOOT_FAILURE


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
