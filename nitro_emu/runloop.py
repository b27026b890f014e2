"""The run loop: CPU slices, timers on the virtual clock, interrupt delivery between
slices, host I/O, and idle skipping (docs/architecture.md §4)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from board.clock import VirtualClock
from nitro_emu.cpu.vcpu import Vcpu
from board.reactor import HostReactor
from nitro_emu.slice_timer import SliceTimer

# Longest slice without a deadline, so host I/O is polled even when the guest never idles.
MAX_SLICE_NS = 20_000_000
# A halted guest whose timers fire for this long without raising an interrupt it takes
# (everything masked) can never wake up.
MAX_SILENT_IDLE_NS = 600 * 1_000_000_000
# How far idle skipping may carry guest time ahead of the host's, in all. Enough for the
# waits of a boot (a few ms) and of short guest sleeps in tests; past it an idle guest
# waits in real time, so an enclave left idle costs no CPU and its clock stays honest
# (a `sleep 1` loop runs once a second, not hundreds of times).
MAX_IDLE_LEAD_NS = 5 * 1_000_000_000


@dataclass
class LoopStats:
    slices: int = 0
    halts: int = 0
    idle_rounds: int = 0    # passes of the idle wait: timers, host I/O, skips


class RunLoop:
    """Runs the vCPU until `finished()` says so."""

    def __init__(self, vcpu: Vcpu, pic, clock: VirtualClock, reactor: HostReactor,
                 between_slices: Callable[[], None], finished: Callable[[], bool],
                 idle_skip_allowed: Callable[[], bool]) -> None:
        self._vcpu = vcpu
        self._pic = pic
        self._clock = clock
        self._reactor = reactor
        self._between_slices = between_slices
        self._finished = finished
        self._idle_skip_allowed = idle_skip_allowed
        self.stats = LoopStats()
        self._timer = SliceTimer(vcpu.request_stop)

    def request_stop(self) -> None:
        """End the current slice soon (from a hook, a device or another thread)."""
        self._vcpu.request_stop()

    def close(self) -> None:
        self._timer.stop()

    def run(self, wall_deadline: float | None) -> str | None:
        """Run until finished (returns None), the wall-clock deadline passes ("timeout"),
        or the guest idles with nothing that could ever wake it ("no-progress")."""
        vcpu, pic, clock, reactor = self._vcpu, self._pic, self._clock, self._reactor
        stats = self.stats
        while not self._finished():
            clock.fire_due()
            reactor.poll(0)
            self._between_slices()
            if self._finished():
                return None
            if wall_deadline is not None and time.monotonic() >= wall_deadline:
                return "timeout"
            if pic.has_interrupt() and vcpu.can_take_interrupt():
                vcpu.inject_interrupt(pic.acknowledge())
                if vcpu.fault:
                    return None
            now = clock.now_ns()
            deadline = clock.next_deadline()
            slice_end = now + MAX_SLICE_NS if deadline is None else min(deadline, now + MAX_SLICE_NS)
            self._timer.arm(time.monotonic() + (slice_end - now) / 1e9)
            ended = vcpu.run_slice()
            self._timer.disarm()
            stats.slices += 1
            if ended == "fault" or self._finished():
                return None
            if ended == "stopped":
                continue
            stats.halts += 1
            if not vcpu.interrupts_enabled:
                return "halted"
            if self._idle(wall_deadline) == "no-progress":
                return "no-progress"
        return None

    def _idle(self, wall_deadline: float | None) -> str | None:
        """HLT with interrupts on: wait for the next timer, a device, or host I/O.

        While no host conversation is in progress (`idle_skip_allowed`), virtual time jumps
        straight to the next timer deadline, up to MAX_IDLE_LEAD_NS ahead of host time in
        all; otherwise the loop waits for host I/O in real time until the deadline comes. A guest with nothing that could ever wake it (no
        timer, no host I/O, or timers firing for ten minutes with every interrupt masked)
        makes no progress."""
        clock, reactor, pic = self._clock, self._reactor, self._pic
        idle_since = clock.now_ns()
        while not pic.has_interrupt() and not self._finished():
            self.stats.idle_rounds += 1
            clock.fire_due()
            if pic.has_interrupt():
                return None
            if wall_deadline is not None and time.monotonic() >= wall_deadline:
                return None
            if reactor.poll(0):
                self._between_slices()
                continue
            deadline = clock.next_deadline()
            silent_too_long = deadline is not None and deadline - idle_since > MAX_SILENT_IDLE_NS
            if reactor.is_empty() and (deadline is None or silent_too_long):
                return "no-progress"
            lead_left = MAX_IDLE_LEAD_NS - clock.skipped_ns
            if self._idle_skip_allowed() and deadline is not None and not silent_too_long \
                    and lead_left > 0:
                skipped = clock.skip(min(deadline - clock.now_ns(), lead_left))
                self._vcpu.advance_tsc(skipped)
                continue
            timeout = None if deadline is None else max(0.0, (deadline - clock.now_ns()) / 1e9)
            if wall_deadline is not None:
                left = max(0.0, wall_deadline - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            reactor.poll(timeout)      # host I/O, or a wake() from stop()
            self._between_slices()
        return None
