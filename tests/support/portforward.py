"""A tiny client for containerd's CRI streaming server: PortForward over WebSocket.

containerd 1.6's streaming server (a copy of kubelet's) accepts a WebSocket upgrade on
``/portforward/<token>`` with the ``v4.channel.k8s.io`` subprotocol: every binary message is one
channel byte + payload; for the first port, channel 0 carries data and channel 1 errors, and the
server first writes the port (uint16 little-endian) on each. The ports come from the CRI request the
token was issued for. Hand-written (RFC 6455 client framing: masked frames) to stay stdlib-only.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
import urllib.parse

PROTOCOL = "v4.channel.k8s.io"


class PortForwardError(RuntimeError):
    pass


class WsConn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("websocket closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, payload: bytes, opcode: int = 0x2) -> None:
        mask = os.urandom(4)
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next complete message (ping answered, fragments joined)."""
        data = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._recv_exact(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._recv_exact(8))
            mask = self._recv_exact(4) if b1 & 0x80 else b""
            payload = self._recv_exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.send(payload, 0xA)
                continue
            data += payload
            if b0 & 0x80:
                return (opcode or 0x2), data


def connect(url: str, timeout: float = 30.0) -> WsConn:
    u = urllib.parse.urlparse(url)
    if u.scheme != "http" or not u.hostname:
        raise PortForwardError(f"unexpected streaming URL {url!r}")
    sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {u.path}{'?' + u.query if u.query else ''} HTTP/1.1\r\n"
        f"Host: {u.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise PortForwardError(f"streaming server closed during the upgrade: {head!r}")
        head += data
    status, _, rest = head.partition(b"\r\n\r\n")
    if b" 101 " not in status.split(b"\r\n")[0] + b" ":
        raise PortForwardError(f"upgrade refused: {status.decode(errors='replace')}")
    conn = WsConn(sock)
    conn.buf = rest
    return conn


def forward_once(url: str, payload: bytes, timeout: float = 60.0, expect: int = 0) -> tuple[bytes, bytes]:
    """Send ``payload`` to the first forwarded port, read until the stream ends (or ``expect`` bytes
    arrived): (data, error text)."""
    conn = connect(url, timeout)
    got: dict[int, bytearray] = {0: bytearray(), 1: bytearray()}
    headers_seen: set[int] = set()
    deadline = time.monotonic() + timeout
    sent = False
    try:
        while time.monotonic() < deadline:
            if headers_seen >= {0, 1} and not sent:
                conn.send(b"\x00" + payload)
                sent = True
            try:
                opcode, msg = conn.recv()
            except (EOFError, OSError):
                break
            if opcode == 0x8:  # close
                break
            if not msg:
                continue
            channel, body = msg[0], msg[1:]
            if channel not in headers_seen:
                headers_seen.add(channel)
                body = body[2:]  # the port number the server announces first
            got.setdefault(channel, bytearray()).extend(body)
            if channel == 0 and body:
                conn.sock.settimeout(5)  # the stream may stay open once the answer is complete
                if expect and len(got[0]) >= expect:
                    break
    finally:
        conn.sock.close()
    return bytes(got[0]), bytes(got[1])
