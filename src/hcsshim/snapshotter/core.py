"""The lcow snapshotter's operations (synchronous; the gRPC service runs them in worker threads).

Layout under the root::

    metadata.db              snapshot rows (store.py)
    snapshots/<id>/          an active snapshot: fs/ + work/ while unpacking, sandbox.vhd for a container
    layers/<name>/layer.vhd  a committed layer (name = chain ID hex when known: shared by every
                             snapshot, image and namespace with that chain); mnt/ its host loop mount
    tmp/                     commits, applies in progress and removals; emptied at start
    convert/                 the host converter's private unpack directories; emptied at start
    empty/                   an empty lower directory

Unpack through containerd 1.6's walking differ writes into an overlay upperdir on the host, so Prepare
of an ``extract-`` key returns a plain overlay; Commit turns that directory into an ext4 VHD (its
overlay whiteouts kept), written under tmp/ and renamed into layers/, so a crash never leaves a
half-written layer. With the lcow differ (containerd 1.7.4+/2.x, differ.py) the same overlay mount only
names the snapshot: the differ writes ``snapshots/<id>/layer.vhd`` from the layer tar, the upperdir stays
empty, and Commit adopts that VHD as it is. A container snapshot gets a sparse ext4 scratch VHD and two
mounts (see layers.lcow_mount)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from hcsshim.layers import lcow_mount, vhd
from hcsshim.layers.ext4 import Ext4Error, make_ext4
from hcsshim.snapshotter import filters, hostmount
from hcsshim.snapshotter.errors import (
    Kind as ErrKind,
)
from hcsshim.snapshotter.errors import (
    SnapshotError,
    invalid,
    not_found,
    not_implemented,
    precondition,
)
from hcsshim.snapshotter.store import Kind, Record, Store

log = logging.getLogger("hcsshim.snapshotter")

LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_ROOTFS_SIZE_GB = "containerd.io/snapshot/io.microsoft.container.storage.rootfs.size-gb"
UNPACK_KEY_PREFIX = "extract-"
APPLIED_FILE = "applied.json"  # beside an applied layer.vhd in an unpack snapshot: what the differ saw
DEFAULT_SCRATCH_GB = 20
_CHAIN = re.compile(r"^sha256:([0-9a-f]{64})$")
GiB = 1024**3


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...]


def user_key(key: str) -> str:
    """The client's key inside containerd's backend key ``<namespace>/<id>/<key>``."""
    parts = key.split("/", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[2]
    return key


def is_unpack(key: str, labels: dict[str, str]) -> bool:
    return user_key(key).startswith(UNPACK_KEY_PREFIX) or LABEL_SNAPSHOT_REF in labels


def _disk_usage(path: str) -> tuple[int, int]:
    """Allocated bytes and inodes below path, hard links counted once (containerd's fs.DiskUsage)."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, n))
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                continue
            seen.add(ident)
            size += st.st_blocks * 512
    return size, len(seen)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_scratch(path: str, size_gb: int) -> None:
    """A sparse fixed VHD holding an empty ext4 (lazy init: only metadata blocks are written)."""
    size = size_gb * GiB
    with open(path, "wb") as f:
        f.truncate(size)
    argv = ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"]
    proc = subprocess.run([*argv, path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SnapshotError(ErrKind.INTERNAL, f"mkfs.ext4 of scratch {path} failed: {proc.stderr.strip()}")
    vhd.append_footer_to_path(path)


class Snapshotter:
    def __init__(
        self, root: str, *, scratch_size_gb: int = DEFAULT_SCRATCH_GB, host_mounts: bool = True
    ) -> None:
        self.root = os.path.abspath(root)
        self.scratch_size_gb = scratch_size_gb
        self.host_mounts = host_mounts
        for d in ("snapshots", "layers", "tmp", "empty", "convert"):
            os.makedirs(os.path.join(self.root, d), mode=0o711, exist_ok=True)
        for n in os.listdir(self.convert_dir):  # a crash's leftovers (no converter runs yet)
            shutil.rmtree(os.path.join(self.convert_dir, n), ignore_errors=True)
        self._lock = threading.RLock()
        self._inflight: set[str] = set()  # tmp/ entries of conversions running outside the lock
        self.store = Store(os.path.join(self.root, "metadata.db"))
        self.cleanup()

    # ---- paths ---------------------------------------------------------------------------------

    def _snap_dir(self, rec: Record) -> str:
        return os.path.join(self.root, "snapshots", str(rec.id))

    def layer_dir(self, layer: str) -> str:
        return os.path.join(self.root, "layers", layer)

    @property
    def empty(self) -> str:
        return os.path.join(self.root, "empty")

    @property
    def convert_dir(self) -> str:
        return os.path.join(self.root, "convert")

    # ---- operations ----------------------------------------------------------------------------

    def prepare(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        return self._create(key, parent, labels, Kind.ACTIVE)

    def view(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        return self._create(key, parent, labels, Kind.VIEW)

    def _create(self, key: str, parent: str, labels: dict[str, str], kind: Kind) -> list[Mount]:
        if not key:
            raise invalid("snapshot key is empty")
        extract = kind == Kind.ACTIVE and is_unpack(key, labels)
        size_gb = self._scratch_size(labels)
        with self._lock:
            if extract and labels.get(LABEL_SNAPSHOT_REF):
                self._check_unpacked(labels[LABEL_SNAPSHOT_REF], parent)
            with self.store.transaction():
                rec = self.store.create(key, parent, kind, labels, extract=extract)
                d = self._snap_dir(rec)
                shutil.rmtree(d, ignore_errors=True)  # a leftover of a crash before this id's commit
                os.mkdir(d, 0o711)
                try:
                    if extract:
                        os.mkdir(os.path.join(d, "fs"), 0o755)
                        os.mkdir(os.path.join(d, "work"), 0o700)
                    elif kind == Kind.ACTIVE:
                        make_scratch(os.path.join(d, lcow_mount.SCRATCH_FILES[0]), size_gb)
                    # In the transaction: a parent that cannot be mounted leaves no snapshot behind.
                    mounts = self._mounts(rec)
                except BaseException:
                    shutil.rmtree(d, ignore_errors=True)
                    raise
            log.info("snapshot %r created (%s, unpack=%s)", key, kind.name, extract)
            return mounts

    def _check_unpacked(self, ref: str, parent: str) -> None:
        """containerd's remote-snapshot protocol: AlreadyExists tells the metadata layer to look for a
        committed snapshot labelled with the ref over this parent (List with that filter) and adopt it,
        so a layer unpacked in one namespace is not unpacked again in another."""
        for r in self.store.all():
            if r.kind == Kind.COMMITTED and r.labels.get(LABEL_SNAPSHOT_REF) == ref and r.parent == parent:
                raise SnapshotError(ErrKind.ALREADY_EXISTS, f"layer {ref} is already unpacked as {r.key!r}")

    def _scratch_size(self, labels: dict[str, str]) -> int:
        raw = labels.get(LABEL_ROOTFS_SIZE_GB)
        if raw is None:
            return self.scratch_size_gb
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if size <= 0:
            raise invalid(f"label {LABEL_ROOTFS_SIZE_GB}={raw!r} is not a positive number of GB")
        return size

    def mounts(self, key: str) -> list[Mount]:
        with self._lock:
            rec = self.store.get(key)
            if rec.kind == Kind.COMMITTED:
                raise precondition(f"snapshot {key!r} is committed: it has no mounts")
            return self._mounts(rec)

    def _layer_mount(self, layer: str) -> str:
        d = self.layer_dir(layer)
        target = os.path.join(d, "mnt")
        if self.host_mounts:
            try:
                hostmount.mount_layer(os.path.join(d, lcow_mount.LAYER_FILE), target)
            except hostmount.HostMountError as e:
                raise SnapshotError(ErrKind.INTERNAL, f"layer {layer}: {e}") from e
        return target

    def _mounts(self, rec: Record) -> list[Mount]:
        parents = self.store.parents(rec)
        layer_dirs = [self.layer_dir(p.layer) for p in parents]
        lowers = [self._layer_mount(p.layer) for p in parents]
        d = self._snap_dir(rec)
        if rec.kind == Kind.ACTIVE and rec.extract:
            options = (
                f"workdir={d}/work",
                f"upperdir={d}/fs",
                "lowerdir=" + ":".join(lowers or [self.empty]),
            )
            return [Mount("overlay", "overlay", options)]
        if lowers:
            host = Mount("overlay", "overlay", ("ro", "lowerdir=" + ":".join([*lowers, self.empty])))
        else:
            host = Mount("bind", self.empty, ("ro", "rbind"))
        if rec.kind == Kind.ACTIVE:
            lcow = Mount(lcow_mount.TYPE, d, tuple(lcow_mount.options(True, layer_dirs)))
        elif layer_dirs:
            lcow = Mount(lcow_mount.TYPE, layer_dirs[0], tuple(lcow_mount.options(False, layer_dirs[1:])))
        else:
            return [host]
        return [host, lcow]

    def commit(self, name: str, key: str, labels: dict[str, str]) -> Record:
        if not name:
            raise invalid("commit name is empty")
        with self._lock:
            rec = self.store.get(key)
            if rec.kind != Kind.ACTIVE:
                raise precondition(f"snapshot {key!r} is not active")
            if not rec.extract:
                raise not_implemented(
                    f"commit of container snapshot {key!r}: its writes live in a scratch VHD; "
                    "only unpack (extract-) snapshots can be committed"
                )
            if self.store.find(name) is not None:
                raise SnapshotError(ErrKind.ALREADY_EXISTS, f"snapshot {name!r} already exists")
            layer = self._layer_name(rec, name, labels)
            fs_dir = os.path.join(self._snap_dir(rec), "fs")
            applied = self._applied(rec)
            final = self.layer_dir(layer)
            have_final = os.path.isfile(os.path.join(final, lcow_mount.LAYER_FILE))
            work = ""
            if applied is not None and not have_final:
                work = self._adopt(rec, name)  # the differ's VHD, moved out of the snapshot
        if applied is None and not have_final:
            work = self._convert(fs_dir, name)
        inflight = os.path.basename(work)
        try:
            if applied is not None:
                inodes = applied
            else:
                _, inodes = _disk_usage(fs_dir)  # outside the lock: the unpacked tree no longer changes
            with self._lock:
                if self.store.find(key) is None:
                    raise not_found(f"snapshot {key!r} was removed during its commit")
                if work:
                    if os.path.isfile(os.path.join(final, lcow_mount.LAYER_FILE)):
                        shutil.rmtree(work)  # another commit of the same chain won
                    else:
                        shutil.rmtree(final, ignore_errors=True)
                        os.rename(work, final)
                        _fsync_dir(os.path.dirname(final))
                    work = ""
                vhd_path = os.path.join(final, lcow_mount.LAYER_FILE)
                size = os.stat(vhd_path).st_blocks * 512
                with self.store.transaction():
                    committed = self.store.commit(key, name, labels, layer, size, inodes)
                self._discard(self._snap_dir(rec))
        finally:
            if work:
                if applied is not None:
                    self._unadopt(rec, work)
                shutil.rmtree(work, ignore_errors=True)
            with self._lock:
                self._inflight.discard(inflight)
        how = "the lcow differ's VHD adopted" if applied is not None else "converted from its directory"
        log.info("snapshot %r committed as %r (layer %s, %s)", key, name, layer, how)
        return committed

    def _layer_name(self, rec: Record, name: str, labels: dict[str, str]) -> str:
        for ref in (labels.get(LABEL_SNAPSHOT_REF), rec.labels.get(LABEL_SNAPSHOT_REF), user_key(name)):
            m = _CHAIN.match(ref or "")
            if m:
                return m.group(1)
        return f"snapshot-{rec.id}"

    def _applied(self, rec: Record) -> int | None:
        """The inode count the differ recorded when it wrote this snapshot's layer.vhd, else None."""
        d = self._snap_dir(rec)
        try:
            with open(os.path.join(d, APPLIED_FILE), encoding="utf-8") as f:
                entries = int(json.load(f)["entries"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise SnapshotError(ErrKind.INTERNAL, f"snapshot {rec.key!r}: bad {APPLIED_FILE}: {e}") from e
        if any(os.scandir(os.path.join(d, "fs"))):
            raise precondition(
                f"snapshot {rec.key!r} holds both an applied layer VHD and files in its upper directory"
            )
        return entries

    def _adopt(self, rec: Record, name: str) -> str:
        """Move the applied layer.vhd into a fresh directory under tmp/ (as _convert leaves one)."""
        work = self.new_work("commit-")
        try:
            os.chmod(work, 0o755)
            out = os.path.join(work, lcow_mount.LAYER_FILE)
            os.rename(os.path.join(self._snap_dir(rec), lcow_mount.LAYER_FILE), out)
            os.chmod(out, 0o444)
        except OSError as e:
            self.drop_work(work)
            raise SnapshotError(ErrKind.INTERNAL, f"adopting the applied layer of {name!r}: {e}") from e
        return work

    def _unadopt(self, rec: Record, work: str) -> None:
        """A commit that failed after _adopt gives the VHD back to its snapshot (if it is still
        there), so a retried Commit finds it."""
        with self._lock:
            cur = self.store.find(rec.key)
            if cur is None or cur.id != rec.id or cur.kind != Kind.ACTIVE:
                return
            with contextlib.suppress(OSError):
                os.rename(
                    os.path.join(work, lcow_mount.LAYER_FILE),
                    os.path.join(self._snap_dir(rec), lcow_mount.LAYER_FILE),
                )

    def new_work(self, prefix: str) -> str:
        """A fresh directory under tmp/ that cleanup leaves alone until drop_work."""
        with self._lock:
            work = tempfile.mkdtemp(prefix=prefix, dir=os.path.join(self.root, "tmp"))
            self._inflight.add(os.path.basename(work))
        return work

    def drop_work(self, work: str) -> None:
        self._drop_work(work)

    def unpack_target(self, mounts: Sequence[Mount]) -> Record:
        """The unpack snapshot whose Prepare returned ``mounts``; NotImplemented for any other
        mounts (containerd's diff service then tries its next differ)."""
        if len(mounts) != 1 or mounts[0].type != "overlay":
            kinds = ", ".join(m.type for m in mounts) or "none"
            raise not_implemented(f"lcow differ: mounts ({kinds}) are not an lcow unpack snapshot")
        upper = ""
        for opt in mounts[0].options:
            if opt.startswith("upperdir="):
                upper = os.path.normpath(opt[len("upperdir=") :])
        snaps = os.path.join(self.root, "snapshots")
        parent, leaf = os.path.split(upper)
        sid = os.path.basename(parent)
        if leaf != "fs" or os.path.dirname(parent) != snaps or not sid.isdigit():
            raise not_implemented(f"lcow differ: overlay upperdir {upper or '(none)'!r} is not under {snaps}")
        with self._lock:
            rec = self.store.get_id(int(sid))
        if rec.kind != Kind.ACTIVE or not rec.extract:
            raise precondition(f"snapshot {rec.key!r} is not an active unpack snapshot")
        return rec

    def install_applied(self, rec: Record, vhd_path: str, entries: int) -> None:
        """Move the differ's finished VHD into the unpack snapshot; Commit adopts it."""
        with self._lock:
            cur = self.store.find(rec.key)
            if cur is None or cur.id != rec.id:
                raise not_found(f"snapshot {rec.key!r} was removed while its layer was applied")
            d = self._snap_dir(rec)
            target = os.path.join(d, lcow_mount.LAYER_FILE)
            if os.path.lexists(target):
                raise precondition(f"snapshot {rec.key!r} already has an applied layer")
            if any(os.scandir(os.path.join(d, "fs"))):
                raise precondition(f"snapshot {rec.key!r}: its upper directory is not empty")
            with open(vhd_path, "rb") as f:
                os.fsync(f.fileno())
            meta = os.path.join(d, APPLIED_FILE + ".part")
            with open(meta, "w", encoding="utf-8") as f:
                json.dump({"entries": entries}, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(vhd_path, target)
            os.rename(meta, os.path.join(d, APPLIED_FILE))
            _fsync_dir(d)

    def _convert(self, fs_dir: str, name: str) -> str:
        """ext4 + VHD footer of the unpacked directory in a fresh directory under tmp/."""
        with self._lock:
            work = tempfile.mkdtemp(prefix="commit-", dir=os.path.join(self.root, "tmp"))
            self._inflight.add(os.path.basename(work))
        try:
            os.chmod(work, 0o755)
            out = os.path.join(work, lcow_mount.LAYER_FILE)
            make_ext4(fs_dir, out)
            vhd.append_footer_to_path(out)
            os.chmod(out, 0o444)
            with open(out, "rb") as f:
                os.fsync(f.fileno())
        except Ext4Error as e:
            self._drop_work(work)
            raise SnapshotError(ErrKind.INTERNAL, f"converting layer {name!r} to ext4: {e}") from e
        except BaseException:
            self._drop_work(work)
            raise
        return work

    def _drop_work(self, work: str) -> None:
        shutil.rmtree(work, ignore_errors=True)
        with self._lock:
            self._inflight.discard(os.path.basename(work))

    def remove(self, key: str) -> None:
        with self._lock:
            rec = self.store.get(key)
            if self.store.children(key):
                raise precondition(f"snapshot {key!r} has children")
            with self.store.transaction():
                self.store.delete(key)
            if rec.kind == Kind.COMMITTED:
                if self.store.layer_refs(rec.layer) == 0:
                    self._remove_layer(rec.layer)
            else:
                self._discard(self._snap_dir(rec))
        log.info("snapshot %r removed", key)

    def _remove_layer(self, layer: str) -> None:
        d = self.layer_dir(layer)
        hostmount.unmount(os.path.join(d, "mnt"))
        self._discard(d)

    def _discard(self, path: str) -> None:
        """Rename first: a crash mid-delete leaves the rest under tmp/, which start-up empties."""
        if not os.path.lexists(path):
            return
        gone = tempfile.mkdtemp(prefix="rm-", dir=os.path.join(self.root, "tmp"))
        os.rename(path, os.path.join(gone, "x"))
        shutil.rmtree(gone, ignore_errors=True)

    def stat(self, key: str) -> Record:
        with self._lock:
            return self.store.get(key)

    def update(self, key: str, labels: dict[str, str], paths: Sequence[str]) -> Record:
        with self._lock:
            rec = self.store.get(key)
            if not paths:
                new = dict(labels)
            else:
                new = dict(rec.labels)
                for p in paths:
                    if p == "labels":
                        new = dict(labels)
                    elif p.startswith("labels."):
                        k = p[len("labels.") :]
                        if k in labels:
                            new[k] = labels[k]
                        else:
                            new.pop(k, None)
                    else:
                        raise invalid(f"cannot update {p!r} field on snapshot {key!r}")
            with self.store.transaction():
                return self.store.set_labels(key, new)

    def list(self, filter_strings: Sequence[str]) -> list[Record]:
        match = filters.compile_filters(filter_strings)
        with self._lock:
            records = self.store.all()

        def getter(rec: Record) -> filters.Getter:
            def get(field: str) -> str | None:
                if field == "name":
                    return rec.key
                if field == "parent":
                    return rec.parent
                if field == "kind":
                    return rec.kind.name.lower()
                return rec.labels.get(field[len("labels.") :])

            return get

        return [r for r in records if match(getter(r))]

    def usage(self, key: str) -> tuple[int, int]:
        with self._lock:
            rec = self.store.get(key)
        if rec.kind == Kind.COMMITTED:
            return rec.size, rec.inodes
        d = self._snap_dir(rec)
        if rec.kind == Kind.ACTIVE and rec.extract:
            with contextlib.suppress(FileNotFoundError):
                return os.stat(os.path.join(d, lcow_mount.LAYER_FILE)).st_blocks * 512, 1
            return _disk_usage(os.path.join(d, "fs"))
        if rec.kind == Kind.ACTIVE:
            with contextlib.suppress(FileNotFoundError):
                return os.stat(os.path.join(d, lcow_mount.SCRATCH_FILES[0])).st_blocks * 512, 1
        return 0, 0

    def cleanup(self) -> None:
        """Remove what no row references: crash leftovers under tmp/, snapshot and layer directories."""
        with self._lock:
            records = self.store.all()
            ids = {str(r.id) for r in records if r.kind != Kind.COMMITTED}
            layers = {r.layer for r in records if r.kind == Kind.COMMITTED}
            tmp = os.path.join(self.root, "tmp")
            for n in set(os.listdir(tmp)) - self._inflight:
                shutil.rmtree(os.path.join(tmp, n), ignore_errors=True)
            for n in os.listdir(os.path.join(self.root, "snapshots")):
                if n not in ids:
                    self._discard(os.path.join(self.root, "snapshots", n))
            for n in os.listdir(os.path.join(self.root, "layers")):
                if n not in layers:
                    log.info("removing unreferenced layer %s", n)
                    self._remove_layer(n)

    def close(self) -> None:
        """Drop the host loop mounts (made again on demand) and close the store."""
        with self._lock:
            for n in os.listdir(os.path.join(self.root, "layers")):
                with contextlib.suppress(OSError):
                    hostmount.unmount(os.path.join(self.layer_dir(n), "mnt"))
            self.store.close()
