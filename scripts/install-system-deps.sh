#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages nitro-emu needs: Python's venv, the kernel sources and
# toolchain for the guest images, busybox for the guest userland, QEMU as a reference machine.
set -euo pipefail
packages=(python3-venv python3-dev build-essential bc flex bison libelf-dev libssl-dev cpio
          xz-utils linux-source-6.12 busybox-static qemu-system-x86 socat gdb podman)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
