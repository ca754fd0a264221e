"""A shim host without a VM, for tests: the shim's own local agent host, with state in a temp dir.

Set ``HCSSHIM_SHIM_HOST_FACTORY=tests.support.local_host:create`` (with the repository root on
``PYTHONPATH``) in the environment of containerd-shim-runhcs-v1's server to exercise containerd → shim →
bridge → runc without QEMU.
"""

from __future__ import annotations

import tempfile
from typing import Any

from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.shim.local import LocalHost, start_agent


async def create(host_id: str, spec: dict[str, Any], options: runhcs_pb2.Options | None) -> LocalHost:
    return await start_agent(host_id, tempfile.mkdtemp(prefix="lh", dir="/tmp"))
