#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages nitro-emu needs: Python's venv, the kernel sources and
# toolchain for the guest images, busybox for the guest userland, QEMU as a reference machine,
# and the compressors a kernel build can use (the boot tests repack a kernel with each).
set -euo pipefail
packages=(python3-venv python3-dev build-essential bc flex bison libelf-dev libssl-dev cpio
          xz-utils bzip2 lzop lz4 zstd linux-source-6.12 busybox-static qemu-system-x86 socat gdb
          podman)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
# The python guest image is made from Debian's packages with `apt-get download`, which
# needs the package lists even when everything above is installed already.
if [ ${#missing[@]} -eq 0 ]; then
  apt-cache show python3.11-minimal >/dev/null 2>&1 || $sudo apt-get update -q
  exit 0
fi
echo "installing: ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
