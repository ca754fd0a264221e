"""The HvSocket stand-in: codec properties and the asyncio session over real sockets and fds."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcsshim.hvsock import codec, session, transports

frames = st.one_of(
    st.builds(
        codec.open_frame, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)
    ),
    st.builds(codec.accept_frame, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(codec.reject_frame, st.integers(0, 2**32 - 1), st.text(max_size=50)),
    st.builds(codec.window_frame, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(
        lambda c, d: codec.Frame(codec.Kind.DATA, c, d), st.integers(0, 2**32 - 1), st.binary(max_size=300)
    ),
    st.builds(lambda c: codec.Frame(codec.Kind.CLOSE, c), st.integers(0, 2**32 - 1)),
    st.builds(lambda c: codec.Frame(codec.Kind.RESET, c), st.integers(0, 2**32 - 1)),
)


@given(st.lists(frames, max_size=10), st.integers(1, 50))
def test_codec_round_trip_in_chunks(items: list[codec.Frame], chunk: int) -> None:
    stream = b"".join(codec.encode_frame(f) for f in items)
    dec = codec.FrameDecoder()
    out: list[codec.Frame] = []
    for off in range(0, len(stream), chunk):
        out += dec.feed(stream[off : off + chunk])
    assert out == items


@given(st.binary(max_size=400))
def test_codec_garbage_is_a_clean_protocol_error(data: bytes) -> None:
    try:
        for f in codec.FrameDecoder().feed(data):
            assert isinstance(f.kind, codec.Kind)
    except codec.MuxProtocolError:
        pass


def test_oversized_payload_rejected() -> None:
    with pytest.raises(ValueError):
        codec.encode_frame(codec.Frame(codec.Kind.DATA, 1, b"x" * (codec.MAX_PAYLOAD + 1)))
    with pytest.raises(codec.MuxProtocolError):
        codec.FrameDecoder().feed(codec.FRAME.pack(codec.Kind.DATA, 0, 0, 1, codec.MAX_PAYLOAD + 1))
    with pytest.raises(codec.MuxProtocolError):
        codec.FrameDecoder().feed(codec.FRAME.pack(codec.Kind.WINDOW, 0, 0, 1, 3) + b"abc")


Pair = tuple[session.MuxSession, session.MuxSession]


async def _socket_pair(window: int = session.DEFAULT_WINDOW) -> Pair:
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    host = session.MuxSession(transports.StreamTransport(ra, wa), session.Role.HOST, window=window).start()
    guest = session.MuxSession(transports.StreamTransport(rb, wb), session.Role.GUEST, window=window).start()
    return host, guest


async def _fd_pair(window: int = session.DEFAULT_WINDOW) -> Pair:
    # Two pipes stand in for a char device: raw fds read and written with os.read/os.write.
    h2g_r, h2g_w = os.pipe()
    g2h_r, g2h_w = os.pipe()

    class Duplex(transports.FdTransport):
        def __init__(self, rfd: int, wfd: int) -> None:
            super().__init__(rfd)
            self._w = transports.FdTransport(wfd)

        async def write(self, data: bytes) -> None:
            await self._w.write(data)

        def close(self) -> None:
            super().close()
            self._w.close()

    host = session.MuxSession(Duplex(g2h_r, h2g_w), session.Role.HOST, window=window).start()
    guest = session.MuxSession(Duplex(h2g_r, g2h_w), session.Role.GUEST, window=window).start()
    return host, guest


def _run(
    make: Callable[[], Awaitable[Pair]],
    body: Callable[[session.MuxSession, session.MuxSession], Awaitable[None]],
) -> None:
    async def main() -> None:
        host, guest = await make()
        try:
            await asyncio.wait_for(body(host, guest), 20)
        finally:
            await guest.aclose()
            await host.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("make", [_socket_pair, _fd_pair], ids=["socket", "fd"])
def test_dial_accept_echo_and_half_close(make: Callable[[], Awaitable[Pair]]) -> None:
    async def body(host: session.MuxSession, guest: session.MuxSession) -> None:
        lst = await host.listen(1234)
        gch = await guest.dial(1234)
        hch = await lst.accept()
        payload = os.urandom(1_000_000)

        async def send() -> None:
            await gch.write(payload)  # blocks on credit until the reader below consumes
            gch.close_write()

        sender = asyncio.create_task(send())
        got = bytearray()
        while data := await hch.read():
            got += data
        await sender
        assert bytes(got) == payload
        await hch.write(b"reply")
        hch.close_write()
        assert await gch.readexactly(5) == b"reply"
        assert await gch.read() == b""
        gch.close()
        hch.close()

    _run(make, body)


def test_dial_without_listener_is_refused() -> None:
    async def body(host: session.MuxSession, guest: session.MuxSession) -> None:
        with pytest.raises(ConnectionRefusedError, match="no listener"):
            await guest.dial(99)
        with pytest.raises(OSError):
            await host.listen(5)
            await host.listen(5)

    _run(_socket_pair, body)


def test_stalled_channel_does_not_block_others() -> None:
    async def body(host: session.MuxSession, guest: session.MuxSession) -> None:
        lst = await host.listen(1)
        stalled = await guest.dial(1)
        await lst.accept()  # never read from
        writer = asyncio.create_task(stalled.write(b"x" * (host.window * 3)))
        await asyncio.sleep(0.1)
        assert not writer.done()  # blocked on credit, not on the transport
        lst2 = await host.listen(2)
        live = await guest.dial(2)
        peer = await lst2.accept()
        for _ in range(50):
            await live.write(b"ping")
            assert await peer.readexactly(4) == b"ping"
        writer.cancel()

    _run(lambda: _socket_pair(window=64 * 1024), body)


def test_reset_and_session_close_fail_cleanly() -> None:
    async def body(host: session.MuxSession, guest: session.MuxSession) -> None:
        lst = await host.listen(7)
        gch = await guest.dial(7)
        hch = await lst.accept()
        await gch.write(b"buffered")
        gch.close()  # RESET: buffered data still readable, then EOF; writes fail
        assert await hch.readexactly(8) == b"buffered"
        assert await hch.read() == b""
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionResetError):
            await hch.write(b"x")
        other = await guest.dial(7)
        hother = await lst.accept()
        await guest.aclose()
        await host.wait_closed()
        assert await hother.read() == b""
        with pytest.raises(ConnectionError):
            await other.write(b"x")
        with pytest.raises(ConnectionAbortedError):
            await lst.accept()

    _run(_socket_pair, body)


def test_garbage_on_the_wire_closes_session_with_reason() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        host = session.MuxSession(transports.StreamTransport(ra, wa), session.Role.HOST).start()
        b.sendall(b"\xffgarbage-garbage")
        await asyncio.wait_for(host.wait_closed(), 5)
        assert "protocol error" in host.close_reason
        b.close()
        await host.aclose()

    asyncio.run(main())


def test_session_over_a_real_char_device_pty() -> None:
    """The guest end opens a character device by path (as it does /dev/virtio-ports/hcsshim.mux)."""
    import pty
    import tty

    async def make() -> Pair:
        master, slave = pty.openpty()
        tty.setraw(slave)  # a byte pipe: no echo, no line discipline
        path = os.ttyname(slave)
        guest_t = transports.open_char_device(path)
        os.close(slave)
        host = session.MuxSession(transports.FdTransport(master), session.Role.HOST).start()
        guest = session.MuxSession(guest_t, session.Role.GUEST).start()
        return host, guest

    async def body(host: session.MuxSession, guest: session.MuxSession) -> None:
        lst = await host.listen(0x40000000)
        gch = await guest.dial(0x40000000)
        hch = await lst.accept()
        payload = bytes(range(256)) * 200
        sender = asyncio.create_task(gch.write(payload))
        assert await hch.readexactly(len(payload)) == payload
        await sender
        await hch.write(b"\x00\xff\n\r")
        assert await gch.readexactly(4) == b"\x00\xff\n\r"

    _run(make, body)
