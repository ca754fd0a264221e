"""Typed parsing of annotation values.

Upstream hcsshim logs a warning and falls back to the default when an annotation value does not
parse (``internal/oci/annotations.go``). We raise :class:`AnnotationError` instead, naming the key and
the value: a pod that silently gets 1 GiB instead of the 16 GiB its author asked for is harder to
debug than one that fails to start with a message saying which annotation was wrong.

The accepted spellings match Go's strconv: booleans are ``1 t T TRUE true True 0 f F FALSE false False``,
integers are base 10 with an optional sign.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

from hcsshim import errdefs
from hcsshim.annotations.keys import EXPANSIONS, KNOWN, KNOWN_PREFIXES

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_INT = re.compile(r"[+-]?[0-9]+\Z")

Annotations = Mapping[str, str]


class AnnotationError(ValueError):
    """An annotation whose value hcsshim cannot use: the caller's input is wrong."""

    kind = errdefs.Kind.INVALID_ARGUMENT

    def __init__(self, key: str, value: str, reason: str) -> None:
        super().__init__(f"annotation {key}={value!r}: {reason}")
        self.key = key
        self.value = value
        self.reason = reason


def parse_bool(a: Annotations, key: str, default: bool) -> bool:
    if key not in a:
        return default
    value = a[key]
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise AnnotationError(key, value, "not a boolean (true/false/1/0)")


def parse_optional_bool(a: Annotations, key: str) -> bool | None:
    """A boolean that stays None (omitted from documents) when the annotation is absent."""
    return parse_bool(a, key, False) if key in a else None


def _parse_int(a: Annotations, key: str, default: int, lo: int, hi: int, what: str) -> int:
    if key not in a:
        return default
    value = a[key]
    return _to_int(key, value, value, lo, hi, what)


def _to_int(key: str, whole: str, text: str, lo: int, hi: int, what: str) -> int:
    if not _INT.match(text):
        raise AnnotationError(key, whole, f"not a base-10 {what}")
    n = int(text)
    if not lo <= n <= hi:
        raise AnnotationError(key, whole, f"out of range for {what} ({lo}..{hi})")
    return n


def parse_int32(a: Annotations, key: str, default: int) -> int:
    return _parse_int(a, key, default, -(2**31), 2**31 - 1, "int32")


def parse_uint32(a: Annotations, key: str, default: int) -> int:
    return _parse_int(a, key, default, 0, 2**32 - 1, "uint32")


def parse_uint64(a: Annotations, key: str, default: int) -> int:
    return _parse_int(a, key, default, 0, 2**64 - 1, "uint64")


def parse_string(a: Annotations, key: str, default: str) -> str:
    return a.get(key, default)


def _parse_csv(a: Annotations, key: str, default: list[int], hi: int, what: str) -> list[int]:
    if key not in a:
        return list(default)
    value = a[key]
    if value == "":
        return []
    return [_to_int(key, value, part.strip(), 0, hi, what) for part in value.split(",")]


def parse_csv_uint32(a: Annotations, key: str, default: list[int] | None = None) -> list[int]:
    return _parse_csv(a, key, default or [], 2**32 - 1, "uint32 list")


def parse_csv_uint64(a: Annotations, key: str, default: list[int] | None = None) -> list[int]:
    return _parse_csv(a, key, default or [], 2**64 - 1, "uint64 list")


def parse_guid(a: Annotations, key: str) -> str | None:
    """A GUID in canonical lower-case form, or None when absent or empty."""
    value = a.get(key, "")
    if value == "":
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise AnnotationError(key, value, "not a GUID") from None


def parse_choice(a: Annotations, key: str, choices: tuple[str, ...], default: str) -> str:
    if key not in a:
        return default
    value = a[key]
    if value.lower() not in choices:
        raise AnnotationError(key, value, f"must be one of {', '.join(choices)}")
    return value.lower()


def is_known(key: str) -> bool:
    return key in KNOWN or key.startswith(KNOWN_PREFIXES)


def unknown_annotations(a: Annotations) -> list[str]:
    """io.microsoft.* keys hcsshim does not know (typos, or features newer than this port), sorted."""
    return sorted(k for k in a if k.startswith("io.microsoft.") and not is_known(k))


def expand_annotations(a: Annotations) -> dict[str, str]:
    """``a`` with expansion annotations (disable-unsafe-operations) spelled out.

    An expansion sets each of its keys to its own value; a key given explicitly with a different value
    is a conflict, as upstream's ProcessAnnotations reports it.
    """
    out = dict(a)
    for key, targets in EXPANSIONS.items():
        if key not in a:
            continue
        value = a[key]
        parse_bool(a, key, False)
        for target in targets:
            if target in a and a[target] != value:
                raise AnnotationError(
                    target, a[target], f"conflicts with expansion annotation {key}={value!r}"
                )
            out[target] = value
    return out
