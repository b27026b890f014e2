"""Starting an enclave (`run-enclave`): pick its CID, name and ID under the store's lock,
start its enclave process detached from the caller, and wait until the guest has booted
(with --gdb-wait, until its GDB stub listens: the boot then waits for the debugger).

The caller takes the new enclave's alive lock before the process exists and hands it
over, so the enclave counts as alive (its CID and name taken) from the moment its record
appears; ten `run-enclave`s started at once get ten different CIDs.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import nitro_emu
from devices.vsock.config import Publish
from nitro_emu.enclaves import allocate
from nitro_emu.enclaves.errors import CODES, NitroCliError
from nitro_emu.enclaves.manager import stop_process, wait_gone
from nitro_emu.enclaves.spec import RunSpec
from nitro_emu.enclaves.store import EnclaveRecord, EnclaveStore, make_private_dir

BOOT_TIMEOUT_ENV = "NITRO_EMU_BOOT_TIMEOUT"
DEFAULT_BOOT_TIMEOUT = 300.0
PROCESS_MODULE = "nitro_emu.enclaves.process"


@dataclass
class Launched:
    """A booted enclave (or one waiting for its debugger): its record, its process, and
    where each --publish listens."""

    record: EnclaveRecord
    pid: int
    published: list[tuple[Publish, tuple[str, int]]] = field(default_factory=list)


def boot_timeout() -> float:
    """Seconds to wait for the heartbeat: $NITRO_EMU_BOOT_TIMEOUT, else 300."""
    text = os.environ.get(BOOT_TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_BOOT_TIMEOUT
    except ValueError:
        raise NitroCliError(3, f"{BOOT_TIMEOUT_ENV}={text!r} is not a number of "
                               "seconds.") from None
    if not value > 0:
        raise NitroCliError(3, f"{BOOT_TIMEOUT_ENV}={text!r} must be positive.")
    return value


def launch(store: EnclaveStore, spec: RunSpec,
           on_started: Callable[[EnclaveRecord], None] | None = None,
           timeout: float | None = None,
           on_announce: Callable[[str], None] | None = None) -> Launched:
    """Start the enclave `spec` describes and return once it has booted (or waits for
    its debugger); NitroCliError (E29 CID in use, E36 boot failure, ...) otherwise, with
    nothing left running. `on_started(record)` runs once the machine is built and the
    guest starts; `on_announce(line)` for each message of its GDB stub meanwhile."""
    timeout = boot_timeout() if timeout is None else timeout
    with store.locked():
        running = store.reap()
        cid = allocate.choose_cid(spec.enclave_cid, {r.cid: r.enclave_id for r in running})
        name = allocate.unique_name(spec.enclave_name if spec.enclave_name is not None
                                    else spec.default_name, {r.name for r in running})
        slot = allocate.new_slot(set(store.slots()))
        paths = store.paths(slot)
        uds = os.path.abspath(spec.vsock_uds or paths.vsock)
        clash = next((r for r in running if r.vsock_uds == uds), None)
        if clash is not None:
            raise NitroCliError(3, f"--vsock-uds {uds} is already served by enclave "
                                   f"{clash.enclave_id}.")
        make_private_dir(paths.directory)
        record = EnclaveRecord(
            enclave_id=allocate.enclave_id(slot), slot=slot, name=name, cid=cid,
            memory_mib=spec.memory_mib, debug_mode=spec.debug_mode,
            eif_path=os.path.abspath(spec.eif_path), cpu_ids=spec.cpu_ids,
            cpu_count=spec.cpu_count, forward=list(spec.forward),
            publish=list(spec.publish), vsock_uds=uds,
            parent_role=spec.parent_role, parent_id=spec.parent_id, created=time.time(),
            **_debug_fields(spec, paths.trace))
        lock_fd = os.open(paths.alive, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        read_fd = -1
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            store.write(record)
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            try:
                _spawn_detached(_process_argv(paths.directory, write_fd, lock_fd),
                                (write_fd, lock_fd), str(paths.process_log))
            finally:
                os.close(write_fd)
        except BaseException as error:
            os.close(lock_fd)
            if read_fd >= 0:
                os.close(read_fd)
            shutil.rmtree(paths.directory, ignore_errors=True)
            if isinstance(error, OSError):
                raise NitroCliError(5, f"Cannot start the enclave process: "
                                       f"{error.strerror or error}.") from None
            raise
        os.close(lock_fd)     # the enclave process holds the lock from here on
    booted = _wait_for_boot(store, record, read_fd, timeout, on_started, on_announce)
    published = [(Publish(*entry[:3]), (entry[3], entry[4]))
                 for entry in booted.get("published", [])]
    return Launched(record, booted["pid"], published)


def _debug_fields(spec: RunSpec, default_trace) -> dict[str, object]:
    """The record's debugging fields: paths made absolute (the enclave process works
    from /), the trace in the enclave's directory unless a file is named."""
    def absolute(path: str | None) -> str | None:
        return None if path is None else os.path.abspath(path)

    return dict(gdb=list(spec.gdb) if spec.gdb is not None else None,
                gdb_wait=spec.gdb_wait, trace=sorted(spec.trace),
                trace_file=absolute(spec.trace_file or (default_trace if spec.trace else None)),
                system_map=absolute(spec.system_map), post_mortem=absolute(spec.post_mortem))


def _process_argv(directory, report_fd: int, lock_fd: int) -> list[str]:
    return [sys.executable, "-m", PROCESS_MODULE, "--dir", str(directory),
            "--report-fd", str(report_fd), "--lock-fd", str(lock_fd)]


def _process_env() -> dict[str, str]:
    """This environment, with the directory this nitro_emu was imported from first on
    PYTHONPATH, so the enclave process runs the same code as its caller."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(nitro_emu.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _spawn_detached(argv: list[str], keep_fds: tuple[int, ...], log_path: str) -> None:
    """Run `argv` as a daemon: a grandchild in its own session (no zombie left with the
    caller, no terminal signals), working directory /, stdin /dev/null, stdout and stderr
    appended to `log_path`, inheriting `keep_fds` and nothing else."""
    env = _process_env()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:                      # the intermediate child
            status = 1
            try:
                os.setsid()
                if os.fork() == 0:        # the enclave process
                    try:
                        os.chdir("/")
                        os.dup2(null_fd, 0)
                        os.dup2(log_fd, 1)
                        os.dup2(log_fd, 2)
                        for fd in keep_fds:
                            os.set_inheritable(fd, True)
                        os.execve(argv[0], argv, env)
                    finally:
                        os._exit(127)
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise OSError(f"the intermediate process exited with status {status}")
    finally:
        os.close(log_fd)
        os.close(null_fd)


def _wait_for_boot(store: EnclaveStore, record: EnclaveRecord, read_fd: int,
                   timeout: float, on_started: Callable[[EnclaveRecord], None] | None,
                   on_announce: Callable[[str], None] | None) -> dict:
    """Follow the enclave process's reports until the guest booted or waits for its
    debugger (the report, with the PID) or failed."""
    reports = _Reports(read_fd)
    deadline = time.monotonic() + timeout
    try:
        while True:
            event = reports.next(deadline)
            if event is None:
                break
            kind = event.get("event")
            if kind == "announce" and on_announce is not None:
                on_announce(str(event.get("line")))
            elif kind == "started" and on_started is not None:
                on_started(record)
            elif kind in ("booted", "waiting"):
                return {**event, "pid": reports.pid}
            elif kind == "failed":
                wait_gone(store, record.slot, 30.0)
                raise NitroCliError(_code(event.get("code")), str(event.get("message")))
    except TimeoutError:
        _stop(store, record, reports)
        raise NitroCliError(36, f"The enclave did not send its boot heartbeat within "
                                f"{timeout:.0f} s ({BOOT_TIMEOUT_ENV} sets this).") from None
    except BaseException:       # Ctrl-C while waiting: do not leave it half-booted
        _stop(store, record, reports)
        raise
    finally:
        reports.close()
    wait_gone(store, record.slot, 10.0)
    raise NitroCliError(36, "The enclave process exited before the enclave booted"
                            f"{_last_words(store.paths(record.slot).process_log)}.")


class _Reports:
    """JSON lines from the enclave process's report pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.pid: int | None = None

    def next(self, deadline: float) -> dict | None:
        """The next report; None at end of file; TimeoutError after `deadline`."""
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            event = json.loads(line)
        except ValueError:
            return {}
        if not isinstance(event, dict):
            return {}
        if event.get("event") == "spawned" and isinstance(event.get("pid"), int):
            self.pid = event["pid"]
        return event

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _stop(store: EnclaveStore, record: EnclaveRecord, reports: _Reports) -> None:
    """Stop an enclave that is not wanted any more; learn its PID first if need be."""
    with contextlib.suppress(Exception):
        deadline = time.monotonic() + 5.0
        while reports.pid is None and reports.next(deadline) is not None:
            pass
    pid = reports.pid
    if pid is None:
        pid = getattr(store.read(record.slot), "pid", None)
    stop_process(store, record.slot, pid)


def _code(value: object) -> int:
    return value if isinstance(value, int) and value in CODES else 36


def _last_words(log_path) -> str:
    """': <the last line of process.log>' when there is one."""
    try:
        with open(log_path, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - 4096))
            lines = file.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1].strip()} (see {log_path})" if lines else ""
