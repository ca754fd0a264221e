"""ProcessIO against real FIFOs, the way containerd's clients use them (no guest: fake channels)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from hcsshim.shim.io import ProcessIO


class Channel:
    def __init__(self, chunks: list[bytes] | None = None) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        for chunk in chunks or []:
            self.queue.put_nowait(chunk)
        self.written = bytearray()
        self.eof = asyncio.Event()

    async def read(self, n: int = 65536) -> bytes:
        return await self.queue.get()

    async def write(self, data: bytes) -> None:
        self.written += data

    def close_write(self) -> None:
        self.eof.set()

    def close(self) -> None:
        self.eof.set()


class Guest:
    def __init__(self, stdin: Channel | None, stdout: Channel | None, stderr: Channel | None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr


def test_stdin_fifo_never_opened_by_the_client_does_not_wedge_closeio(tmp_path: Path) -> None:
    """ctr with an empty stdin closes (and removes) its FIFO without ever opening it."""

    async def body() -> None:
        path = str(tmp_path / "stdin")
        os.mkfifo(path)
        io = ProcessIO(path, "", "", terminal=False)
        stdin = Channel()
        io.attach(Guest(stdin, None, None))
        await asyncio.sleep(0.1)
        os.unlink(path)
        io.close_stdin()  # CloseIO
        assert stdin.eof.is_set()
        await asyncio.wait_for(io.close(), 2)

    asyncio.run(body())


def test_stdin_is_copied_until_the_writer_closes(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "stdin")
        os.mkfifo(path)
        io = ProcessIO(path, "", "", terminal=False)
        stdin = Channel()
        io.attach(Guest(stdin, None, None))
        await asyncio.sleep(0.05)
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, b"line one\n")
        await asyncio.sleep(0.05)
        os.write(fd, b"line two\n")
        os.close(fd)
        await asyncio.wait_for(stdin.eof.wait(), 2)
        assert bytes(stdin.written) == b"line one\nline two\n"
        await io.close()

    asyncio.run(body())


def test_output_reaches_the_reader_and_ends_with_eof(tmp_path: Path) -> None:
    async def body() -> None:
        out, err = str(tmp_path / "out"), str(tmp_path / "err")
        os.mkfifo(out)
        os.mkfifo(err)
        readers = [os.open(p, os.O_RDONLY | os.O_NONBLOCK) for p in (out, err)]
        io = ProcessIO("", out, err, terminal=False)
        assert io.process_params()["CreateStdErrPipe"] is True
        big = os.urandom(300_000)  # more than a pipe holds: the copy must wait for the reader
        io.attach(Guest(None, Channel([big, b""]), Channel([b"oops\n", b""])))
        got = [bytearray(), bytearray()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        done = [False, False]
        while not all(done) and loop.time() < deadline:
            for i, fd in enumerate(readers):
                if done[i]:
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    got[i] += chunk
                elif got[i]:
                    done[i] = True
            await asyncio.sleep(0.001)
        assert await io.wait_output(2)
        assert bytes(got[0]) == big and bytes(got[1]) == b"oops\n"
        for fd in readers:
            os.close(fd)
        await io.close()

    asyncio.run(body())


def test_tty_has_no_stderr() -> None:
    io = ProcessIO("/in", "/out", "/err", terminal=True)
    params = io.process_params()
    assert params["CreateStdErrPipe"] is False and params["EmulateConsole"] is True
