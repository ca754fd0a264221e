"""The one error type of the network package: the message names the namespace or device at fault."""

from __future__ import annotations

from hcsshim import errdefs


class NetworkError(Exception):
    """The pod's network could not be set up as asked. FailedPrecondition unless the site says
    otherwise (a missing namespace is NotFound, a command that hung DeadlineExceeded)."""

    def __init__(self, message: str, kind: errdefs.Kind = errdefs.Kind.FAILED_PRECONDITION) -> None:
        super().__init__(message)
        self.kind = kind
