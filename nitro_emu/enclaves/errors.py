"""nitro-cli's error codes, as its enclave verbs report them.

nitro-cli prints `[ Exx ] <title> <detail>` on stderr, then a line pointing at AWS's
documentation of the code, and exits with the code's number (E26 exits 26). Scripts
written for nitro-cli test those statuses, so the lifecycle verbs keep them. The titles
are nitro-cli's names for the codes; the details and the `explain` texts are ours and say
what the code means under nitro-emu.
"""
from __future__ import annotations

from nitro_emu.errors import NitroEmuError

HELP_LINK = "https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#"
USAGE_EXIT_STATUS = 2    # what clap, nitro-cli's argument parser, exits with

# code -> (nitro-cli's title, what it means here)
CODES: dict[int, tuple[str, str]] = {
    0: ("Unspecified error.", "A catch-all for failures no other code describes."),
    1: ("Missing mandatory argument.",
        "A required option is missing, e.g. run-enclave without --memory, or a --config "
        "file that gives neither cpu_count nor cpu_ids."),
    2: ("Conflicting arguments.",
        "Two options that exclude each other were given together, such as --cpu-count and "
        "--cpu-ids (also inside a --config file)."),
    3: ("Invalid argument provided.",
        "An option's value has the wrong form or is out of range: a CID that is not a "
        "number or is reserved (0-3, 4294967295), memory that is not a size, a CPU id "
        "that is not a number; or a debugging option that cannot be served (--gdb on a "
        "port in use, a --trace-file that cannot be written)."),
    4: ("Socket pair creation failure.", "The CLI could not create a socket pair to talk "
                                         "to a new enclave process."),
    5: ("Process spawn failure.", "The CLI could not start the background process that "
                                  "runs the enclave."),
    6: ("Daemonize process failure.", "The enclave process could not detach itself from "
                                      "the CLI."),
    7: ("Read from disk failure.", "The enclaves' state directory could not be read; check "
                                   "that it exists and belongs to you."),
    8: ("Unusable connection error.", "A connection to an enclave process was closed or "
                                      "never usable."),
    9: ("Socket close error.", "Closing a connection to an enclave process failed."),
    10: ("Socket connect set timeout error.", "A connection timeout could not be set."),
    11: ("Socket error.", "No enclave process could be reached: most often the enclave ID "
                          "names no running enclave."),
    12: ("Epoll error.", "Waiting for events on enclave connections failed."),
    13: ("Inotify error.", "Watching a socket for changes failed."),
    14: ("Invalid command.", "An enclave process received a request it does not know."),
    15: ("Lock acquire failure.", "The lock guarding the enclaves' state could not be "
                                  "taken."),
    16: ("Thread join failure.", "A worker thread could not be joined."),
    17: ("Serde error.", "A JSON document (a --config file, an enclave's record or reply) "
                         "is malformed or has a field of the wrong type."),
    18: ("File permissions error.", "A file's permissions could not be set."),
    19: ("File operation failure.", "A file could not be opened, read or written: most "
                                    "often the EIF or --config file does not exist."),
    20: ("Invalid CPU configuration.", "--cpu-ids names the same CPU more than once."),
    21: ("No such CPU available in the pool.", "A requested CPU is not in the enclave CPU "
                                               "pool."),
    22: ("Insufficient CPUs available in the pool.", "More CPUs were requested than the "
                                                      "pool holds."),
    23: ("Malformed CPU ID error.", "The host's list of CPUs could not be parsed."),
    24: ("CPU error.", "A CPU range in the host's list is invalid."),
    25: ("No such hugepage flag error.", "An unknown huge page size was requested."),
    26: ("Insufficient memory requested.",
         "--memory is below what the enclave needs: at least four times the EIF's size, "
         "as on Nitro, and at least the emulator's minimum."),
    27: ("Insufficient memory available.",
         "--memory is more than can be given to an enclave (nitro-emu's limit, as the "
         "allocator's pool on a Nitro host)."),
    28: ("Invalid enclave descriptor.", "The enclave could not be created."),
    29: ("Ioctl failure.", "Starting the enclave was refused: under nitro-emu, the "
                           "requested --enclave-cid is already used by a running enclave."),
    30: ("Ioctl image get load info failure.", "The image's load address could not be "
                                               "found."),
    31: ("Ioctl set memory region failure.", "Guest memory could not be set up."),
    32: ("Ioctl add vCPU failure.", "A vCPU could not be added."),
    33: ("Ioctl start enclave failure.", "The enclave could not be started."),
    34: ("Memory overflow.", "The image does not fit the enclave's memory."),
    35: ("EIF file parsing error.", "The EIF is not a valid enclave image file (bad magic, "
                                    "truncated, inconsistent section table, ...)."),
    36: ("Enclave boot failure.",
         "The enclave did not send its boot heartbeat: its kernel panicked or faulted, its "
         "init died, or it took longer than the boot timeout "
         "(NITRO_EMU_BOOT_TIMEOUT seconds, default 300)."),
    37: ("Enclave event wait error.", "Waiting for the enclave's events failed."),
    38: ("Enclave process command not executed error.", "An enclave process could not "
                                                         "carry out a request."),
    39: ("Enclave process connection failure.", "An enclave process did not answer a "
                                                "request in time."),
    40: ("Socket path not found.", "No socket path could be derived from an enclave ID."),
    41: ("Enclave process send reply failure.", "An enclave process could not send its "
                                                "reply."),
    42: ("Enclave mmap error.", "Guest memory could not be allocated."),
    43: ("Enclave munmap error.", "Guest memory could not be released."),
    44: ("Enclave console connection failure.",
         "The console is only available for enclaves started with --debug-mode (or "
         "--attach-console)."),
    45: ("Enclave console read error.", "Reading the enclave's console failed."),
    46: ("Enclave console write output error.", "The console output could not be written "
                                                "to standard output."),
    47: ("Integer parsing error.", "An enclave CID could not be parsed."),
    48: ("EIF building error.", "The enclave image could not be built."),
    49: ("Docker image build error.", "The container image could not be built."),
    50: ("Docker image pull error.", "The container image could not be pulled."),
    51: ("Artifacts path environment variable not set.", "NITRO_CLI_ARTIFACTS and HOME are "
                                                         "both unset."),
    52: ("Blobs path environment variable not set.", "NITRO_CLI_BLOBS is not set."),
    53: ("Clock skew error.", "The system clock went backwards."),
    54: ("Signal masking error.", "Signals could not be masked."),
    55: ("Signal unmasking error.", "Signals could not be unmasked."),
    56: ("Logger error.", "Logging could not be set up."),
    57: ("Hasher error.", "A measurement could not be computed, e.g. the signing "
                          "certificate given to pcr is not PEM."),
    58: ("Naming error.", "No running enclave has the given --enclave-name (or more than "
                          "one has)."),
    59: ("EIF signature checker error.", "The EIF's signature does not verify against its "
                                         "PCR0."),
    60: ("Signing error.", "The EIF could not be signed: the certificate or key is missing, "
                           "unreadable, not EC, or they do not match."),
}


def code_name(code: int) -> str:
    """`E07` for 7."""
    return f"E{code:02d}"


def parse_code(text: str) -> int | None:
    """The number of a code written `E26` (or `e26`, `26`); None if there is no such code."""
    digits = text.strip().upper().removeprefix("E")
    if not digits.isdigit() or len(digits) > 3:
        return None
    code = int(digits)
    return code if code in CODES else None


class NitroCliError(NitroEmuError):
    """An error reported as nitro-cli reports it: `[ Exx ] title detail`, exit status xx."""

    def __init__(self, code: int, detail: str = "") -> None:
        if code not in CODES:
            raise ValueError(f"unknown nitro-cli error code {code}")
        self.code = code
        self.detail = detail
        title = CODES[code][0]
        super().__init__(f"[ {code_name(code)} ] {title}{' ' + detail if detail else ''}")

    @property
    def exit_status(self) -> int:
        return self.code

    def render(self) -> str:
        """The text for stderr: the error line, then where nitro-cli's documentation of
        the code lives."""
        return f"{self}\nFor more details, please visit {HELP_LINK}{code_name(self.code)}"


class NitroCliUsageError(NitroEmuError):
    """A command line the argument parser refuses (unknown option, missing or conflicting
    flags): exit status 2, as clap does for nitro-cli."""

    exit_status = USAGE_EXIT_STATUS

    def render(self) -> str:
        return f"error: {self}\nFor more information, try '--help'."
