"""The guest relay's grace after a process exits, with a fake mux channel: a silent descendant holding
the pipe does not hold the exit back; a slow host that keeps taking data loses nothing."""

from __future__ import annotations

import asyncio
import os

from hcsshim.guest.stdio import Relay


class FakeChannel:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.data = bytearray()
        self.port = 0

    async def write(self, data: bytes) -> None:
        await asyncio.sleep(self.delay)
        self.data += data

    def close_write(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_fake_channel_silent_holder_gives_up_after_grace() -> None:
    async def main() -> None:
        r, w = os.pipe()
        relay = Relay()
        ch = FakeChannel(0.0)
        relay.start_pipes((None, ch, None), (None, r, None))  # type: ignore[arg-type]
        os.write(w, b"last words\n")
        await asyncio.sleep(0.1)
        # ``w`` stays open: a descendant holds it and writes nothing more.
        assert await relay.wait_outputs(0.2) is False
        assert bytes(ch.data) == b"last words\n"
        relay.close()
        os.close(w)

    asyncio.run(main())


def test_fake_slow_channel_keeps_relaying_past_the_grace() -> None:
    async def main() -> None:
        r, w = os.pipe()
        relay = Relay()
        ch = FakeChannel(0.05)
        relay.start_pipes((None, ch, None), (None, r, None))  # type: ignore[arg-type]
        payload = b"x" * 60000
        os.write(w, payload)
        os.close(w)
        assert await relay.wait_outputs(0.01) is True
        assert bytes(ch.data) == payload

    asyncio.run(main())
