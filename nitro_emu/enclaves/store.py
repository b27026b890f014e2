"""The enclaves' state directory: `<state dir>/enclaves/`, one subdirectory per enclave.

    enclaves/lock             flock'ed while an enclave is created (CID and name choice)
    enclaves/<slot>/          0700; <slot> is the hex tail of the enclave ID
        record.json           what the enclave is (written whole, then renamed into place)
        alive.lock            flock'ed by the enclave process for as long as it lives
        control.sock          the enclave process's control socket
        vsock.sock            its Firecracker hybrid-vsock socket
        console.log           its serial console (debug mode only), kept after it exits
        process.log           the enclave process's own stderr (and its GDB stub's messages)
        trace.txt             its --trace, unless --trace-file names another file
        post-mortem.txt       the post-mortem report of an enclave that died

An enclave is alive exactly while its `alive.lock` is locked: the lock dies with the
process, however it ends (even `kill -9`), and a reused PID cannot fool it. Records of
enclaves whose lock is free are stale; they are marked exited under the creation lock,
and the newest KEEP_EXITED of them are kept so `console` still shows their logs.

Everything is private to the user: directories 0700, files 0600.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from devices.vsock.unix_address import remove_socket
from nitro_emu.attestation.state import state_dir
from nitro_emu.enclaves.errors import NitroCliError

SUBDIR = "enclaves"
RECORD, ALIVE, CONTROL, VSOCK, CONSOLE, PROCESS_LOG, TRACE, POST_MORTEM = (
    "record.json", "alive.lock", "control.sock", "vsock.sock", "console.log", "process.log",
    "trace.txt", "post-mortem.txt")
KEEP_EXITED = 32
RECORD_LIMIT = 1 << 20

STARTING, RUNNING, TERMINATING, EXITED = "STARTING", "RUNNING", "TERMINATING", "EXITED"
# Started with --gdb-wait: the enclave boots only as its debugger lets it (RUNNING once
# its boot heartbeat arrives).
WAITING_FOR_DEBUGGER = "WAITING_FOR_DEBUGGER"


@dataclass
class EnclaveRecord:
    """One enclave as record.json keeps it (the run request, then what became of it).
    The debugging fields are RunSpec's, with `gdb` as [host, port] and the paths absolute;
    `post_mortem_report` is where the report of its death was written, and
    `post_mortem_noticed` whether describe-enclaves has pointed at it yet."""

    enclave_id: str
    slot: str
    name: str
    cid: int
    memory_mib: int
    debug_mode: bool
    eif_path: str
    cpu_ids: list[int] | None = None
    cpu_count: int | None = None
    forward: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    vsock_uds: str = ""
    parent_role: str | None = None
    parent_id: str | None = None
    gdb: list | None = None
    gdb_wait: bool = False
    trace: list[str] = field(default_factory=list)
    trace_file: str | None = None
    system_map: str | None = None
    post_mortem: str | None = None
    state: str = STARTING
    pid: int | None = None
    created: float = 0.0
    ended: float | None = None
    end_reason: str | None = None
    end_message: str | None = None
    post_mortem_report: str | None = None
    post_mortem_noticed: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> EnclaveRecord:
        """ValueError if the record is not one this version wrote."""
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("a record is a JSON object")
        names = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in document.items() if k in names})
        if not isinstance(record.cid, int) or not isinstance(record.slot, str) \
                or not isinstance(record.name, str):
            raise ValueError("record fields have the wrong types")
        return record


class EnclavePaths:
    """The files of one enclave's directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.record = directory / RECORD
        self.alive = directory / ALIVE
        self.control = directory / CONTROL
        self.vsock = directory / VSOCK
        self.console = directory / CONSOLE
        self.process_log = directory / PROCESS_LOG
        self.trace = directory / TRACE
        self.post_mortem = directory / POST_MORTEM


def is_slot(name: str) -> bool:
    """Whether `name` is an enclave slot: 1 to 16 lowercase hex digits."""
    return 0 < len(name) <= 16 and all(c in "0123456789abcdef" for c in name)


class EnclaveStore:
    """The user's enclaves directory (`root`, default `<state dir>/enclaves`)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        # Absolute: the enclave process works from / and is handed paths below this.
        self.root = (Path(root) if root is not None else state_dir() / SUBDIR).absolute()

    # -- the directory itself -------------------------------------------------------------

    def ensure(self) -> None:
        """Create the directory (0700) or check that an existing one is ours and private."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            info = os.lstat(self.root)
        except OSError as error:
            raise NitroCliError(7, f"Cannot create the enclaves directory {self.root}: "
                                   f"{error.strerror or error}.") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise NitroCliError(7, f"{self.root} is not a directory of yours: refusing to "
                                   "keep enclaves there.")
        if info.st_mode & 0o077:
            os.chmod(self.root, 0o700)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the creation lock (every CID and name is chosen under it)."""
        self.ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def paths(self, slot: str) -> EnclavePaths:
        if not is_slot(slot):
            raise ValueError(f"not an enclave slot: {slot!r}")
        return EnclavePaths(self.root / slot)

    def slots(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        except OSError as error:
            raise NitroCliError(7, f"Cannot read the enclaves directory {self.root}: "
                                   f"{error.strerror or error}.") from None
        return sorted(name for name in names if is_slot(name))

    # -- records ---------------------------------------------------------------------------

    def read(self, slot: str) -> EnclaveRecord | None:
        """The record of `slot`, or None if there is none (yet) or it is unreadable."""
        try:
            with open(self.paths(slot).record, "rb") as file:
                data = file.read(RECORD_LIMIT)
            return EnclaveRecord.from_json(data)
        except (OSError, ValueError, TypeError):
            return None

    def write(self, record: EnclaveRecord) -> None:
        """Replace the record in one step (readers see the old or the new one, whole)."""
        _atomic_write(self.paths(record.slot).record, record.to_json())

    def update(self, slot: str, **changes: object) -> EnclaveRecord | None:
        """Change some fields of a record, serialised with other updates of the same
        record by a lock on its directory."""
        paths = self.paths(slot)
        try:
            fd = os.open(paths.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            record = self.read(slot)
            if record is None:
                return None
            for key, value in changes.items():
                setattr(record, key, value)
            self.write(record)
            return record
        finally:
            os.close(fd)

    # -- liveness --------------------------------------------------------------------------

    def is_alive(self, slot: str) -> bool:
        """Whether the enclave process of `slot` still holds its lock."""
        try:
            fd = os.open(self.paths(slot).alive, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def live(self) -> list[EnclaveRecord]:
        """Records of the enclaves whose process is alive, oldest first."""
        return self._survey().live

    def ended(self) -> list[EnclaveRecord]:
        """Records of enclaves that are gone (their logs are kept), newest first."""
        return self._survey().ended

    def _survey(self) -> _Survey:
        """Every enclave directory, its lock and its record each read once."""
        survey = _Survey()
        for slot in self.slots():
            alive = self.is_alive(slot)   # first: the record of a dead enclave is final
            record = self.read(slot)
            if record is None:
                if not alive:
                    survey.broken.append(slot)
            elif not alive:
                survey.ended.append(record)
            elif record.state != EXITED:
                survey.live.append(record)
        survey.sort()
        return survey

    def mark_killed(self, record: EnclaveRecord, message: str) -> EnclaveRecord:
        """Record that the enclave of `record` ended without saying so (its process was
        killed) and remove the sockets it left; the updated record."""
        updated = self.update(record.slot, state=EXITED, ended=time.time(),
                              end_reason="killed", end_message=message)
        remove_socket(self.paths(record.slot).control)
        remove_socket(record.vsock_uds)
        return updated or record

    # -- housekeeping (under the creation lock) -------------------------------------------

    def reap(self) -> list[EnclaveRecord]:
        """Mark enclaves whose process died without saying so as exited, remove their
        sockets, drop half-created directories and all but the newest KEEP_EXITED logs.
        Returns the live enclaves (as `live()`, from the same reading)."""
        survey = self._survey()
        for slot in survey.broken:
            shutil.rmtree(self.paths(slot).directory, ignore_errors=True)
        survey.ended = [self.mark_killed(record, "the enclave process ended without "
                                                 "recording why")
                        if record.state != EXITED else record for record in survey.ended]
        survey.sort()
        for record in survey.ended[KEEP_EXITED:]:
            shutil.rmtree(self.paths(record.slot).directory, ignore_errors=True)
        return survey.live


@dataclass
class _Survey:
    """The enclaves directory as read at one moment: live records (oldest first), ended
    ones (newest first), and slots of dead directories without a readable record."""

    live: list[EnclaveRecord] = field(default_factory=list)
    ended: list[EnclaveRecord] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    def sort(self) -> None:
        self.live.sort(key=lambda r: (r.created, r.slot))
        self.ended.sort(key=lambda r: (r.ended or r.created), reverse=True)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(prefix=".record-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def make_private_dir(path: Path) -> None:
    """Create one enclave's directory, 0700 (EEXIST is an error: slots are unique)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise
    except OSError as error:
        raise NitroCliError(19, f"File: '{path}', failing operation: 'Create' "
                                f"({error.strerror or error}).") from None
