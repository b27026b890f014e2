"""The kernel command line as the boot and decompressor code reads it
(arch/x86/boot/cmdline.c): words split at any byte up to the space, no quoting."""
from __future__ import annotations

import re

_WORD = re.compile(r"[^\x00-\x20]+")


def find_option(cmdline: str, option: str) -> str | None:
    """The argument of the last `option=argument` word (__cmdline_find_option), or None."""
    value = None
    prefix = option + "="
    for word in _WORD.findall(cmdline):
        if word.startswith(prefix):
            value = word[len(prefix):]
    return value


def find_option_bool(cmdline: str, option: str) -> int:
    """The 1-based position of the first word that is exactly `option`, or 0
    (__cmdline_find_option_bool)."""
    for match in _WORD.finditer(cmdline):
        if match.group() == option:
            return match.start() + 1
    return 0
