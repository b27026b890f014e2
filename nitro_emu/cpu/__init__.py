"""The CPU layer: Unicorn 2.1.4 set up as a 64-bit PC CPU, with the pieces Unicorn leaves
out done by hand (exception delivery, SYSCALL, external interrupts, CPUID, TSC)."""
