"""Shim logging: logrus-style ``key=value`` lines on fd 2, which the serve process points at the bundle's
``log`` FIFO (containerd copies that FIFO into its own log, reference §2.10)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

RUNTIME = "io.containerd.runhcs.v1"
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-._/:@+" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, str] | None = None) -> None:
        super().__init__()
        self.fields = fields or {}

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs * 1000):06d}Z"
        level = record.levelname.lower().replace("critical", "fatal")
        parts = [f"time={stamp}", f"level={level}", f"msg={_quote(record.getMessage())}"]
        parts += [f"{k}={_quote(v)}" for k, v in self.fields.items()]
        parts.append(f"logger={record.name}")
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def level_number(name: str) -> int:
    return _LEVELS.get(name.lower(), logging.INFO)


def configure(level: str, fields: dict[str, str], runtime: str = RUNTIME) -> None:
    """Send every logger to stderr in logfmt; called once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter({"runtime": runtime, **fields}))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))
    if level.lower() != "trace":
        # qemu.qmp logs every QMP state transition at debug; keep that for trace only.
        logging.getLogger("qemu").setLevel(max(logging.INFO, level_number(level)))


def redirect_stderr_to_fifo(path: str) -> bool:
    """dup2 the bundle's log FIFO onto fd 2. containerd holds it open for reading, so opening it for
    writing does not block; without a reader (no containerd) the open fails and logs go nowhere."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    # Blocking writes: a slow reader should slow logging down, not lose lines.
    os.set_blocking(fd, True)
    os.dup2(fd, 2)
    os.close(fd)
    with contextlib.suppress(Exception):
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    return True
