"""Sources of nitro-emu's guest images and the script that builds them.

`python -m guest.build --out build/guest` builds the kernels (from Debian's
linux-source-6.12), the static init and test programs, the two newc ramdisks per
image and the EIF files, reproducibly and cached under ~/.cache/nitro-emu.
"""
