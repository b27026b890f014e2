"""System calls as strace shows them: `openat(AT_FDCWD, "/dev/nsm", O_RDWR)`.

The common calls have their arguments decoded (paths and written buffers read from guest
memory, bounded like strace's `-s 32`; open flags and modes by name); any other call shows
its six argument registers in hex. Guest memory is read through the page tables of the
process that made the call, at entry, so output buffers show their address only.
"""
from __future__ import annotations

from typing import Callable

from nitro_emu.debug.syscall_table import NAMES

STRING_LIMIT = 32
ARGV_LIMIT = 16
AT_FDCWD = -100

# Argument kinds: d int (32 bits, signed), l long (64 bits, signed), u size, x hex,
# s string, b buffer whose length is the next argument, v argv array, f open flags,
# o octal mode, a directory fd.
SIGNATURES: dict[str, str] = {
    "read": "dxu", "write": "dbu", "open": "sfo", "close": "d", "stat": "sx", "fstat": "dx",
    "lstat": "sx", "poll": "xud", "lseek": "dld", "mmap": "xuxxdx", "mprotect": "xux",
    "munmap": "xu", "brk": "x", "rt_sigaction": "dxxu", "rt_sigprocmask": "dxxu",
    "ioctl": "dxx", "pread64": "dxul", "pwrite64": "dbul", "readv": "dxd", "writev": "dxd",
    "access": "so", "pipe": "x", "pipe2": "xf", "select": "dxxxx", "sched_yield": "",
    "dup": "d", "dup2": "dd", "dup3": "ddf", "nanosleep": "xx", "getpid": "",
    "socket": "ddd", "connect": "dxu", "accept": "dxx", "accept4": "dxxf", "sendto": "dbuxxu",
    "recvfrom": "dxuxxx", "shutdown": "dd", "bind": "dxu", "listen": "dd",
    "setsockopt": "dddxu", "getsockopt": "dddxx", "clone": "xxxxx", "fork": "", "vfork": "",
    "execve": "svx", "exit": "d", "wait4": "dxxx", "kill": "dd", "uname": "x",
    "fcntl": "ddx", "fsync": "d", "getdents64": "dxu", "getcwd": "xu", "chdir": "s",
    "fchdir": "d", "mkdir": "so", "rmdir": "s", "unlink": "s", "symlink": "ss",
    "readlink": "sxu", "chmod": "so", "umask": "o", "getuid": "", "getgid": "",
    "geteuid": "", "getegid": "", "setsid": "", "getppid": "", "gettid": "",
    "mount": "sssxx", "umount2": "sx", "chroot": "s", "reboot": "xxxx", "sethostname": "su",
    "arch_prctl": "xx", "set_tid_address": "x", "exit_group": "d", "openat": "asfo",
    "newfstatat": "asxx", "mkdirat": "aso", "unlinkat": "asx", "readlinkat": "asxu",
    "faccessat": "aso", "faccessat2": "asox", "prlimit64": "ddxx", "getrandom": "xux",
    "statx": "asxxx", "clock_gettime": "dx", "clock_nanosleep": "dxxx",
    "set_robust_list": "xu", "rseq": "xuxx", "execveat": "asvxx", "init_module": "xus",
    "finit_module": "dsx", "ppoll": "xuxxu", "pselect6": "dxxxxx", "epoll_wait": "dxdd",
    "sendmsg": "dxx", "recvmsg": "dxx", "setpgid": "dd", "getpgid": "d", "chown": "sdd",
    "truncate": "sl", "ftruncate": "dl", "rename": "ss", "renameat2": "asasx",
    "sysinfo": "x", "sync": "", "times": "x", "futex": "xdxxxd",
}

_ACCESS_MODES = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")
_OPEN_FLAGS = ((0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"),
               (0o1000, "O_TRUNC"), (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"),
               (0o10000, "O_DSYNC"), (0o20000, "O_ASYNC"), (0o40000, "O_DIRECT"),
               (0o100000, "O_LARGEFILE"), (0o200000, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"),
               (0o1000000, "O_NOATIME"), (0o2000000, "O_CLOEXEC"), (0o4000000, "O_SYNC"),
               (0o10000000, "O_PATH"))
_OPEN_WITH_MODE = 0o100 | 0o20000000  # O_CREAT, O_TMPFILE
_ESCAPES = {0x00: "\\0", 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}

ReadMemory = Callable[[int, int], bytes]


def name_of(number: int) -> str:
    return NAMES.get(number, f"syscall_{number}")


def format_call(number: int, arguments: tuple[int, ...], read: ReadMemory) -> str:
    """`name(arg, ...)` for the call with these argument registers (rdi, rsi, rdx, r10,
    r8, r9); `read(address, length)` reads guest memory (fewer bytes when unmapped)."""
    name = name_of(number)
    kinds = SIGNATURES.get(name)
    if kinds is None:
        return f"{name}({', '.join(hex(value) for value in arguments)})"
    if name in ("open", "openat") and not arguments[kinds.index("f")] & _OPEN_WITH_MODE:
        kinds = kinds[:-1]  # the mode means nothing without O_CREAT or O_TMPFILE
    shown = [_argument(kind, index, arguments, read) for index, kind in enumerate(kinds)]
    return f"{name}({', '.join(shown)})"


def _argument(kind: str, index: int, arguments: tuple[int, ...], read: ReadMemory) -> str:
    value = arguments[index]
    if kind == "l":
        return str(value - (1 << 64) if value >> 63 else value)
    if kind in "da":  # C int: the low 32 bits
        number = value & 0xFFFFFFFF
        number -= (1 << 32) if number >> 31 else 0
        return "AT_FDCWD" if kind == "a" and number == AT_FDCWD else str(number)
    if kind == "u":
        return str(value)
    if kind == "s":
        return c_string(read, value)
    if kind == "b":
        length = arguments[index + 1] if index + 1 < len(arguments) else 0
        return quoted_buffer(read, value, length)
    if kind == "v":
        return argv_array(read, value)
    if kind == "f":
        return open_flags(value)
    if kind == "o":
        return f"0{value & 0o7777:o}"
    return hex(value)


def quote(data: bytes, truncated: bool) -> str:
    """A C-like string literal of `data`, with `...` after it when it was cut short."""
    text = "".join(_ESCAPES.get(byte) or (chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}")
                   for byte in data)
    return f'"{text}"' + ("..." if truncated else "")


def c_string(read: ReadMemory, address: int) -> str:
    if address == 0:
        return "NULL"
    data = read(address, STRING_LIMIT + 1)
    end = data.find(b"\0")
    if end < 0 and len(data) <= STRING_LIMIT:
        return hex(address)  # runs into an unmapped page before its end
    if end >= 0:
        return quote(data[:end], False)
    return quote(data[:STRING_LIMIT], True)


def quoted_buffer(read: ReadMemory, address: int, length: int) -> str:
    shown = min(length, STRING_LIMIT)
    data = read(address, shown)
    if len(data) < shown:
        return hex(address)
    return quote(data, length > STRING_LIMIT)


def argv_array(read: ReadMemory, address: int) -> str:
    if address == 0:
        return "NULL"
    items = []
    for slot in range(ARGV_LIMIT):
        raw = read(address + 8 * slot, 8)
        if len(raw) < 8:
            return hex(address)
        pointer = int.from_bytes(raw, "little")
        if pointer == 0:
            return "[" + ", ".join(items) + "]"
        items.append(c_string(read, pointer))
    return "[" + ", ".join(items) + ", ...]"


def open_flags(value: int) -> str:
    names = [_ACCESS_MODES[value & 3]]
    rest = value & ~3
    for bit, name in _OPEN_FLAGS:
        if rest & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names)
