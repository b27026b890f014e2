"""The JSON objects of nitro-cli's enclave verbs, with its key order (json_output.rs):
`EnclaveRunInfo`, `EnclaveDescribeInfo` and `EnclaveTerminateInfo`, as `jsonfmt.Fields`
printed by `jsonfmt.dumps_pretty` (serde_json's pretty form).

They state what the emulated enclave really has: one vCPU (`NumberOfCPUs` 1, `CPUIDs`
[0]) whatever was requested, and in `Measurements` the PCRs its NSM reports.

One extension: an enclave started with `--gdb` is described with a last key, `GdbStub`
("HOST:PORT", where its stub listens). It comes after all of nitro-cli's keys, so their
order is untouched, and only on enclaves nitro-cli could not have started.
"""
from __future__ import annotations

from eif.jsonfmt import Fields
from nitro_emu.enclaves.store import EnclaveRecord

GUEST_CPU_IDS = [0]       # the machine has one vCPU


def run_info(record: EnclaveRecord, pid: int) -> Fields:
    """What `run-enclave` prints once the enclave has booted."""
    return Fields([
        ("EnclaveName", record.name),
        ("EnclaveID", record.enclave_id),
        ("ProcessID", pid),
        ("EnclaveCID", record.cid),
        ("NumberOfCPUs", len(GUEST_CPU_IDS)),
        ("CPUIDs", list(GUEST_CPU_IDS)),
        ("MemoryMiB", record.memory_mib),
    ])


def describe_info(record: EnclaveRecord, pid: int, state: str, measurements: Fields,
                  metadata: Fields | None = None, gdb_stub: str | None = None) -> Fields:
    """One element of `describe-enclaves`; `metadata` is the ImageName, ImageVersion and
    Metadata fields (`--metadata`), `gdb_stub` the GDB stub's address."""
    info = run_info(record, pid)
    info.extend([
        ("State", state),
        ("Flags", "DEBUG_MODE" if record.debug_mode else "NONE"),
        ("Measurements", measurements),
    ])
    if metadata:
        info.extend(metadata)
    if gdb_stub is not None:
        info.append(("GdbStub", gdb_stub))
    return info


def terminate_info(record: EnclaveRecord, terminated: bool = True) -> Fields:
    """What `terminate-enclave` prints for one enclave."""
    return Fields([("EnclaveName", record.name), ("EnclaveID", record.enclave_id),
                   ("Terminated", terminated)])
