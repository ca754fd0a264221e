"""A tap in the pod's netns joined to the CNI interface by two tc mirred redirects (Kata's tcfilter).

Every frame the CNI veth receives is redirected to the tap's egress (to QEMU, then the guest NIC),
and every frame QEMU writes to the tap is redirected out of the veth. The pod's addresses stay on
the veth, which never uses them itself: the guest NIC carries the veth's MAC and the same addresses.
The tap is persistent (created by ``ip tuntap``) so QEMU can attach to it by name; it is deleted
explicitly, and in any case goes with the namespace.
"""

from __future__ import annotations

import contextlib

from hcsshim.network.cmd import run_in
from hcsshim.network.errors import NetworkError

_U32_ALL = ("u32", "match", "u8", "0", "0")


async def create_tap(netns: str, tap: str, veth: str, mtu: int) -> None:
    """Create ``tap`` and the redirects; on failure nothing of it is left."""
    try:
        await run_in(netns, "ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr")
    except NetworkError as e:
        raise NetworkError(f"creating tap {tap}: {e}") from e
    try:
        await run_in(netns, "ip", "link", "set", "dev", tap, "mtu", str(mtu), "up")
        for dev in (veth, tap):
            await run_in(netns, "tc", "qdisc", "add", "dev", dev, "ingress")
        for src, dst in ((veth, tap), (tap, veth)):
            await run_in(
                netns,
                "tc",
                "filter",
                "add",
                "dev",
                src,
                "parent",
                "ffff:",
                "protocol",
                "all",
                *_U32_ALL,
                "action",
                "mirred",
                "egress",
                "redirect",
                "dev",
                dst,
            )
    except BaseException:
        with contextlib.suppress(NetworkError):
            await delete_tap(netns, tap, veth)
        raise


async def delete_tap(netns: str, tap: str, veth: str) -> None:
    """Remove the veth's ingress qdisc (its filter goes with it) and the tap (and its qdisc)."""
    errors: list[str] = []
    rc, _, err = await run_in(netns, "tc", "qdisc", "del", "dev", veth, "ingress", check=False)
    if rc != 0 and not _gone(err):
        errors.append(f"tc qdisc del dev {veth} ingress: {err}")
    rc, _, err = await run_in(netns, "ip", "link", "del", "dev", tap, check=False)
    if rc != 0 and not _gone(err):
        errors.append(f"ip link del {tap}: {err}")
    if errors:
        raise NetworkError("; ".join(errors))


def _gone(err: str) -> bool:
    low = err.lower()
    return any(s in low for s in ("cannot find device", "no such", "invalid handle", "does not exist"))
