"""The JSON codec every schema2 type shares.

HCS reads what Go's encoding/json writes, so the codec copies its rules rather than Python's:

* keys are the Go json tags (PascalCase, with the tags' quirks such as ``LowMmioGapInMB``), written in
  Go struct field order, which is the order the Python dataclass declares them;
* ``omitempty``: a value field is left out when it is the zero value (``""``, ``0``, ``False``, empty list
  or map); an optional field (a Go pointer, ``X | None`` here) is left out only when it is ``None``, so
  an empty nested object is still written as ``{}`` (HCS needs ``"Plan9": {}`` to add the device);
* map keys are written sorted, as Go sorts them; map values are always written; fields holding raw
  JSON (Go ``interface{}``/``json.RawMessage``, typed ``RawJSON`` here) keep the key order they hold;
* compact output escapes ``<``, ``>``, ``&``, U+2028 and U+2029 the way json.Marshal does and leaves
  other non-ASCII text as UTF-8.

Unknown keys are ignored on input, as Go does. Anything of the wrong shape raises :class:`SchemaError`
naming the path of the offending field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, ClassVar, Self, TypeVar, Union, get_args, get_origin

from hcsshim import errdefs

__all__ = ["RawJSON", "SchemaError", "SchemaObject", "go_json_dumps", "j"]

# A field typed RawJSON holds any JSON value (Go interface{} / json.RawMessage); schema objects in it
# are serialized through their own to_dict.
RawJSON = Any

_INT_RANGES: dict[str, tuple[int, int]] = {
    "u8": (0, 2**8 - 1),
    "u16": (0, 2**16 - 1),
    "u32": (0, 2**32 - 1),
    "u64": (0, 2**64 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "i64": (-(2**63), 2**63 - 1),
}


class SchemaError(ValueError):
    """A document that does not fit the schema; ``path`` names the field (``VirtualMachine.Chipset``)."""

    kind = errdefs.Kind.INVALID_ARGUMENT

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or '<document>'}: {reason}")
        self.path = path
        self.reason = reason


def j(name: str, kind: str = "", *, default: Any = dataclasses.MISSING, factory: Any = None) -> Any:
    """A dataclass field with its Go json tag ``name``; ``kind`` bounds ints (``u32``, ``i64`` ...)."""
    meta = {"json": name, "kind": kind}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    key: str
    kind: str
    hint: Any
    optional: bool


T = TypeVar("T", bound="SchemaObject")


class SchemaObject:
    """Base of every schema2 dataclass: dict and JSON conversion with Go's marshalling rules."""

    __slots__ = ()
    _fields_cache: ClassVar[dict[type, tuple[_Field, ...]]] = {}

    @classmethod
    def _fields(cls) -> tuple[_Field, ...]:
        cached = SchemaObject._fields_cache.get(cls)
        if cached is not None:
            return cached
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = f.metadata.get("json", f.name)
            hint = hints[f.name]
            optional = False
            if _is_union(hint):
                args = [a for a in get_args(hint) if a is not type(None)]
                if len(args) != len(get_args(hint)):
                    optional = True
                hint = args[0] if len(args) == 1 else hint
            out.append(_Field(f.name, key, f.metadata.get("kind", ""), hint, optional))
        result = tuple(out)
        SchemaObject._fields_cache[cls] = result
        return result

    @classmethod
    def json_keys(cls) -> tuple[str, ...]:
        """The json tags of this type in Go field order."""
        return tuple(f.key for f in cls._fields())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self._fields():
            value = getattr(self, f.attr)
            if value is None:
                continue
            if not f.optional and _is_empty(value):
                continue
            out[f.key] = _encode(value, sort_maps=f.hint is not Any)
        return out

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Self:
        if not isinstance(data, dict):
            raise SchemaError(path, f"expected an object for {cls.__name__}, got {_kind(data)}")
        kwargs: dict[str, Any] = {}
        for f in cls._fields():
            if f.key not in data:
                continue
            raw = data[f.key]
            sub = f"{path}.{f.key}" if path else f.key
            if raw is None:
                if f.optional:
                    kwargs[f.attr] = None
                    continue
                # Go leaves the zero value when null meets a value field.
                continue
            kwargs[f.attr] = _decode(f.hint, raw, sub, f.kind)
        return cls(**kwargs)

    def to_json(self, *, indent: int | None = None) -> str:
        return go_json_dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise SchemaError("", f"not JSON: {exc}") from None
        return cls.from_dict(data)


def go_json_dumps(value: Any, *, indent: int | None = None) -> str:
    """JSON text as Go's json.Marshal (or MarshalIndent with two spaces when ``indent``) writes it."""
    if indent is None:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    else:
        text = json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False)
    # These characters only ever appear inside JSON strings, so a textual replace is safe.
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028")):
        text = text.replace(ch, esc)
    return text.replace("\u2029", "\\u2029")


def _is_union(hint: Any) -> bool:
    origin = get_origin(hint)
    return origin is Union or origin is types.UnionType


def _is_empty(value: Any) -> bool:
    if isinstance(value, SchemaObject):
        return False
    if isinstance(value, bool):
        return value is False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str | list | dict | tuple):
        return len(value) == 0
    return False


def _encode(value: Any, *, sort_maps: bool) -> Any:
    # Typed maps are Go maps (written sorted); raw JSON keeps the order it was given in, as a
    # json.RawMessage does, so a document read back re-serializes byte for byte.
    if isinstance(value, SchemaObject):
        return value.to_dict()
    if isinstance(value, dict):
        keys = sorted(value) if sort_maps else list(value)
        return {str(k): _encode(value[k], sort_maps=sort_maps) for k in keys}
    if isinstance(value, list | tuple):
        return [_encode(v, sort_maps=sort_maps) for v in value]
    return value


def _kind(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def _decode(hint: Any, raw: Any, path: str, kind: str) -> Any:
    if hint is Any:
        return raw
    origin = get_origin(hint)
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(raw, list):
            raise SchemaError(path, f"expected a list, got {_kind(raw)}")
        return [_decode(item, v, f"{path}[{i}]", kind) for i, v in enumerate(raw)]
    if origin is dict:
        _, item = get_args(hint)
        if not isinstance(raw, dict):
            raise SchemaError(path, f"expected an object, got {_kind(raw)}")
        return {str(k): _decode(item, v, f"{path}.{k}", kind) for k, v in raw.items()}
    if isinstance(hint, type) and issubclass(hint, SchemaObject):
        return hint.from_dict(raw, path)
    if hint is bool:
        if not isinstance(raw, bool):
            raise SchemaError(path, f"expected a boolean, got {_kind(raw)}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            if isinstance(raw, float) and raw.is_integer():
                raw = int(raw)
            else:
                raise SchemaError(path, f"expected an integer, got {_kind(raw)}")
        lo, hi = _INT_RANGES.get(kind, (-(2**63), 2**64 - 1))
        if not lo <= raw <= hi:
            raise SchemaError(path, f"{raw} is out of range for {kind or 'an integer'}")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise SchemaError(path, f"expected a number, got {_kind(raw)}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise SchemaError(path, f"expected a string, got {_kind(raw)}")
        return raw
    raise SchemaError(path, f"unsupported schema type {hint!r}")  # pragma: no cover - a schema bug
