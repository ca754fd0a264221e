"""The part of containerd's filter syntax (``filters`` package) that snapshot listing uses:
``field==value``, ``field!=value``, ``field~=regexp`` or a bare ``field`` (present), joined by ``,``
(and); a list of filters is or'ed. Fields: ``name``, ``parent``, ``kind`` and ``labels.<key>``
(``labels."key.with.dots"``); values may be double-quoted."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hcsshim.snapshotter.errors import invalid

Getter = Callable[[str], str | None]


@dataclass(frozen=True)
class Term:
    field: str
    op: str  # "==", "!=", "~=", "" (present)
    value: str

    def match(self, get: Getter) -> bool:
        actual = get(self.field)
        if self.op == "":
            return actual is not None
        if self.op == "==":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        return actual is not None and re.search(self.value, actual) is not None


def _split(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf = ""
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quoted and i + 1 < len(text):
            buf += text[i : i + 2]
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append(buf)
            buf = ""
        else:
            buf += ch
        i += 1
    if quoted:
        raise invalid(f"filter {text!r}: unterminated quote")
    parts.append(buf)
    return parts


def _unquote(s: str, filt: str) -> str:
    s = s.strip()
    if s.startswith('"'):
        try:
            value = json.loads(s)
        except ValueError:
            raise invalid(f"filter {filt!r}: bad quoted string {s!r}") from None
        if not isinstance(value, str):
            raise invalid(f"filter {filt!r}: bad quoted string {s!r}")
        return value
    return s


def _field(raw: str, filt: str) -> str:
    parts = [_unquote(p, filt) for p in _split(raw.strip(), ".")]
    if not parts or not all(parts):
        raise invalid(f"filter {filt!r}: bad field {raw!r}")
    if parts[0] == "labels" and len(parts) >= 2:
        return "labels." + ".".join(parts[1:])
    if len(parts) == 1 and parts[0] in ("name", "parent", "kind"):
        return parts[0]
    raise invalid(f"filter {filt!r}: unknown field {raw!r} (name, parent, kind, labels.<key>)")


def parse(filt: str) -> list[Term]:
    terms: list[Term] = []
    for raw in _split(filt, ","):
        if not raw.strip():
            raise invalid(f"filter {filt!r}: empty term")
        m = re.search(r"(==|!=|~=)", raw)
        if m is None:
            terms.append(Term(_field(raw, filt), "", ""))
            continue
        value = _unquote(raw[m.end() :], filt)
        if m.group(1) == "~=":
            try:
                re.compile(value)
            except re.error as e:
                raise invalid(f"filter {filt!r}: bad regular expression {value!r}: {e}") from None
        terms.append(Term(_field(raw[: m.start()], filt), m.group(1), value))
    return terms


def compile_filters(filters: Sequence[str]) -> Callable[[Getter], bool]:
    parsed = [parse(f) for f in filters if f]
    if not parsed:
        return lambda get: True
    return lambda get: any(all(t.match(get) for t in terms) for terms in parsed)
