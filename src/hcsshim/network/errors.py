"""The one error kind of the network package: the message names the namespace or device at fault."""


class NetworkError(Exception):
    pass
