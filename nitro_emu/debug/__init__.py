"""Debugging an enclave: a GDB stub (gdbstub, registers, target, rsp), event traces
(trace, syscalls), post-mortem reports (postmortem, symbols, unwind, disasm), wired into a
machine by session.DebugConfig."""
