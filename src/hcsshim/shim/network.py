"""The pod's network as the shim wires it: CNI's netns into the pod's UVM.

A sandbox (or standalone) task whose spec names a network namespace gets one NIC per CNI interface
(``hcsshim.network.PodNetwork``); the namespace is read before the UVM boots so a missing or empty
one fails the task without a VM. A spec without a network namespace is a host-network pod: its
containers run in the UVM's own network namespace (a VM cannot share the node's network stack; see
README "Pod networking"). The guest never sees the host's netns path: ``guest_spec`` replaces it
with the guest's namespace ID.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hcsshim.hvsock.abi import PORT_FORWARD_PORT
from hcsshim.network import NetworkError, PodNetwork, guest_network_spec, pod_netns_path
from hcsshim.network.pod import NicTarget
from hcsshim.network.portforward import Dial, MuxChannel

if TYPE_CHECKING:
    from hcsshim.uvm import UtilityVM

log = logging.getLogger("hcsshim.shim.network")


async def open_pod_network(spec: dict[str, Any]) -> PodNetwork | None:
    path = pod_netns_path(spec)
    if not path:
        log.info("no pod network namespace: the containers get the UVM's own network (loopback only)")
        return None
    return await PodNetwork.open(path)


PORT_FORWARD_DIAL_TIMEOUT = 10.0


def port_forward_dialer(vm: UtilityVM) -> Dial:
    """Dial the guest's port-forward service on the UVM's mux."""

    async def dial() -> MuxChannel:
        session = vm.session
        if session is None:
            raise ConnectionError(f"uvm {vm.id} has no guest connection")
        channel: MuxChannel = await session.dial(PORT_FORWARD_PORT, timeout=PORT_FORWARD_DIAL_TIMEOUT)
        return channel

    return dial


def guest_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return guest_network_spec(spec)


__all__ = ["NetworkError", "PodNetwork", "guest_spec", "open_pod_network"]


# The pod network of each UVM this shim created, by UVM id, with the UVM its NICs are in: the Pod
# closes it with the VM.
_networks: dict[str, tuple[PodNetwork, NicTarget]] = {}


def register(vm: UtilityVM, net: PodNetwork) -> None:
    _networks[vm.id] = (net, vm)


async def detach(host_id: str) -> None:
    """Before the VM goes: the guest and QEMU let go of the NICs (bounded, best effort)."""
    entry = _networks.get(host_id)
    if entry is not None:
        net, vm = entry
        await net.detach(vm)


async def release(host_id: str) -> None:
    """After the VM is gone: taps and tc filters deleted, the namespace file closed."""
    entry = _networks.pop(host_id, None)
    if entry is not None:
        await entry[0].release()
