"""A GDB remote-protocol server for one machine: `gdb build/guest/tiny/vmlinux`, then
`target remote :PORT`, as with QEMU's `-s -S`.

It runs on the emulator thread and takes the CPU only between slices (`pause_point`):
when a breakpoint, watchpoint or step stopped the last slice, when the debugger sends
Ctrl-C (its connection is polled with the machine's other host I/O) or connects, and
before the first instruction with `wait`. While it holds the CPU it serves packets until
the debugger resumes it, and guest time stands still.

The connection is host input and is not trusted: a malformed packet is refused with `-`
or an error reply, an address outside guest memory is an error reply, and a debugger that
goes away leaves the machine running with its breakpoints removed.

Why not udbserver (PyPI): it hooks every instruction (UC_HOOK_CODE over the whole address
space) and every memory read from the moment it is attached, reads memory by physical
address (Unicorn's mem_read) instead of through the guest's page tables, runs its own
blocking loop inside a Unicorn callback, and knows nothing of this machine's run loop,
timers or virtual clock.
"""
from __future__ import annotations

import collections
import os
import select
import selectors
import socket
import time
from typing import Callable

from board.reactor import HostReactor
from devices.vsock.host_port import format_host_port, listen_family
from nitro_emu.cpu.debugging import Stop
from nitro_emu.debug import rsp
from nitro_emu.debug.config import DebugError
from nitro_emu.debug.registers import RegisterError, target_xml
from nitro_emu.debug.target import MachineTarget

SIGINT, SIGTRAP, SIGABRT, SIGKILL, SIGSEGV, SIGALRM = 2, 5, 6, 9, 11, 14
ERROR_FAULT = b"E0e"      # EFAULT: memory not mapped
ERROR_INVALID = b"E16"    # EINVAL: a packet that makes no sense
READ_LIMIT = (rsp.MAX_PACKET - 16) // 2
SEND_TIMEOUT = 10.0
POLL_SECONDS = 0.25       # how often a blocked stub checks whether the run was ended
LINGER_SECONDS = 0.5      # how long a closing connection waits for the debugger to close
MAX_QUEUED = 256          # packets waiting while the CPU runs (GDB sends none but Ctrl-C)
_WATCH_TYPES = {2: "write", 3: "read", 4: "access"}
_WATCH_REASONS = {"write": "watch", "read": "rwatch", "access": "awatch"}
# How a run that ended while a debugger waited is reported to it: the dead states stop
# with this signal first (so the debugger can look at them), the rest just end.
_DEATH_SIGNALS = {"panic": SIGABRT, "triple-fault": SIGSEGV, "fault": SIGSEGV,
                  "no-progress": SIGTRAP}
_END_SIGNALS = {"timeout": SIGALRM, "stopped": SIGKILL}


def stop_reply(signal: int, reason: str = "") -> bytes:
    return f"T{signal:02x}{reason}thread:01;".encode()


def _close_gently(client: socket.socket) -> None:
    """Close after the debugger has read the last reply: closing with its late `+` still
    unread would reset the connection and could lose that reply."""
    try:
        client.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        while time.monotonic() < deadline:
            if not select.select([client], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            if not client.recv(4096):
                break
    except OSError:
        pass
    client.close()


class GdbStub:
    """Listens on `address` ((host, port); port 0 picks a free one, see `address`)."""

    def __init__(self, address: tuple[str, int], wait: bool,
                 announce: Callable[[str], None]) -> None:
        try:
            self._listener = socket.create_server(address, family=listen_family(address[0]))
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise DebugError(f"gdb stub: cannot listen on {format_host_port(*address)}: "
                             f"{reason}") from None
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._announce = announce
        self._target: MachineTarget | None = None
        self._reactor: HostReactor | None = None
        self._client: socket.socket | None = None
        self._decoder = rsp.PacketDecoder()
        self._queue: collections.deque[rsp.Event] = collections.deque()
        self._ack_mode = True
        self._last_frame = b""
        self._resends = 0
        self._resumed = False          # the debugger resumed the CPU and awaits a stop reply
        self._hold_reason: bytes | None = stop_reply(SIGTRAP) if wait else None
        self._last_stop = stop_reply(SIGTRAP)
        self._breakpoint_kinds: dict[int, int] = {}
        self._gdb_features: set[bytes] = set()
        self._machine_over = False     # the run ended; the debugger may still look at it
        self._abandoned = False        # the user stopped nitro-emu itself
        self._xml = target_xml().encode()
        announce(f"nitro-emu: gdb stub listening on {format_host_port(*self.address)}"
                 + (" (the CPU waits for a debugger before its first instruction)" if wait else ""))

    def attach(self, target: MachineTarget, reactor: HostReactor) -> None:
        self._target, self._reactor = target, reactor
        reactor.register(self._listener, selectors.EVENT_READ, self._on_connect, background=True)

    # -- called by the machine -------------------------------------------------------------

    def pause_point(self) -> None:
        """Between CPU slices: hold the CPU if a stop, Ctrl-C, a new debugger or `wait`
        asks for it."""
        stop = self._target.take_stop()
        if stop is not None and self._client is not None:
            if stop.by is not None:
                self._tell(f"nitro-emu: {stop.address:#x} was accessed by the instruction at "
                           f"{stop.by:#x} (the CPU stopped at the end of its block)\n")
            self._hold(self._describe(stop))
        elif self._hold_reason is not None:
            reason, self._hold_reason = self._hold_reason, None
            self._hold(reason)

    def abandon(self) -> None:
        """The user stopped nitro-emu itself: stop waiting for the debugger (safe from a
        signal handler)."""
        self._abandoned = True

    def machine_ended(self, reason: str, ok: bool) -> None:
        """The run is over. A debugger waiting for the CPU hears of it: a guest that died
        stops first with a signal (panic SIGABRT, faults SIGSEGV) so its state can be
        looked at, then the process is reported gone."""
        self._machine_over = True
        if self._client is None or not self._resumed:
            self._drop_client(detached=False)
            return
        if ok:
            self._send(b"W00")
        else:
            signal = _DEATH_SIGNALS.get(reason)
            if signal is not None:
                self._hold(stop_reply(signal))
            if self._client is not None and self._resumed:
                self._send(b"X%02x" % (signal or _END_SIGNALS.get(reason, SIGKILL)))
        self._drop_client(detached=False)

    def close(self) -> None:
        self._drop_client(detached=False)
        if self._reactor is not None:
            self._reactor.unregister(self._listener)
        self._listener.close()

    # -- holding the CPU -------------------------------------------------------------------

    def _hold(self, reply: bytes) -> None:
        target = self._target
        target.hold()
        try:
            if self._client is None and not self._accept_blocking():
                return
            self._last_stop = reply
            if self._resumed:
                self._resumed = False
                self._send(reply)
            self._serve()
        finally:
            target.release()

    def _serve(self) -> None:
        """Answer packets until the debugger resumes the CPU, detaches, kills the machine
        or goes away, or the run is ended from outside (a signal to nitro-emu)."""
        while True:
            event = self._next_event()
            if event is None:
                return
            if isinstance(event, rsp.Packet):
                if self._ack_mode:
                    self._send_raw(b"+")
                if self._handle(event.payload):
                    return
            elif isinstance(event, rsp.BadPacket):
                if self._ack_mode:
                    self._send_raw(b"-")
            elif isinstance(event, rsp.Ack) and not event.ok and self._ack_mode:
                if self._last_frame and self._resends < 3:
                    self._resends += 1
                    self._send_raw(self._last_frame)

    def _next_event(self) -> rsp.Event | None:
        while not self._queue:
            if self._client is None or self._should_leave():
                return None
            try:
                ready = select.select([self._client, self._listener], [], [], POLL_SECONDS)[0]
            except (OSError, ValueError):
                ready = []
                self._drop_client(detached=True)
            if self._listener in ready:
                self._on_connect(selectors.EVENT_READ)  # another debugger: turned away
            if self._client in ready:
                self._receive()
        return self._queue.popleft()

    def _should_leave(self) -> bool:
        """Stop serving: the run was ended from outside (a signal to nitro-emu), or,
        once it is over, the user gave up on the debugger."""
        return self._abandoned or (not self._machine_over and self._target.finished())

    def _accept_blocking(self) -> bool:
        """Wait for a debugger (`wait`), giving up when the run is ended from outside."""
        while not self._should_leave():
            if select.select([self._listener], [], [], POLL_SECONDS)[0]:
                self._on_connect(selectors.EVENT_READ)
                if self._client is not None:
                    self._hold_reason = None
                    return True
        return False

    # -- the connection --------------------------------------------------------------------

    def _on_connect(self, _: int) -> None:
        try:
            client, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if self._client is not None:
            client.close()  # one debugger at a time
            return
        client.settimeout(SEND_TIMEOUT)
        if client.family in (socket.AF_INET, socket.AF_INET6):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client
        self._reactor.register(client, selectors.EVENT_READ, self._on_readable, background=True)
        self._announce(f"nitro-emu: debugger attached from {format_host_port(*peer[:2])}")
        self._hold_reason = stop_reply(SIGTRAP)  # GDB expects a stopped target when it connects

    def _on_readable(self, _: int) -> None:
        self._receive()

    def _receive(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client(detached=True)
            return
        for event in self._decoder.feed(data):
            if isinstance(event, rsp.Interrupt):
                if self._resumed:
                    self._hold_reason = stop_reply(SIGINT)
            else:
                self._queue.append(event)
        if self._resumed and len(self._queue) > MAX_QUEUED:
            self._announce("nitro-emu: the debugger sent packets without waiting for "
                           "answers; its connection is closed")
            self._drop_client(detached=True)

    def _drop_client(self, detached: bool) -> None:
        """Forget the debugger: its breakpoints and watchpoints go, and the machine runs on."""
        client, self._client = self._client, None
        if client is not None:
            if self._reactor is not None:
                self._reactor.unregister(client)
            _close_gently(client)
            if detached:
                self._announce("nitro-emu: debugger detached; the enclave runs on")
        if self._target is not None:
            self._target.forget_debugger()
        self._breakpoint_kinds.clear()
        self._decoder = rsp.PacketDecoder()
        self._queue.clear()
        self._ack_mode, self._resumed, self._hold_reason = True, False, None

    def _tell(self, text: str) -> None:
        """Text for the debugger's console (an `O` packet; only while it waits for a stop)."""
        if self._resumed:
            self._send(b"O" + rsp.to_hex(text.encode()))

    def _send(self, payload: bytes) -> None:
        self._last_frame = rsp.frame(payload)
        self._resends = 0
        self._send_raw(self._last_frame)

    def _send_raw(self, data: bytes) -> None:
        if self._client is None:
            return
        try:
            self._client.sendall(data)
        except OSError:
            self._drop_client(detached=True)

    # -- packets ---------------------------------------------------------------------------

    def _handle(self, payload: bytes) -> bool:
        """Answer one packet; True when the CPU is to run on (continue, detach, kill)."""
        try:
            return self._dispatch(payload)
        except (ValueError, RegisterError, IndexError):
            self._send(ERROR_INVALID)
        except Exception as error:  # the debugger's input must never end the run
            self._announce(f"nitro-emu: gdb stub: {payload[:24]!r} failed: {error!r}")
            self._send(b"E01")
        return False

    def _dispatch(self, payload: bytes) -> bool:
        command, body = payload[:1], payload[1:]
        target = self._target
        if command == b"?":
            self._send(self._last_stop)
        elif command == b"g":
            self._send(rsp.to_hex(target.registers.read_all()))
        elif command == b"G":
            target.registers.write_all(rsp.from_hex(body))
            self._send(b"OK")
        elif command == b"p":
            self._send(rsp.to_hex(target.registers.read(rsp.hex_number(body, 16))))
        elif command == b"P":
            number, _, value = body.partition(b"=")
            target.registers.write(rsp.hex_number(number, 16), rsp.from_hex(value))
            self._send(b"OK")
        elif command == b"m":
            self._read_memory(body)
        elif command in (b"M", b"X"):
            self._write_memory(body, binary=command == b"X")
        elif command in (b"c", b"C", b"s", b"S"):
            return self._resume(command, body)
        elif command == b"v":
            return self._v_packet(payload)
        elif command in (b"Z", b"z"):
            self._breakpoint(body, insert=command == b"Z")
        elif command == b"D":
            self._send(b"OK")
            self._drop_client(detached=True)
            return True
        elif command == b"k":
            target.kill()
            self._drop_client(detached=False)
            return True
        elif command == b"q":
            self._query(body)
        elif command == b"Q":
            self._send(b"OK" if body == b"StartNoAckMode" else b"")
            if body == b"StartNoAckMode":
                self._ack_mode = False
        elif command in (b"H", b"T"):
            self._send(b"OK")
        else:
            self._send(b"")
        return False

    def _read_memory(self, body: bytes) -> None:
        address, length = self._address_and_length(body)
        data = self._target.memory.read(address, min(length, READ_LIMIT))
        self._send(rsp.to_hex(data) if data or not length else ERROR_FAULT)

    def _write_memory(self, body: bytes, binary: bool) -> None:
        where, _, data = body.partition(b":")
        address, length = self._address_and_length(where)
        data = rsp.unescape(data) if binary else rsp.from_hex(data)
        if len(data) != length:
            raise ValueError("memory write length does not match its data")
        written = self._target.memory.write(address, data) if data else 0
        self._send(b"OK" if written == length else ERROR_FAULT)

    @staticmethod
    def _address_and_length(text: bytes) -> tuple[int, int]:
        address, _, length = text.partition(b",")
        return rsp.hex_number(address), rsp.hex_number(length, 32)

    def _resume(self, command: bytes, body: bytes) -> bool:
        """c [addr], C sig[;addr], s [addr], S sig[;addr]; the signal is not delivered
        (a CPU has no signals)."""
        if command in (b"C", b"S"):
            signal, _, body = body.partition(b";")
            rsp.hex_number(signal, 8)  # must be there, even though it is ignored
        if body:
            self._target.vcpu.write_register("rip", rsp.hex_number(body))
        if command in (b"s", b"S"):
            self._step()
            return False
        self._target.resume()
        self._resumed = True
        return True

    def _step(self) -> None:
        target = self._target
        ended = target.step()
        stop = target.take_stop()
        if ended == "fault":
            self._last_stop = stop_reply(SIGSEGV)
        elif stop is not None and stop.kind != "step":
            self._last_stop = self._describe(stop)
        else:
            self._last_stop = stop_reply(SIGTRAP)
        self._send(self._last_stop)

    def _v_packet(self, payload: bytes) -> bool:
        if payload == b"vCont?":
            self._send(b"vCont;c;C;s;S")
        elif payload.startswith(b"vCont;"):
            # Single thread: the first action that applies to it (or to all) decides.
            action = payload[6:].split(b";")[0].split(b":")[0]
            if action[:1] in (b"c", b"C", b"s", b"S"):
                signal_free = action[:1].lower()
                return self._resume(signal_free, b"")
            self._send(ERROR_INVALID)
        elif payload.startswith(b"vKill"):
            self._send(b"OK")
            self._target.kill()
            self._drop_client(detached=False)
            return True
        else:
            self._send(b"")  # vMustReplyEmpty and anything we do not do
        return False

    def _breakpoint(self, body: bytes, insert: bool) -> None:
        kind_text, address_text, length_text = body.split(b";")[0].split(b",")
        kind, address = rsp.hex_number(kind_text, 8), rsp.hex_number(address_text)
        length = rsp.hex_number(length_text, 32)
        port = self._target.port
        if kind in (0, 1):
            if insert:
                port.add_breakpoint(address)
                self._breakpoint_kinds[address] = kind
            else:
                port.remove_breakpoint(address)
                self._breakpoint_kinds.pop(address, None)
            self._send(b"OK")
        elif kind in _WATCH_TYPES:
            if insert:
                self._send(b"OK" if port.add_watchpoint(address, length, _WATCH_TYPES[kind])
                           else ERROR_FAULT)
            else:
                port.remove_watchpoint(address, length, _WATCH_TYPES[kind])
                self._send(b"OK")
        else:
            self._send(b"")

    def _describe(self, stop: Stop) -> bytes:
        if stop.kind == "breakpoint":
            hardware = self._breakpoint_kinds.get(stop.address) == 1
            feature = b"hwbreak+" if hardware else b"swbreak+"
            reason = ("hwbreak:;" if hardware else "swbreak:;") if feature in self._gdb_features else ""
            return stop_reply(SIGTRAP, reason)
        if stop.kind in _WATCH_REASONS:
            return stop_reply(SIGTRAP, f"{_WATCH_REASONS[stop.kind]}:{stop.address:x};")
        return stop_reply(SIGTRAP)

    def _query(self, body: bytes) -> None:
        if body.startswith(b"Supported"):
            _, _, offered = body.partition(b":")
            self._gdb_features = set(offered.split(b";"))
            features = [b"PacketSize=%x" % rsp.MAX_PACKET, b"qXfer:features:read+",
                        b"QStartNoAckMode+", b"vContSupported+"]
            features += [name for name in (b"swbreak+", b"hwbreak+") if name in self._gdb_features]
            self._send(b";".join(features))
        elif body.startswith(b"Xfer:features:read:"):
            annex, _, span = body[len(b"Xfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                self._send(b"E00")
                return
            offset, length = self._address_and_length(span)
            chunk = self._xml[offset:offset + min(length, READ_LIMIT)]
            more = offset + len(chunk) < len(self._xml)
            self._send((b"m" if more else b"l") + rsp.escape(chunk))
        elif body == b"Attached":
            self._send(b"1")
        elif body == b"C":
            self._send(b"QC1")
        elif body == b"fThreadInfo":
            self._send(b"m1")
        elif body == b"sThreadInfo":
            self._send(b"l")
        elif body.startswith(b"Symbol"):
            self._send(b"OK")
        else:
            self._send(b"")
