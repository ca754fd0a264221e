"""Host side of pod networking: read the CNI netns, join its interfaces to taps with tc redirects,
hot-add the NICs to the UVM and describe them to the guest; the port-forward relay."""

from hcsshim.network.errors import NetworkError
from hcsshim.network.netns import Address, Link, PodNetns, Route, read_netns
from hcsshim.network.pod import PodNetwork, guest_network_spec, namespace_id_for, pod_netns_path

__all__ = [
    "Address",
    "Link",
    "NetworkError",
    "PodNetns",
    "PodNetwork",
    "Route",
    "guest_network_spec",
    "namespace_id_for",
    "pod_netns_path",
    "read_netns",
]
