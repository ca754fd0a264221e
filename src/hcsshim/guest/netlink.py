"""A minimal rtnetlink client (stdlib only): links, addresses and routes, in any network namespace.

A netlink socket belongs to the namespace it was created in, so a socket opened by a thread that
joined the pod's namespace configures that namespace from anywhere. Blocking calls: run them in a
thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_NET_NS_FD = 1, 3, 4, 28
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY = 1, 4, 5, 6
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
CLONE_NEWNET = 0x40000000

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")


class NetlinkError(OSError):
    pass


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def _family(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip)
    return (socket.AF_INET if addr.version == 4 else socket.AF_INET6), addr.packed


class Netlink:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0

    @classmethod
    def open(cls) -> Netlink:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        sock.bind((0, 0))
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        self._seq += 1
        seq = self._seq
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _, mseq, _ = _HDR.unpack_from(data, off)
                payload = data[off + _HDR.size : off + length]
                off += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise NetlinkError(-code, f"{what}: {os.strerror(-code)}")
                    return replies
                if mtype == NLMSG_DONE:
                    return replies
                replies.append((mtype, payload))
                if not flags & NLM_F_ACK:
                    return replies

    # ---- links -------------------------------------------------------------------------------

    def link_index(self, name: str) -> int:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
        for mtype, payload in self._request(RTM_GETLINK, 0, body, f"find link {name}"):
            if mtype == RTM_NEWLINK:
                return int(_IFINFO.unpack_from(payload)[2])
        raise NetlinkError(errno.ENODEV, f"no link {name}")

    def link_mtu(self, index: int) -> int:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        for mtype, payload in self._request(RTM_GETLINK, 0, body, f"read link {index}"):
            if mtype == RTM_NEWLINK:
                mtu = _attrs(payload[_IFINFO.size :]).get(IFLA_MTU)
                return int(struct.unpack("=I", mtu)[0]) if mtu else 0
        raise NetlinkError(errno.ENODEV, f"no link {index}")

    def set_link(
        self,
        index: int,
        *,
        up: bool | None = None,
        name: str = "",
        mtu: int = 0,
        netns_fd: int = -1,
        what: str = "",
    ) -> None:
        flags = change = 0
        if up is not None:
            change = IFF_UP
            flags = IFF_UP if up else 0
        attrs = b""
        if name:
            attrs += _attr(IFLA_IFNAME, name.encode() + b"\0")
        if mtu:
            attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        if netns_fd >= 0:
            attrs += _attr(IFLA_NET_NS_FD, struct.pack("=I", netns_fd))
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs
        self._request(RTM_NEWLINK, NLM_F_ACK, body, what or f"set link {index}")

    # ---- addresses and routes ------------------------------------------------------------------

    def add_address(self, index: int, ip: str, prefix: int) -> None:
        fam, packed = _family(ip)
        body = _IFADDR.pack(fam, prefix, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self._request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, f"add address {ip}/{prefix}")

    def add_route(self, index: int, destination: str, gateway: str = "", metric: int = 0) -> None:
        net = ipaddress.ip_network(destination, strict=False)
        fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = _RTMSG.pack(fam, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        if net.prefixlen:
            body += _attr(RTA_DST, net.network_address.packed)
        if gateway:
            body += _attr(RTA_GATEWAY, _family(gateway)[1])
        if metric:
            body += _attr(RTA_PRIORITY, struct.pack("=I", metric))
        body += _attr(RTA_OIF, struct.pack("=i", index))
        via = f" via {gateway}" if gateway else ""
        self._request(
            RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, f"add route {destination}{via}"
        )


# ---- namespaces ------------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def in_fresh_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread of its own: namespace switches affect only the calling thread, and a
    thread that could not switch back is never reused."""
    result: list[T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=work, name="netns", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def create_netns(path: str) -> None:
    """A new network namespace kept alive by a bind mount on ``path`` (created as an empty file)."""

    def work() -> None:
        libc = _libc()
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            try:
                src = b"/proc/thread-self/ns/net"
                _check(libc.mount(src, path.encode(), None, 0x1000, None), f"bind {path}")  # MS_BIND
            finally:
                _check(libc.setns(own, CLONE_NEWNET), "setns back")
        finally:
            os.close(own)

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a"):
        pass
    try:
        in_fresh_thread(work)
    except BaseException:
        os.unlink(path)
        raise


def remove_netns(path: str) -> None:
    libc = _libc()
    _check(libc.umount2(path.encode(), 2), f"umount {path}")  # MNT_DETACH
    os.unlink(path)


@contextlib.contextmanager
def setns_path(path: str) -> Iterator[None]:
    """Join the namespace at ``path`` for the block (call only from ``in_fresh_thread``)."""
    libc = _libc()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.setns(target, CLONE_NEWNET), f"setns {path}")
        try:
            yield
        finally:
            _check(libc.setns(own, CLONE_NEWNET), "setns back")
    finally:
        os.close(own)
        os.close(target)


def open_in(path: str) -> Netlink:
    """A netlink socket bound to the namespace at ``path``."""

    def work() -> Netlink:
        libc = _libc()
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(libc.setns(target, CLONE_NEWNET), f"setns {path}")
            try:
                return Netlink.open()
            finally:
                _check(libc.setns(own, CLONE_NEWNET), "setns back")
        finally:
            os.close(own)
            os.close(target)

    return in_fresh_thread(work)
