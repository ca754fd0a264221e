"""Command-line flags the way containerd passes them: Go ``flag`` syntax.

Single-dash long names (``-namespace NS``), ``-name=value`` and ``--name`` work too, bool flags take no
separate value, and parsing stops at the first positional word (the subcommand: ``start``, ``delete``,
``serve``). Unknown flags are an error, as in Go, because containerd never invents flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hcsshim import errdefs

BOOL_FLAGS = frozenset({"debug", "v", "version", "info"})
VALUE_FLAGS = frozenset(
    {
        "namespace",
        "address",
        "publish-binary",
        "id",
        "bundle",
        "socket",
        "listen-fd",
        "ready-fd",
        "debug-socket",
    }
)


class FlagError(ValueError):
    kind = errdefs.Kind.INVALID_ARGUMENT
    pass


@dataclass
class Flags:
    namespace: str = ""
    address: str = ""
    publish_binary: str = ""
    id: str = ""
    bundle: str = ""
    socket: str = ""
    listen_fd: int = -1
    ready_fd: int = -1
    debug: bool = False
    version: bool = False
    info: bool = False
    args: list[str] = field(default_factory=list)

    @property
    def action(self) -> str:
        return self.args[0] if self.args else ""


def _truthy(text: str) -> bool:
    if text.lower() in ("1", "t", "true"):
        return True
    if text.lower() in ("0", "f", "false", ""):
        return False
    raise FlagError(f"invalid boolean value {text!r}")


def parse(argv: Sequence[str]) -> Flags:
    flags = Flags()
    values: dict[str, str] = {}
    bools: dict[str, bool] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name = arg.lstrip("-")
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in BOOL_FLAGS:
            bools[name] = True if value is None else _truthy(value)
        elif name in VALUE_FLAGS:
            if value is None:
                i += 1
                if i >= len(argv):
                    raise FlagError(f"flag needs an argument: -{name}")
                value = argv[i]
            values[name] = value
        else:
            raise FlagError(f"flag provided but not defined: -{name}")
        i += 1
    flags.args = list(argv[i:])
    flags.namespace = values.get("namespace", "")
    flags.address = values.get("address", "")
    flags.publish_binary = values.get("publish-binary", "")
    flags.id = values.get("id", "")
    flags.bundle = values.get("bundle", "")
    flags.socket = values.get("socket", "")
    try:
        flags.listen_fd = int(values.get("listen-fd", "-1"))
        flags.ready_fd = int(values.get("ready-fd", "-1"))
    except ValueError as exc:
        raise FlagError(f"invalid file descriptor flag: {exc}") from exc
    flags.debug = bools.get("debug", False)
    flags.version = bools.get("v", False) or bools.get("version", False)
    flags.info = bools.get("info", False)
    return flags
