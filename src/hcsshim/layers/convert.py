"""Where untrusted layer content is parsed: the tar -> ext4 VHD step behind one interface.

The differ (and anything else that turns a layer tar into a VHD) holds a LayerConverter and never
knows where the parsing runs: on the host (HostConverter, the default) or inside a service VM
(implemented above this package, because it boots a UVM, and handed in by the daemon that composes
them)."""

from __future__ import annotations

import asyncio
import tarfile
from typing import Protocol

from hcsshim.layers import tar2ext4
from hcsshim.layers.ext4 import Ext4Error


class LayerConverter(Protocol):
    """Writes the ext4 image of a layer tar, with a VHD footer, to ``out_path``, atomically: a
    failure leaves no file at ``out_path`` and raises an error naming ``layer``."""

    name: str

    async def convert(self, tar_path: str, out_path: str, *, layer: str) -> tar2ext4.Result: ...

    async def close(self) -> None: ...


class HostConverter:
    """Parses the tar in this process (a worker thread)."""

    name = "host"

    def __init__(self, tmp_dir: str | None = None) -> None:
        self._tmp_dir = tmp_dir

    async def convert(self, tar_path: str, out_path: str, *, layer: str) -> tar2ext4.Result:
        opts = tar2ext4.Options(append_vhd_footer=True)
        try:
            return await asyncio.to_thread(tar2ext4.convert, tar_path, out_path, opts, tmp_dir=self._tmp_dir)
        except (tar2ext4.LayerError, tarfile.TarError, Ext4Error, EOFError) as e:
            raise tar2ext4.LayerError(f"layer {layer}: {e}") from e

    async def close(self) -> None:
        return None
