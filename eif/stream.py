"""One pass over the bytes of an EIF: CRC and the PCR0/PCR1/PCR2 hashes together.

PCR1's stream (kernel, cmdline, first ramdisk) is a prefix of PCR0's in a well-formed
file, so one SHA-384 is fed until the second ramdisk starts and then `.copy()`-ed into
PCR1; from there ramdisk bytes feed PCR0 and PCR2, which are different streams over the
same bytes. The hashes and the CRC run on worker threads ("lanes"), since hashlib and
zlib release the GIL on large buffers: each chunk is read once and hashed in parallel,
in a bounded pool of chunk buffers. Small inputs are hashed inline.
"""
from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from typing import Callable

from eif.layout import SectionType
from eif.pcr import Measurements, pcr_from_digest

CHUNK_SIZE = 1 << 20
POOL_BUFFERS = 8
THREAD_THRESHOLD = 8 << 20  # below this many bytes, hash on the calling thread

_CRC, _MAIN, _APP = 0, 1, 2  # lanes: CRC; PCR0 (+PCR1 after the fork); PCR2


class Chunk:
    """A reusable buffer; released back to its pool when every lane is done with it."""

    __slots__ = ("array", "view", "_pool", "_pending", "_lock")

    def __init__(self, pool: "ChunkPool", size: int) -> None:
        self.array = bytearray(size)
        self.view = memoryview(self.array)
        self._pool = pool
        self._pending = 0
        self._lock = threading.Lock()

    def hold(self, users: int) -> None:
        self._pending = users

    def release(self) -> None:
        with self._lock:
            self._pending -= 1
            done = self._pending == 0
        if done:
            self._pool.put_back(self)


class ChunkPool:
    """A fixed number of chunk buffers: bounds memory whatever the file size."""

    def __init__(self, count: int = POOL_BUFFERS, size: int = CHUNK_SIZE) -> None:
        self._free: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(Chunk(self, size))

    def take(self) -> Chunk:
        return self._free.get()

    def put_back(self, chunk: Chunk) -> None:
        self._free.put(chunk)


class _Lane(threading.Thread):
    """Runs submitted (function, data, chunk) jobs in order."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            function, data, chunk = job
            try:
                if self.error is None:
                    function(data)
            except BaseException as error:  # reported by Measurer.finish
                self.error = error
            finally:
                if chunk is not None:
                    chunk.release()


class Measurer:
    """Routes section bytes to the CRC and the PCR hashers, in file order.

    Call `header(bytes)` for bytes that only the CRC covers, `begin(section_type)` at the
    start of each section's data and `data(view, chunk)` for its bytes, then `finish()`.
    `chunk` (or None for a bytes object the caller keeps alive) is released once hashed.
    """

    def __init__(self, crc_start: int = 0, threaded: bool = False) -> None:
        self.crc = crc_start
        self._main = hashlib.sha384()   # PCR0, and PCR1 until the fork
        self._boot: hashlib._Hash | None = None  # PCR1 after the fork
        self._app = hashlib.sha384()    # PCR2
        self._ramdisks = 0
        self._type = SectionType.INVALID
        self._lanes: list[_Lane] | None = None
        if threaded:
            self._lanes = [_Lane(f"eif-{n}") for n in ("crc", "pcr0", "pcr2")]
            for lane in self._lanes:
                lane.start()

    def _crc_update(self, data: object) -> None:
        self.crc = zlib.crc32(data, self.crc)

    def _fork(self, _: object = None) -> None:
        self._boot = self._main.copy()

    def _boot_and_main(self, data: object) -> None:
        self._main.update(data)
        if self._boot is not None:
            self._boot.update(data)

    def _submit(self, jobs: list[tuple[int, Callable[[object], None]]], data: object,
                chunk: Chunk | None) -> None:
        if self._lanes is None:
            for _, function in jobs:
                function(data)
            if chunk is not None:
                chunk.hold(1)
                chunk.release()
            return
        if chunk is not None:
            chunk.hold(len(jobs))
        for lane, function in jobs:
            self._lanes[lane].jobs.put((function, data, chunk))

    def header(self, data: bytes) -> None:
        """Bytes covered by the CRC only (section headers)."""
        self._submit([(_CRC, self._crc_update)], data, None)

    def begin(self, section_type: int) -> None:
        """A new section's data follows."""
        self._type = section_type
        if section_type == SectionType.RAMDISK:
            self._ramdisks += 1
            if self._ramdisks == 2:  # PCR1's stream ends here: fork it off PCR0's
                self._submit([(_MAIN, self._fork)], None, None)

    def data(self, data: object, chunk: Chunk | None = None) -> None:
        """Bytes of the current section's data."""
        kind = self._type
        if kind in (SectionType.KERNEL, SectionType.CMDLINE):
            jobs = [(_CRC, self._crc_update), (_MAIN, self._boot_and_main)]
        elif kind == SectionType.RAMDISK:
            jobs = [(_CRC, self._crc_update), (_MAIN, self._main.update)]
            if self._ramdisks >= 2:
                jobs.append((_APP, self._app.update))
        else:
            jobs = [(_CRC, self._crc_update)]
        self._submit(jobs, data, chunk)

    def close(self) -> None:
        """Stop the lanes (waits for queued work); idempotent."""
        if self._lanes is not None:
            for lane in self._lanes:
                lane.jobs.put(None)
            for lane in self._lanes:
                lane.join()
            errors = [lane.error for lane in self._lanes if lane.error is not None]
            self._lanes = None
            if errors:
                raise errors[0]

    def finish(self) -> tuple[int, Measurements]:
        """(CRC, PCR0/1/2) of everything fed so far."""
        self.close()
        boot = self._boot if self._boot is not None else self._main
        return self.crc, Measurements(pcr_from_digest(self._main.digest()),
                                      pcr_from_digest(boot.digest()),
                                      pcr_from_digest(self._app.digest()))
