"""The suite's slow-callback watch itself: a blocked loop is seen, a busy but yielding one is not."""

from __future__ import annotations

import asyncio
import time

from tests.support.loop_watch import SLOW_CALLBACK_SECONDS, WATCH


def test_a_callback_that_blocks_the_loop_is_reported() -> None:
    async def blocks() -> None:
        time.sleep(SLOW_CALLBACK_SECONDS * 2)

    WATCH.take()
    asyncio.run(blocks())
    seen = WATCH.take()  # taken here so the autouse check does not fail this test
    assert len(seen) == 1 and "held its loop" in seen[0] and "blocks" in seen[0], seen


def test_a_loop_that_yields_is_not_reported() -> None:
    async def yields() -> None:
        for _ in range(4):
            await asyncio.sleep(SLOW_CALLBACK_SECONDS / 2)

    asyncio.run(yields())
    assert WATCH.take() == []
