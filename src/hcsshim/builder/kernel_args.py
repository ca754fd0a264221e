"""LCOW kernel command lines, assembled the way each upstream pipeline does it.

V1 (internal/uvm/create_lcow.go) concatenates strings, so an empty rootfs argument leaves a leading
space; V2 (internal/builder/vm/lcow/kernel_args.go) joins a list. The QEMU backend rewrites the
Hyper-V specific arguments itself; these strings are what HCS would receive.
"""

from __future__ import annotations

from dataclasses import dataclass

from hcsshim.builder.options import INITRD_FILE, VHD_FILE
from hcsshim.hvsock.abi import ENTROPY_PORT, LOG_PORT


def go_quote(text: str) -> str:
    """Go's %q for the printable ASCII text kernel arguments hold."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@dataclass(slots=True)
class KernelArgsInput:
    rootfs_file: str  # INITRD_FILE, VHD_FILE, or "" (VPMem/confidential)
    kernel_direct: bool
    processor_count: int
    log_level: str = "info"
    vpmem_rootfs: bool = False
    dm_verity_mode: bool = False
    dm_verity_create_args: str = ""
    console: bool = False
    arm64: bool = False
    graphics_console: bool = False
    kernel_boot_options: str = ""
    vpci_enabled: bool = False
    disable_time_sync: bool = False
    scrub_logs: bool | None = None
    process_dump_location: str = ""
    writable_overlay_dirs: bool = False
    extra_exec_args: str = ""
    live_migration: bool = False


def _rootfs_args(k: KernelArgsInput) -> str:
    if k.rootfs_file == INITRD_FILE:
        return "" if k.kernel_direct else "initrd=/" + INITRD_FILE
    if k.rootfs_file == VHD_FILE or k.vpmem_rootfs:
        if k.vpmem_rootfs:
            return "root=/dev/pmem0 ro rootwait init=/init"
        if k.dm_verity_mode:
            return f"root=/dev/dm-0 dm-mod.create={go_quote(k.dm_verity_create_args)} init=/init"
        return "root=/dev/sda ro rootwait init=/init"
    return ""


def kernel_args_v1(k: KernelArgsInput) -> str:
    args = _rootfs_args(k)
    args += " initcall_blacklist=virtio_vsock_init"
    debugging = False
    if k.console:
        debugging = True
        if k.arm64:
            args += " console=ttyAMA0,115200"
        else:
            args += " 8250_core.nr_uarts=1 8250_core.skip_txen_test=1 console=ttyS0,115200"
    elif not k.arm64:
        args += " 8250_core.nr_uarts=0"
    if k.graphics_console:
        debugging = True
        args += " console=tty"
    if not debugging:
        args += " panic=-1 quiet"
    if k.kernel_boot_options:
        args += " " + k.kernel_boot_options
    if not k.vpci_enabled:
        args += " pci=off"
    # V1 appends the extra exec args to the gcs command line before the feature flags.
    gcs = f"/bin/gcs -v4 -log-format json -loglevel {k.log_level}"
    if k.extra_exec_args:
        gcs += " " + k.extra_exec_args
    if k.disable_time_sync:
        gcs += " -disable-time-sync"
    if k.scrub_logs is False:
        gcs += " -scrub-logs=false"
    exec_cmd = f"/bin/vsockexec -e {LOG_PORT} {gcs}"
    if k.process_dump_location:
        exec_cmd += " -core-dump-location " + k.process_dump_location
    init = f"-e {ENTROPY_PORT}"
    if k.writable_overlay_dirs and k.rootfs_file == VHD_FILE and not k.vpmem_rootfs:
        init += " -w"
    init += f' sh -c "{exec_cmd} & exec sh"' if debugging else " " + exec_cmd
    args += f" nr_cpus={k.processor_count}"
    args += " brd.rd_nr=0 pmtmr=0 -- " + init
    return args


def kernel_args_v2(k: KernelArgsInput) -> str:
    args: list[str] = []
    rootfs = _rootfs_args(k)
    if rootfs:
        args.append(rootfs)
    args.append("initcall_blacklist=virtio_vsock_init")
    if k.console:
        args += ["8250_core.nr_uarts=1", "8250_core.skip_txen_test=1", "console=ttyS0,115200"]
    else:
        args += ["8250_core.nr_uarts=0", "panic=-1", "quiet"]
    if k.kernel_boot_options:
        args.append(k.kernel_boot_options)
    if not k.vpci_enabled:
        args.append("pci=off")
    args.append(f"nr_cpus={k.processor_count}")
    args += ["brd.rd_nr=0", "pmtmr=0"]
    gcs = [f"/bin/vsockexec -r -e {LOG_PORT}" if k.live_migration else f"/bin/vsockexec -e {LOG_PORT}"]
    gcs.append(f"/bin/gcs -v4 -log-format json -loglevel {k.log_level}")
    if k.disable_time_sync:
        gcs.append("-disable-time-sync")
    if k.scrub_logs is not None:
        gcs.append(f"-scrub-logs={'true' if k.scrub_logs else 'false'}")
    if k.process_dump_location:
        gcs.append("-core-dump-location " + k.process_dump_location)
    if k.extra_exec_args:
        gcs.append(k.extra_exec_args)
    gcs_cmd = " ".join(gcs)
    init = [f"-e {ENTROPY_PORT}"]
    if k.writable_overlay_dirs and k.rootfs_file == VHD_FILE:
        init.append("-w")
    # The missing space after -c is upstream's V2 literal.
    init.append(f'sh -c"{gcs_cmd}& exec sh"' if k.console else gcs_cmd)
    args += ["--", " ".join(init)]
    return " ".join(args)
