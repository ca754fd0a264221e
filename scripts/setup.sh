#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian bookworm machine.
# Safe to run twice: apt and pip are skipped when what they would install is present.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(containerd runc qemu-system-x86 qemu-utils busybox-static e2fsprogs cpio zstd iproute2 kmod)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing apt packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# containerd's Debian unit starts a system daemon; ours are private, so the system one is left alone.

PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PY"
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    echo "setup: installing Python dependencies"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
echo "setup: ok"
