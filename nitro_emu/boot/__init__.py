"""Booting Linux: the x86 64-bit boot protocol (Documentation/arch/x86/boot.rst)."""
