"""Address forms understood by the client and the server (the subset of containerd's dialer for unix).

- ``unix:///abs/path`` or ``/abs/path`` (also ``./rel``): a path socket;
- ``\\0name``, ``@name`` or a bare ``name`` without scheme and without ``/``: an abstract socket, as
  containerd's ``AnonDialer`` treats addresses without a scheme.
"""

from __future__ import annotations

UNIX_SCHEME = "unix://"
# sun_path is 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107


def socket_address(address: str) -> str:
    """The string to hand to ``connect``/``bind``: a filesystem path or ``"\\0name"``."""
    if address.startswith(UNIX_SCHEME):
        path = address[len(UNIX_SCHEME) :]
    elif address.startswith("@"):
        path = "\0" + address[1:]
    elif address.startswith(("\0", "/", ".")):
        path = address
    elif "://" in address:
        raise ValueError(f"unsupported ttrpc address scheme: {address!r}")
    else:
        path = "\0" + address
    if not path or path == "\0":
        raise ValueError(f"empty ttrpc address: {address!r}")
    if len(path.encode()) > MAX_UNIX_PATH:
        raise ValueError(f"unix socket path longer than {MAX_UNIX_PATH} bytes: {address!r}")
    return path


def is_abstract(path: str) -> bool:
    return path.startswith("\0")
