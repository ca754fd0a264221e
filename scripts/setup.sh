#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian bookworm machine.
# Safe to run twice: apt and pip are skipped when what they would install is present.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(containerd runc busybox-static e2fsprogs cpio zstd iproute2 kmod containernetworking-plugins)
# QEMU comes from bookworm-backports (10.0.x): bookworm's 7.2 freezes guests under multi-threaded TCG
# when the guest kernel live-patches a static key (fixed upstream in 8.1). Only these packages are
# taken from backports; nothing else is upgraded.
BACKPORTS_PACKAGES=(qemu-system-x86 qemu-utils)
BACKPORTS_SOURCE=/etc/apt/sources.list.d/hcsshim-bookworm-backports.sources
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

qemu_version_ok() {
    command -v qemu-system-x86_64 >/dev/null || return 1
    local v
    v=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    set -- $v
    [ -n "${1:-}" ] && { [ "$1" -gt 8 ] || { [ "$1" -eq 8 ] && [ "$2" -ge 1 ]; }; }
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing apt packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! qemu_version_ok; then
    echo "setup: installing QEMU from bookworm-backports"
    if ! grep -qrs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        $SUDO tee "$BACKPORTS_SOURCE" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
        --no-install-recommends "${BACKPORTS_PACKAGES[@]}" >/dev/null
    qemu_version_ok || { echo "setup: QEMU >= 8.1 is required; got: $(qemu-system-x86_64 --version | head -1)" >&2; exit 1; }
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
