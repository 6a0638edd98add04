#!/usr/bin/env bash
# Debian packages for the C runtime: cross compilers and QEMU (recipes checked in shared/DESIGN.md),
# clang + compiler-rt for the libFuzzer target (runtime/Makefile `fuzz`), espeak-ng for the speech
# the silero-vad benchmark model hears (bench/zoo/silero_vad.py).
# Skips the install when every tool is already there; needs root (or sudo) otherwise.
set -euo pipefail
need=0
for tool in aarch64-linux-gnu-gcc qemu-aarch64 arm-none-eabi-gcc qemu-system-arm clang espeak-ng; do
    command -v "$tool" >/dev/null || need=1
done
[ -f /usr/include/zstd.h ] || need=1
[ "$need" = 0 ] && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
PKGS="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm libzstd-dev clang libclang-rt-14-dev espeak-ng"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends $PKGS >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends $PKGS >/dev/null
}
