"""What `run-enclave` was asked for: nitro-cli's `RunEnclavesArgs`, from the command line's
strings or from a `--config` JSON file, checked as nitro-cli checks them.

Values are parsed the way nitro-cli parses them (`--memory 2G`, `--enclave-cid 0` meaning
"pick one"), and a bad value is the `NitroCliError` nitro-cli reports (E01, E02, E03,
E17, E19, E20). Beyond nitro-cli, a spec carries the parent side of the enclave's vsock
(`forward`, `publish`, `vsock_uds`), the parent's identity for PCR3/PCR4, and the
debugging tools of the foreground verb (`gdb`, `gdb_wait`, `trace`, `trace_file`,
`system_map`, `post_mortem`; nitro_emu.debug).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from devices.vsock import check_guest_cid
from devices.vsock.packet import CID_ANY, CID_PARENT
from eif.errors import FileError
from eif.files import InputKind, open_input
from nitro_emu.debug.config import DebugConfig, DebugOptionsError, parse_gdb_address
from nitro_emu.enclaves.errors import NitroCliError

# The widths of nitro-cli's integer arguments (u32, u64), not CIDs.
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
CONFIG_FILE_LIMIT = 1 << 20
CONFIG_FILE = InputKind("config file")     # its size is checked as nitro-cli's E17
_UNSIGNED = re.compile(r"\+?[0-9]+")
_MEMORY_UNITS = {"": 1, "M": 1, "m": 1, "G": 1024, "g": 1024, "T": 1 << 20, "t": 1 << 20}


@dataclass
class RunSpec:
    """One `run-enclave` request. `enclave_cid` None (or 0) lets nitro-emu choose one;
    `cpu_count` and `cpu_ids` exclude each other. A bad value is a NitroCliError; a
    debugging option without the one it needs is DebugConfig's DebugOptionsError, which
    the caller words (clap's usage error for flags, E01 for a config file)."""

    eif_path: str
    memory_mib: int
    cpu_count: int | None = None
    cpu_ids: list[int] | None = None
    enclave_cid: int | None = None
    debug_mode: bool = False
    attach_console: bool = False
    enclave_name: str | None = None
    forward: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    vsock_uds: str | None = None
    parent_role: str | None = None
    parent_id: str | None = None
    gdb: tuple[str, int] | None = None
    gdb_wait: bool = False
    trace: frozenset[str] = frozenset()
    trace_file: str | None = None
    system_map: str | None = None
    post_mortem: str | None = None

    def __post_init__(self) -> None:
        # --attach-console implies debug mode, as in nitro-cli.
        self.debug_mode = bool(self.debug_mode or self.attach_console)
        if self.cpu_count is None and self.cpu_ids is None:
            raise NitroCliError(1, "Give --cpu-count or --cpu-ids (cpu_count or cpu_ids "
                                   "in a --config file).")
        if self.cpu_count is not None and self.cpu_ids is not None:
            raise NitroCliError(2, "`cpu-count` and `cpu-ids` cannot be used together.")
        if self.cpu_count is not None and self.cpu_count < 1:
            raise NitroCliError(3, f"`cpu-count` must be at least 1, not {self.cpu_count}.")
        if self.cpu_ids is not None:
            check_cpu_ids(self.cpu_ids)
        if self.enclave_cid == 0:
            self.enclave_cid = None
        if self.enclave_cid is not None:
            check_cid(self.enclave_cid)
        DebugConfig(gdb=self.gdb, gdb_wait=self.gdb_wait, trace=self.trace,
                    trace_file=self.trace_file)

    @property
    def default_name(self) -> str:
        """The EIF's file name without `.eif`, as nitro-cli names unnamed enclaves."""
        base = self.eif_path.split("/")[-1]
        return base.removesuffix(".eif") if base.endswith(".eif") else base


# -- values from the command line ------------------------------------------------------

def parse_unsigned(text: str, what: str, maximum: int = U64_MAX) -> int:
    """A decimal number as Rust's `str::parse::<u64>` reads it; E03 otherwise."""
    if not _UNSIGNED.fullmatch(text) or int(text) > maximum:
        raise NitroCliError(3, f"The parameter `{what}` is not a valid integer (`{text}`).")
    return int(text)


def parse_memory(text: str) -> int:
    """`--memory`: MiB, or a number ending in M, G or T (nitro-cli's units)."""
    digits = re.match(r"[0-9]*", text).group()
    unit = text[len(digits):]
    if not digits:
        raise NitroCliError(3, f"`memory` argument does not contain a number (`{text}`).")
    if unit not in _MEMORY_UNITS:
        raise NitroCliError(3, f"`memory` argument does not contain a valid size indicator "
                               f"(`{text}`; use M, G or T).")
    value = int(digits) * _MEMORY_UNITS[unit]
    if value > U64_MAX:
        raise NitroCliError(3, f"`memory` argument is too large (`{text}`).")
    return value


def parse_cid(text: str) -> int | None:
    """`--enclave-cid`: None for 0 (nitro-cli then picks one), else a usable CID."""
    value = parse_unsigned(text, "enclave-cid")
    return None if value == 0 else check_cid(value)


def check_cid(cid: int) -> int:
    """A CID an enclave may have (the machine's own check), refused in nitro-cli's words:
    0-2 and 4294967295 are well-known, 3 is the parent's, more needs 64 bits."""
    try:
        return check_guest_cid(cid)
    except ValueError:
        pass
    if cid <= 2 or cid == CID_ANY:
        raise NitroCliError(3, f"CID {cid} is a well-known CID, not to be used for enclaves.")
    if cid == CID_PARENT:
        raise NitroCliError(3, f"CID {cid} is the CID of the parent VM, not to be used for "
                               "enclaves.")
    raise NitroCliError(3, f"CID {cid} is higher than the maximum supported (u32 max) "
                           "for a vsock device.")


def check_cpu_ids(cpu_ids: list[int]) -> None:
    """E20 when a CPU is named twice (the rest is free: there is no CPU pool here)."""
    seen, repeated = set(), []
    for cpu in cpu_ids:
        if cpu in seen and cpu not in repeated:
            repeated.append(cpu)
        seen.add(cpu)
    if repeated:
        raise NitroCliError(20, f"`cpu-ids` contains CPU(s) {', '.join(map(str, repeated))} "
                                "more than once.")


# -- a --config file -----------------------------------------------------------------------

_CONFIG_TYPES = {
    "eif_path": str, "enclave_cid": int, "memory_mib": int, "cpu_ids": list,
    "debug_mode": bool, "attach_console": bool, "cpu_count": int, "enclave_name": str,
    "forward": list, "publish": list, "vsock_uds": str, "parent_role": str,
    "parent_id": str, "gdb": str, "gdb_wait": bool, "trace": str, "trace_file": str,
    "system_map": str, "post_mortem": str,
}
_CONFIG_REQUIRED = ("eif_path", "memory_mib")
_CONFIG_LIMITS = {"enclave_cid": U64_MAX, "memory_mib": U64_MAX, "cpu_count": U32_MAX}


def read_config(path: str) -> RunSpec:
    """The RunSpec in a `--config` JSON file (nitro-cli's keys plus forward, publish,
    vsock_uds, parent_role, parent_id and the debugging keys gdb ("[HOST:]PORT"),
    gdb_wait, trace ("syscalls,io"), trace_file, system_map, post_mortem; unknown keys
    are ignored, as serde does)."""
    try:  # a regular file only: a FIFO or a device is refused, never waited on
        with open_input(path, CONFIG_FILE) as opened:
            data = opened.file.read(CONFIG_FILE_LIMIT + 1)
    except (FileError, OSError) as error:
        raise NitroCliError(19, f"File: '{path}', failing operation: 'Open' "
                                f"({getattr(error, 'strerror', None) or error}).") from None
    if len(data) > CONFIG_FILE_LIMIT:
        raise NitroCliError(17, f"Invalid JSON format for config file {path}: larger than "
                                f"{CONFIG_FILE_LIMIT} bytes.")
    from eif import jsonfmt
    try:
        document = jsonfmt.loads(data)
    except ValueError as error:
        raise NitroCliError(17, f"Invalid JSON format for config file {path}: "
                                f"{error}.") from None
    return spec_from_config(document, path)


def spec_from_config(document: object, where: str = "config") -> RunSpec:
    """A RunSpec from a parsed config object (E17 for a wrong type, E01 for a missing key)."""
    def bad(message: str) -> NitroCliError:
        return NitroCliError(17, f"Invalid JSON format for config file {where}: {message}.")

    if not isinstance(document, dict):
        raise bad("expected a JSON object")
    values: dict[str, object] = {}
    for key, kind in _CONFIG_TYPES.items():
        value = document.get(key)
        if value is None:
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)
                            or not 0 <= value <= _CONFIG_LIMITS[key]):
            raise bad(f"`{key}` must be an unsigned integer, not {value!r:.40}")
        if not isinstance(value, kind):
            raise bad(f"`{key}` must be a {kind.__name__}, not {value!r:.40}")
        values[key] = value
    for key in _CONFIG_REQUIRED:
        if key not in values:
            raise bad(f"missing field `{key}`")
    for key, kind in (("cpu_ids", int), ("forward", str), ("publish", str)):
        items = values.get(key, [])
        for item in items:
            if kind is int and (isinstance(item, bool) or not isinstance(item, int)
                                or not 0 <= item <= U32_MAX):
                raise bad(f"`{key}` must list unsigned 32-bit integers, not {item!r:.40}")
            if kind is str and not isinstance(item, str):
                raise bad(f"`{key}` must list strings, not {item!r:.40}")
    if "gdb" in values:
        values["gdb"] = parse_gdb(values["gdb"])
    if "trace" in values:
        values["trace"] = parse_trace(values["trace"])
    try:
        return RunSpec(**values)
    except DebugOptionsError as error:
        raise NitroCliError(1, f"`{error.option}` needs `{error.required}` "
                               f"({error.metavar}).") from None


def parse_gdb(text: str) -> tuple[str, int]:
    """`gdb`'s value, [HOST:]PORT; E03 otherwise."""
    try:
        return parse_gdb_address(text)
    except ValueError as error:
        raise NitroCliError(3, f"`gdb`: {error}.") from None


def parse_trace(text: str) -> frozenset[str]:
    """`trace`'s value, events separated by commas (or `all`); E03 otherwise."""
    from nitro_emu.debug.trace import parse_events    # capstone: only for a trace
    try:
        return parse_events(text)
    except ValueError as error:
        raise NitroCliError(3, f"`trace`: {error}.") from None

