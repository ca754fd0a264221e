"""Structured logging for the agent: one ``key=value`` line per event on stderr (or JSON lines)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def __init__(self, as_json: bool = False) -> None:
        super().__init__()
        self._json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                fields[key] = value
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        if self._json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: Any) -> str:
    s = str(value)
    if not s or any(c in s for c in ' "=\n\t'):
        return json.dumps(s)
    return s


def setup(level: str = "info", as_json: bool = False) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(as_json))
    root = logging.getLogger("hcsshim.guest")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return root


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"hcsshim.guest.{name}")


class ChannelHandler(logging.Handler):
    """Forwards formatted log lines to the host (the GCS log port, 109) without ever blocking.

    Lines are queued and written by a task; when the host does not keep up, lines are dropped
    rather than stalling the agent.
    """

    def __init__(self, write: Any, max_queued: int = 1000) -> None:
        super().__init__()
        import asyncio

        self._queue: asyncio.Queue[bytes] = asyncio.Queue(max_queued)
        self._write = write
        self._task = asyncio.get_running_loop().create_task(self._pump())

    def emit(self, record: logging.LogRecord) -> None:
        import asyncio

        try:
            self._queue.put_nowait(self.format(record).encode() + b"\n")
        except asyncio.QueueFull:
            pass
        except Exception:
            self.handleError(record)

    async def _pump(self) -> None:
        while True:
            line = await self._queue.get()
            try:
                await self._write(line)
            except Exception:
                return

    def close(self) -> None:
        self._task.cancel()
        logging.getLogger("hcsshim.guest").removeHandler(self)
        super().close()


def forward_to(write: Any, as_json: bool = True) -> ChannelHandler:
    handler = ChannelHandler(write)
    handler.setFormatter(KeyValueFormatter(as_json))
    logging.getLogger("hcsshim.guest").addHandler(handler)
    return handler
