"""ttrpc client and server on asyncio (unary RPCs, the protocol containerd speaks to shims).

Layout: :mod:`.frame` is the sans-IO frame codec (plus the read loop both ends share), :mod:`.status`
the codes and errors, :mod:`.client` and :mod:`.server` the asyncio halves. Logs go to the
``hcsshim.ttrpc`` logger as ``key=value`` text.
"""

from hcsshim.ttrpc.address import socket_address
from hcsshim.ttrpc.client import Client
from hcsshim.ttrpc.frame import MAX_MESSAGE_LENGTH, OversizedMessageError, ProtocolError
from hcsshim.ttrpc.server import NAMESPACE_KEY, Context, Handler, MethodTable, Server
from hcsshim.ttrpc.status import Code, ConnectionClosedError, TtrpcError

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "NAMESPACE_KEY",
    "Client",
    "Code",
    "ConnectionClosedError",
    "Context",
    "Handler",
    "MethodTable",
    "OversizedMessageError",
    "ProtocolError",
    "Server",
    "TtrpcError",
    "socket_address",
]
