"""Finding, describing and stopping the user's running enclaves (describe-enclaves,
terminate-enclave, console): each running enclave is asked through its control socket,
as nitro-cli asks each enclave process through its own socket."""
from __future__ import annotations

import json
import os
import signal
import time

from devices.vsock.unix_address import remove_socket
from eif.jsonfmt import Fields
from nitro_emu.enclaves import json_output
from nitro_emu.enclaves.allocate import slot_of
from nitro_emu.enclaves.control import ControlError, request
from nitro_emu.enclaves.errors import NitroCliError
from nitro_emu.enclaves.store import EXITED, EnclaveRecord, EnclaveStore

REQUEST_TIMEOUT = 15.0     # a busy host with many enclaves answers slowly
STOP_GRACE = 15.0          # seconds an enclave gets to stop before it is killed
ENDING_GRACE = 2.0         # an enclave that stopped answering may be just ending


def wait_gone(store: EnclaveStore, slot: str, timeout: float) -> bool:
    """Wait until the enclave process of `slot` has exited; False on timeout."""
    deadline = time.monotonic() + timeout
    while store.is_alive(slot):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stop_process(store: EnclaveStore, slot: str, pid: int | None,
                 grace: float = STOP_GRACE) -> bool:
    """SIGTERM the enclave process (SIGKILL after `grace` seconds); True once it is gone.
    Signals are only sent while it still holds its lock, so a reused PID is never hit."""
    for number, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not store.is_alive(slot):
            return True
        if pid is not None:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass
        if wait_gone(store, slot, wait):
            return True
    return False


def _wait_exited(pid: int | None, timeout: float = 2.0) -> None:
    """After the process let go of its lock, wait the moment until it has exited (a
    zombie awaiting its parent, init, counts as exited), so it is gone when we return."""
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline and process_exists(pid):
        time.sleep(0.01)


def process_exists(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (zombies have)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


# -- finding an enclave ---------------------------------------------------------------------

def find_running(store: EnclaveStore, enclave_id: str | None = None,
                 name: str | None = None) -> EnclaveRecord:
    """The running enclave with this ID or name: E11 for an unknown ID (nitro-cli cannot
    reach its socket), E58 for an unknown or ambiguous name."""
    record = find(store.live(), enclave_id, name)
    if record is None:
        raise not_found(enclave_id, name)
    return record


def find(records: list[EnclaveRecord], enclave_id: str | None,
         name: str | None) -> EnclaveRecord | None:
    """The record with this ID (by its slot, as nitro-cli finds the socket) or name."""
    if enclave_id is not None:
        slot = slot_of(enclave_id)
        return next((r for r in records if r.slot == slot), None)
    matches = [r for r in records if r.name == name]
    if len(matches) > 1:
        raise NitroCliError(58, f"More than one enclave is named '{name}'.")
    return matches[0] if matches else None


def find_with_log(store: EnclaveStore, enclave_id: str | None,
                  name: str | None) -> EnclaveRecord:
    """The enclave whose console to show: a running one, else the most recent one that
    has exited with this ID or name (its log is kept). Exited records come back with
    state EXITED even if the process died without saying so."""
    record = find(store.live(), enclave_id, name)
    if record is not None:
        return record
    for record in store.ended():          # newest first
        if (record.slot == slot_of(enclave_id) if enclave_id is not None
                else record.name == name):
            record.state = EXITED
            return record
    raise not_found(enclave_id, name)


def not_found(enclave_id: str | None, name: str | None) -> NitroCliError:
    if enclave_id is not None:
        return NitroCliError(11, f"No enclave with ID '{enclave_id}' is running.")
    return NitroCliError(58, f"No enclave named '{name}' is running.")


# -- describe ---------------------------------------------------------------------------------

def ask(store: EnclaveStore, record: EnclaveRecord, op: str, **arguments: object
        ) -> dict | None:
    """Send a request to an enclave process: its answer, or None if the enclave has
    ended. An enclave that is still starting (its control socket not bound yet) is waited
    for; ControlError if it is alive but does not answer."""
    control = store.paths(record.slot).control
    deadline = time.monotonic() + REQUEST_TIMEOUT
    while True:
        try:
            return request(str(control), op, REQUEST_TIMEOUT, **arguments)
        except ControlError:
            if not control.exists() and store.is_alive(record.slot) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)                 # starting: the socket comes soon
                continue
            if wait_gone(store, record.slot, ENDING_GRACE):     # it was ending
                return None
            raise


def describe(store: EnclaveStore, record: EnclaveRecord, metadata: bool) -> Fields | None:
    """The describe-enclaves element the enclave gives for itself (its NSM's PCRs), or
    None if it ended meanwhile. ControlError if it is alive but does not answer."""
    answer = ask(store, record, "describe", metadata=metadata)
    if answer is None:
        return None
    try:
        return json.loads(answer["entry"], object_pairs_hook=Fields)
    except (KeyError, TypeError, ValueError):
        raise ControlError(f"enclave {record.enclave_id} gave a malformed description") \
            from None


def describe_all(store: EnclaveStore, metadata: bool) -> tuple[list[Fields], int]:
    """(descriptions of the running enclaves, oldest first; how many did not answer)."""
    entries, failed = [], 0
    for record in store.live():
        try:
            entry = describe(store, record, metadata)
        except ControlError:
            failed += 1
            continue
        if entry is not None:
            entries.append(entry)
    return entries, failed


def new_post_mortems(store: EnclaveStore) -> list[EnclaveRecord]:
    """Enclaves that died (a post-mortem report was written) and have not been pointed
    out yet, oldest first; each is pointed out once, as a shell reports a finished job."""
    records = [r for r in reversed(store.ended())
               if r.post_mortem_report and not r.post_mortem_noticed]
    for record in records:
        store.update(record.slot, post_mortem_noticed=True)
    return records


# -- terminate --------------------------------------------------------------------------------

def terminate(store: EnclaveStore, record: EnclaveRecord) -> Fields:
    """Stop one enclave and wait until its process is gone (its sockets closed, its CID
    free); nitro-cli's EnclaveTerminateInfo. Asks politely through the control socket,
    then signals."""
    try:
        gone = ask(store, record, "terminate") is None or \
            wait_gone(store, record.slot, STOP_GRACE)
    except ControlError:
        gone = False
    pid = getattr(store.read(record.slot), "pid", None) or record.pid
    if not gone and not stop_process(store, record.slot, pid):
        raise NitroCliError(38, f"Enclave {record.enclave_id} (process {record.pid}) did "
                                "not stop.")
    _wait_exited(pid)
    current = store.read(record.slot)
    if current is not None and current.state != EXITED:     # it was killed: say so
        store.mark_killed(current, "terminated by signal")
    return json_output.terminate_info(record)
