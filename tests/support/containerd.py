"""A private containerd for end-to-end tests: 1.6 (Debian's /usr/bin/containerd, the default) or
2.1 (Debian forky's, unpacked by scripts/setup.sh into ``$HCSSHIM_CONTAINERD2_PREFIX``,
/opt/hcsshim/containerd-2.1).

Use the session fixture ``containerd`` from tests/conftest.py, or :func:`running_containerd` directly::

    def test_x(containerd: Containerd) -> None:
        containerd.ctr("images", "ls")                  # ctr --address <sock> -n <namespace> images ls
        proc = containerd.ctr_popen("events")            # long-running ctr, stdout piped (text)
        containerd.grpc_address / containerd.ttrpc_address   # plain socket paths, as containerd hands out
        containerd.env                                   # containerd's environment (PATH has .venv/bin)
        rootfs = busybox_rootfs(tmp_path / "rootfs")     # then: ctr run -d --rootfs <rootfs> id /bin/sh ...
        containerd.log_tail(), shim_pids(containerd)     # for failure messages / leak checks

``start_containerd(version="2.1")`` / ``running_containerd(version=...)`` pick the daemon (config version 2
for 1.6, version 3 for 2.1: other plugin ids, same handlers); the session fixture ``containerd_matrix`` is
parametrized over :data:`VERSIONS` (ids ``containerd-1.6``, ``containerd-2.1``) for tests that must pass
on both, and ``c.version`` / ``c.containerd_binary`` / ``c.ctr_binary`` say which one a test got.

``ctr(..., check=False)`` returns the CompletedProcess instead of raising ContainerdError. CRI (when
``cri_ok``) is served on ``grpc_address`` too: ``crictl --runtime-endpoint unix://<grpc_address>``.

Everything lives under one short directory ``/run/hcsshim-test-<random>/`` (root, state, sockets,
config.toml, containerd.log) so unix socket paths stay far below 107 bytes. The config enables CRI with
runtime handlers ``runc`` (default), ``runhcs-v1`` (io.containerd.runhcs.v1), ``lcow-v2``
(io.containerd.lcow.v2) and ``process-v2`` (io.containerd.process.v2), no CNI config and a stream server on
a random port; ``cri_ok`` says whether the CRI plugin actually initialised (tests that need it should skip
when it is False). ``PATH`` starts with the venv's bin directory so containerd finds our
``containerd-shim-*`` entry points. Teardown kills leftover tasks and the shims this containerd started
(found by its unique socket path in their argv), stops containerd, unmounts whatever is still mounted
under the directory, and removes it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hcsshim import loopwatch
from tests.support.procs import argvs

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
CONTAINERD2_PREFIX = os.environ.get("HCSSHIM_CONTAINERD2_PREFIX", "/opt/hcsshim/containerd-2.1")
DEFAULT_VERSION = "1.6"
# version -> directory holding containerd, ctr (and containerd-shim-runc-v2) of that version.
BIN_DIRS = {"1.6": "/usr/bin", "2.1": os.path.join(CONTAINERD2_PREFIX, "usr", "bin")}
VERSIONS = tuple(BIN_DIRS)
DEFAULT_NAMESPACE = "default"
VENV_BIN = Path(sys.executable).parent

CONFIG_TEMPLATE = """\
version = 2
root = "{root}"
state = "{state}"
oom_score = 0

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = "{debug}"
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  sandbox_image = "registry.k8s.io/pause:3.6"
  # No CAP_SYS_RESOURCE here: runc pods (the network bench's reference) need this.
  restrict_oom_score_adj = true

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{base}/cni/bin"
  conf_dir = "{base}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runhcs-v1]
  runtime_type = "io.containerd.runhcs.v1"
  # hcsshim's own pod annotations (UVM templates on/off) reach the shim.
  pod_annotations = ["io.hcsshim.*"]

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.lcow-v2]
  runtime_type = "io.containerd.lcow.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.process-v2]
  runtime_type = "io.containerd.process.v2"
"""

# containerd 2.x: config version 3 splits CRI into cri.v1.runtime / cri.v1.images. There is no
# CAP_SYS_RESOURCE here, so runc pods need restrict_oom_score_adj.
CONFIG_TEMPLATE_V3 = """\
version = 3
root = "{root}"
state = "{state}"
oom_score = 0

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = "{debug}"
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "registry.k8s.io/pause:3.6"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  restrict_oom_score_adj = true

[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["{base}/cni/bin"]
  conf_dir = "{base}/cni/net.d"

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runhcs-v1]
  runtime_type = "io.containerd.runhcs.v1"
  # hcsshim's own pod annotations (UVM templates on/off) reach the shim.
  pod_annotations = ["io.hcsshim.*"]

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.lcow-v2]
  runtime_type = "io.containerd.lcow.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.process-v2]
  runtime_type = "io.containerd.process.v2"
"""

# containerd version -> its config template (the keys of BIN_DIRS).
CONFIG_TEMPLATES = {"1.6": CONFIG_TEMPLATE, "2.1": CONFIG_TEMPLATE_V3}


# Called with each containerd once it answers, and once it and its shims are gone. The test suites
# hook their slow-callback watch in here (tests/conftest.py); the benchmarks, which use the same
# containerd, do not, and their shims run without it.
ON_START: list[Callable[[Containerd], None]] = []
ON_STOPPED: list[Callable[[Containerd], None]] = []


class ContainerdError(RuntimeError):
    pass


@dataclass
class Containerd:
    base: Path
    namespace: str = DEFAULT_NAMESPACE
    process: subprocess.Popen[bytes] | None = None
    cri_ok: bool = False
    env: dict[str, str] = field(default_factory=dict)
    version: str = DEFAULT_VERSION
    log_scanned: int = 0

    @property
    def containerd_binary(self) -> str:
        return os.path.join(BIN_DIRS[self.version], "containerd")

    @property
    def ctr_binary(self) -> str:
        return os.path.join(BIN_DIRS[self.version], "ctr")

    @property
    def config_version(self) -> int:
        return 3 if int(self.version.split(".")[0]) >= 2 else 2

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def grpc_address(self) -> str:
        return str(self.base / "c.sock")

    @property
    def ttrpc_address(self) -> str:
        return str(self.base / "c.sock.ttrpc")

    @property
    def config_path(self) -> Path:
        return self.base / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.base / "containerd.log"

    def ctr_argv(self, *args: str, namespace: str | None = None) -> list[str]:
        cmd = list(args)
        # ctr keeps the task's stdio FIFOs under /run/containerd/fifo unless told otherwise, and
        # leaves their directory behind when it exits through an error path; keep them in our base.
        words = 2 if cmd[:2] in (["task", "start"], ["task", "exec"]) else 1 if cmd[:1] == ["run"] else 0
        if words and "--fifo-dir" not in cmd:
            cmd[words:words] = ["--fifo-dir", str(self.base / "fifo")]
        return [
            self.ctr_binary,
            "--address",
            self.grpc_address,
            "--namespace",
            namespace or self.namespace,
            *cmd,
        ]

    def ctr(
        self,
        *args: str,
        namespace: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this containerd; raises ContainerdError with output when check fails."""
        argv = self.ctr_argv(*args, namespace=namespace)
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input, env=self.env, check=False
        )
        if check and proc.returncode != 0:
            # containerd's log holds the shim's and the guest agent's lines: what a CI failure needs.
            raise ContainerdError(
                f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"\n--- containerd log ---\n{self.log_tail(60)}"
            )
        return proc

    def ctr_popen(self, *args: str, namespace: str | None = None) -> subprocess.Popen[str]:
        """Start a long-running ``ctr`` (e.g. ``events``) with stdout piped as text; the caller ends it."""
        return subprocess.Popen(
            self.ctr_argv(*args, namespace=namespace),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )

    def slow_callback_reports(self) -> list[str]:
        """Lines containerd's log gained since the last call that report a slow callback: the shims'
        own (HCSSHIM_SLOW_CALLBACK_MS) and their guest agents' (relayed into the shim's log)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_scanned)
                data = f.read()
        except OSError:
            return []
        complete = data.rfind(b"\n") + 1
        self.log_scanned += complete
        marker = loopwatch.MESSAGE.encode()
        lines = data[:complete].splitlines()
        return [line.decode(errors="replace")[:1500] for line in lines if marker in line]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# Where each config version takes CRI's snapshotter (1.6: one global; 2.x: the image service's).
CRI_SNAPSHOTTER_TABLES = {
    "1.6": '[plugins."io.containerd.grpc.v1.cri".containerd]\n',
    "2.1": '[plugins."io.containerd.cri.v1.images"]\n',
}


def _with_cri_snapshotter(text: str, version: str, snapshotter: str) -> str:
    if not snapshotter:
        return text
    table = CRI_SNAPSHOTTER_TABLES[version]
    line = f'  snapshotter = "{snapshotter}"\n'
    return text.replace(table, table + line, 1) if table in text else text + "\n" + table + line


def _with_handler_snapshotters(text: str, version: str, snapshotters: dict[str, str]) -> str:
    """``snapshotter = ...`` in each named CRI runtime handler's table (1.7+: per handler)."""
    plugin = "io.containerd.grpc.v1.cri" if version == "1.6" else "io.containerd.cri.v1.runtime"
    for handler, snapshotter in snapshotters.items():
        table = f'[plugins."{plugin}".containerd.runtimes.{handler}]\n'
        if table not in text:
            raise ContainerdError(f"no CRI runtime handler {handler!r} in the config template")
        text = text.replace(table, table + f'  snapshotter = "{snapshotter}"\n', 1)
    return text


def _write_config(
    c: Containerd,
    extra_config: str,
    cri_snapshotter: str = "",
    handler_snapshotters: dict[str, str] | None = None,
) -> None:
    for d in (c.root, c.state, c.base / "cni" / "bin", c.base / "cni" / "net.d"):
        d.mkdir(parents=True, exist_ok=True)
    text = CONFIG_TEMPLATES[c.version].format(
        root=c.root,
        state=c.state,
        grpc=c.grpc_address,
        ttrpc=c.ttrpc_address,
        debug=c.base / "d.sock",
        base=c.base,
    )
    text = _with_handler_snapshotters(text, c.version, handler_snapshotters or {})
    c.config_path.write_text(_with_cri_snapshotter(text, c.version, cri_snapshotter) + extra_config)


def _wait_ready(c: Containerd, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert c.process is not None
        if c.process.poll() is not None:
            raise ContainerdError(f"containerd exited with {c.process.returncode}:\n{c.log_tail()}")
        if os.path.exists(c.grpc_address) and os.path.exists(c.ttrpc_address):
            proc = c.ctr("version", check=False, timeout=10)
            if proc.returncode == 0:
                return
        time.sleep(0.1)
    raise ContainerdError(f"containerd not ready after {timeout}s:\n{c.log_tail()}")


def _cri_status(c: Containerd) -> bool:
    proc = c.ctr("plugins", "ls", check=False, timeout=20)
    for line in proc.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[1] == "cri" and cols[0] == "io.containerd.grpc.v1":
            return cols[-1] == "ok"
    return False


def start_containerd(
    *,
    namespace: str = DEFAULT_NAMESPACE,
    extra_config: str = "",
    timeout: float = 30.0,
    version: str = DEFAULT_VERSION,
    cri_snapshotter: str = "",
    handler_snapshotters: dict[str, str] | None = None,
) -> Containerd:
    """Start a private containerd and wait until it answers; call :func:`stop_containerd` afterwards.
    ``cri_snapshotter`` sets the snapshotter CRI pulls into and creates containers with;
    ``handler_snapshotters`` (runtime handler -> snapshotter) the ones of single CRI handlers."""
    if version not in BIN_DIRS:
        raise ContainerdError(f"unknown containerd version {version!r} (known: {', '.join(VERSIONS)})")
    base = Path(f"/run/hcsshim-test-{secrets.token_hex(4)}")
    base.mkdir(mode=0o700, parents=True)
    env = dict(os.environ)
    # The version's own directory comes right after the venv: its containerd-shim-runc-v2 serves runc.
    path = [str(VENV_BIN), BIN_DIRS[version], env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")]
    env["PATH"] = os.pathsep.join(path)
    c = Containerd(base=base, namespace=namespace, env=env, version=version)
    try:
        _write_config(c, extra_config, cri_snapshotter, handler_snapshotters)
        with open(c.log_path, "ab") as log:
            c.process = subprocess.Popen(
                [c.containerd_binary, "--config", str(c.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=base,
                start_new_session=True,
            )
        _wait_ready(c, timeout)
        c.cri_ok = _cri_status(c)
        for hook in ON_START:
            hook(c)
    except BaseException:
        stop_containerd(c)
        raise
    return c


def _remove_tasks(c: Containerd) -> None:
    namespaces = c.ctr("namespaces", "ls", "-q", check=False, timeout=20).stdout.split()
    for ns in namespaces:
        tasks = c.ctr("tasks", "ls", "-q", namespace=ns, check=False, timeout=20).stdout.split()
        for task in tasks:
            c.ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, namespace=ns, check=False, timeout=20)
            c.ctr("tasks", "delete", "-f", task, namespace=ns, check=False, timeout=30)
        containers = c.ctr("containers", "ls", "-q", namespace=ns, check=False, timeout=20).stdout.split()
        for container in containers:
            c.ctr("containers", "delete", container, namespace=ns, check=False, timeout=30)


def shim_pids(c: Containerd) -> list[int]:
    """Processes whose argv names this containerd's socket: the shims it started (and nothing else)."""
    needle = c.grpc_address.encode()
    found: list[int] = []
    for pid, argv in argvs():
        if pid == os.getpid() or (c.process is not None and pid == c.process.pid):
            continue
        if needle in argv and os.path.basename(argv[0]) != b"ctr":
            found.append(pid)
    return found


def _unmount_below(base: Path) -> None:
    prefix = str(base) + "/"
    mounts: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == str(base):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def stop_containerd(c: Containerd) -> None:
    """Tear everything down; safe to call on a half-started instance and more than once."""
    if c.process is not None and c.process.poll() is None:
        with contextlib.suppress(Exception):
            _remove_tasks(c)
        c.process.send_signal(signal.SIGTERM)
        try:
            c.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            c.process.kill()
            c.process.wait(timeout=10)
    for pid in shim_pids(c):
        # Shims lead their own process group (containerd sets Setpgid): take the group down too, but
        # never a group that is not the shim's own (it could be ours).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    for hook in ON_STOPPED:
        hook(c)
    _unmount_below(c.base)
    shutil.rmtree(c.base, ignore_errors=True)


@contextlib.contextmanager
def running_containerd(
    *,
    namespace: str = DEFAULT_NAMESPACE,
    extra_config: str = "",
    timeout: float = 30.0,
    version: str = DEFAULT_VERSION,
    cri_snapshotter: str = "",
    handler_snapshotters: dict[str, str] | None = None,
) -> Iterator[Containerd]:
    c = start_containerd(
        namespace=namespace,
        extra_config=extra_config,
        timeout=timeout,
        version=version,
        cri_snapshotter=cri_snapshotter,
        handler_snapshotters=handler_snapshotters,
    )
    try:
        yield c
    finally:
        stop_containerd(c)


BUSYBOX = "/bin/busybox"


def busybox_rootfs(dest: Path) -> Path:
    """A minimal root filesystem (static busybox + applet links) for ``ctr run --rootfs``, no image needed."""
    bindir = dest / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, bindir / "busybox")
    for applet in ("sh", "sleep", "cat", "echo", "ls", "true", "false", "env", "ps"):
        link = bindir / applet
        if not link.exists():
            link.symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc", "run"):
        (dest / d).mkdir(exist_ok=True)
    return dest


def available(version: str = DEFAULT_VERSION) -> str | None:
    """None when a private containerd can run here, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root"
    tools = [os.path.join(BIN_DIRS[version], name) for name in ("containerd", "ctr")]
    missing: Sequence[str] = [p for p in tools if not os.path.exists(p)]
    if missing:
        return f"not installed: {', '.join(missing)}"
    return None


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    """Session-wide private containerd (skips when not root or not installed)."""
    reason = available()
    if reason is not None:
        pytest.skip(f"private containerd: {reason}")
    with running_containerd() as c:
        yield c


@pytest.fixture(scope="session", params=VERSIONS, ids=lambda v: f"containerd-{v}")
def containerd_matrix(request: pytest.FixtureRequest) -> Iterator[Containerd]:
    """A private containerd of each version in turn. A missing version is a failure, not a skip:
    scripts/setup.sh installs both."""
    version: str = request.param
    reason = available(version)
    if reason == "needs root":
        pytest.skip(f"private containerd: {reason}")
    if reason is not None:
        pytest.fail(f"containerd {version}: {reason} (run scripts/setup.sh)")
    with running_containerd(version=version) as c:
        yield c
