"""The guest transport and the device ABI, shared by the host and the guest agent.

A leaf package: it imports nothing but the standard library (the guest agent, copied into the UVM
image, imports it). ``codec`` is the mux wire format, ``transports`` the byte streams it runs over
and the one parser of HvSocket addresses, ``session`` the channels and their credit, ``abi`` the
ports, device addresses, mount paths and guest resource names.
"""

from hcsshim.hvsock import abi
from hcsshim.hvsock.codec import Frame, FrameDecoder, Kind, MuxProtocolError, encode_frame
from hcsshim.hvsock.session import DEFAULT_WINDOW, Channel, Listener, MuxSession, Role
from hcsshim.hvsock.transports import (
    Address,
    FdTransport,
    StreamTransport,
    Transport,
    connect_unix,
    connect_vsock,
    open_char_device,
    open_transport,
    parse_address,
)

__all__ = [
    "DEFAULT_WINDOW",
    "Address",
    "Channel",
    "FdTransport",
    "Frame",
    "FrameDecoder",
    "Kind",
    "Listener",
    "MuxProtocolError",
    "MuxSession",
    "Role",
    "StreamTransport",
    "Transport",
    "abi",
    "connect_unix",
    "connect_vsock",
    "encode_frame",
    "open_char_device",
    "open_transport",
    "parse_address",
]
