#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian bookworm machine.
# Safe to run twice: apt and pip are skipped when what they would install is present.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(containerd runc busybox-static e2fsprogs cpio zstd iproute2 kmod containernetworking-plugins iptables util-linux)
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

# containerd 2.1 (Debian forky) beside the system's 1.6.20, for the e2e matrix: the package is fetched
# through a private apt configuration (its own sources, lists and cache under $CTRD2_APT) and unpacked
# with dpkg -x, so the system's apt never sees forky and nothing installed is replaced.
CTRD2_PREFIX=${HCSSHIM_CONTAINERD2_PREFIX:-/opt/hcsshim/containerd-2.1}
CTRD2_SUITE=forky
CTRD2_APT=/var/cache/hcsshim/apt-$CTRD2_SUITE
containerd2_ok() {
    [ -x "$CTRD2_PREFIX/usr/bin/containerd" ] && [ -x "$CTRD2_PREFIX/usr/bin/ctr" ] &&
        "$CTRD2_PREFIX/usr/bin/containerd" --version 2>/dev/null | grep -q ' v\?2\.1\.'
}
if ! containerd2_ok; then
    echo "setup: unpacking containerd 2.1 from Debian $CTRD2_SUITE into $CTRD2_PREFIX"
    $SUDO mkdir -p "$CTRD2_APT/sources" "$CTRD2_APT/lists/partial" "$CTRD2_APT/cache/archives/partial" "$CTRD2_APT/deb"
    $SUDO tee "$CTRD2_APT/sources/$CTRD2_SUITE.sources" >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $CTRD2_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_private=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$CTRD2_APT/sources"
        -o "Dir::State::Lists=$CTRD2_APT/lists" -o "Dir::Cache=$CTRD2_APT/cache"
        -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
        -o APT::Sandbox::User=root)
    $SUDO apt-get "${apt_private[@]}" update -qq
    version=$(apt-cache "${apt_private[@]}" show containerd | sed -n 's/^Version: \(2\.1\..*\)/\1/p' | head -1)
    [ -n "$version" ] || { echo "setup: no containerd 2.1.x in Debian $CTRD2_SUITE" >&2; exit 1; }
    (cd "$CTRD2_APT/deb" && $SUDO rm -f containerd_*.deb &&
        $SUDO apt-get "${apt_private[@]}" download -qq "containerd=$version")
    tmp_prefix="$CTRD2_PREFIX.tmp$$"
    $SUDO rm -rf "$tmp_prefix"
    $SUDO mkdir -p "$tmp_prefix"
    $SUDO dpkg -x "$CTRD2_APT"/deb/containerd_*.deb "$tmp_prefix"
    $SUDO rm -rf "$CTRD2_PREFIX"
    $SUDO mv "$tmp_prefix" "$CTRD2_PREFIX"
    containerd2_ok || { echo "setup: containerd 2.1 in $CTRD2_PREFIX does not run" >&2; exit 1; }
fi

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
