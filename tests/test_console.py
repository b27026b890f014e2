"""The console log: forwarding, the bounded transcript, and spotting a panic line even
when it arrives in pieces or when no transcript is kept."""
from __future__ import annotations

import io

from nitro_emu.console import ConsoleLog


def test_output_is_forwarded_and_the_transcript_halves_at_its_limit() -> None:
    sink = io.BytesIO()
    console = ConsoleLog(sink, transcript_limit=1000)
    for i in range(30):
        console.write(b"%02d" % i + b"x" * 98)
    assert sink.getvalue() == b"".join(b"%02d" % i + b"x" * 98 for i in range(30))
    transcript = console.transcript()
    assert len(transcript) <= 1000 and transcript.endswith(b"29" + b"x" * 98)


def test_without_a_transcript_a_split_panic_line_is_still_spotted() -> None:
    seen = []
    console = ConsoleLog(lambda data: None, on_panic=seen.append, transcript_limit=0)
    for piece in (b"[ 1.0] Kernel pa", b"nic - not syncing: Attempted to kill init!",
                  b" exitcode=0x00000000\n[ 1.1] more\n"):
        console.write(piece)
    assert console.transcript() == b""
    assert seen == ["Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000"]
    assert console.panic_line == seen[0]
