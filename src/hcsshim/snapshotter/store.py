"""Snapshot metadata in SQLite (stdlib): one row per snapshot, keyed by containerd's backend key.

Every change is one transaction, so a crash leaves the previous state; the files a row points at are
created before the row (and removed after it), and :meth:`Snapshotter.cleanup` removes files that no
row references."""

from __future__ import annotations

import contextlib
import enum
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from hcsshim.snapshotter.errors import already_exists, not_found, precondition


class Kind(enum.IntEnum):
    # containerd.services.snapshots.v1.Kind numbers.
    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass
class Record:
    id: int
    key: str
    parent: str
    kind: Kind
    created_ns: int
    updated_ns: int
    labels: dict[str, str] = field(default_factory=dict)
    layer: str = ""  # committed: directory name under layers/
    size: int = 0
    inodes: int = 0
    extract: bool = False  # active: being unpacked (a host directory, no scratch disk)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  parent TEXT NOT NULL DEFAULT '',
  kind INTEGER NOT NULL,
  created_ns INTEGER NOT NULL,
  updated_ns INTEGER NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  layer TEXT NOT NULL DEFAULT '',
  size INTEGER NOT NULL DEFAULT 0,
  inodes INTEGER NOT NULL DEFAULT 0,
  extract INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
CREATE INDEX IF NOT EXISTS snapshots_layer ON snapshots(layer);
"""
_COLUMNS = "id, key, parent, kind, created_ns, updated_ns, labels, layer, size, inodes, extract"


def _row(r: tuple[object, ...]) -> Record:
    rid, key, parent, kind, created, updated, labels, layer, size, inodes, extract = r
    return Record(
        id=int(str(rid)),
        key=str(key),
        parent=str(parent),
        kind=Kind(int(str(kind))),
        created_ns=int(str(created)),
        updated_ns=int(str(updated)),
        labels=dict(json.loads(str(labels))),
        layer=str(layer),
        size=int(str(size)),
        inodes=int(str(inodes)),
        extract=bool(extract),
    )


class Store:
    def __init__(self, path: str) -> None:
        # One connection used from worker threads, always under the snapshotter's lock.
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Rows change only if the block (including the file work in it) completes."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get(self, key: str) -> Record:
        cur = self.db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE key = ?", (key,))
        r = cur.fetchone()
        if r is None:
            raise not_found(f"snapshot {key!r} does not exist")
        return _row(r)

    def find(self, key: str) -> Record | None:
        try:
            return self.get(key)
        except Exception:
            return None

    def all(self) -> list[Record]:
        return [_row(r) for r in self.db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY id")]

    def children(self, key: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM snapshots WHERE parent = ?", (key,)).fetchone()[0])

    def layer_refs(self, layer: str) -> int:
        cur = self.db.execute("SELECT COUNT(*) FROM snapshots WHERE layer = ?", (layer,))
        return int(cur.fetchone()[0])

    def parents(self, rec: Record) -> list[Record]:
        """Nearest parent first, down to the base (containerd's ParentIDs order)."""
        chain: list[Record] = []
        key = rec.parent
        while key:
            p = self.get(key)
            chain.append(p)
            key = p.parent
        return chain

    def create(self, key: str, parent: str, kind: Kind, labels: dict[str, str], *, extract: bool) -> Record:
        if parent:
            p = self.find(parent)
            if p is None:
                raise not_found(f"parent snapshot {parent!r} does not exist")
            if p.kind != Kind.COMMITTED:
                raise precondition(f"parent {parent!r} is not committed")
        now = time.time_ns()
        try:
            cur = self.db.execute(
                "INSERT INTO snapshots (key, parent, kind, created_ns, updated_ns, labels, extract) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, parent, int(kind), now, now, json.dumps(labels, sort_keys=True), int(extract)),
            )
        except sqlite3.IntegrityError:
            raise already_exists(f"snapshot {key!r} already exists") from None
        return self.get_id(int(cur.lastrowid or 0))

    def get_id(self, rid: int) -> Record:
        r = self.db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE id = ?", (rid,)).fetchone()
        if r is None:
            raise not_found(f"snapshot id {rid} does not exist")
        return _row(r)

    def delete(self, key: str) -> None:
        self.db.execute("DELETE FROM snapshots WHERE key = ?", (key,))

    def commit(
        self, key: str, name: str, labels: dict[str, str], layer: str, size: int, inodes: int
    ) -> Record:
        now = time.time_ns()
        text = json.dumps(labels, sort_keys=True)
        values = [name, int(Kind.COMMITTED), text, layer, size, inodes, now, now]
        try:
            self.db.execute(
                "UPDATE snapshots SET key = ?, kind = ?, labels = ?, layer = ?, size = ?, inodes = ?, "
                "extract = 0, created_ns = ?, updated_ns = ? WHERE key = ?",
                (*values, key),
            )
        except sqlite3.IntegrityError:
            raise already_exists(f"snapshot {name!r} already exists") from None
        return self.get(name)

    def set_labels(self, key: str, labels: dict[str, str]) -> Record:
        self.db.execute(
            "UPDATE snapshots SET labels = ?, updated_ns = ? WHERE key = ?",
            (json.dumps(labels, sort_keys=True), time.time_ns(), key),
        )
        return self.get(key)
