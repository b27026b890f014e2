"""The board every part of the machine plugs into: guest RAM (`memory`), the virtual clock
and its timers (`clock`), the protocols of interrupt lines and bus devices
(`interfaces`), the I/O-port and MMIO buses (`bus`) and the reactor for host file
descriptors (`reactor`).

The bottom layer: it imports nothing else of nitro-emu. `devices` build on it alone, and
`nitro_emu` (the machine, its CPU and the command line) wires both together.
"""
