"""Annotation keys hcsshim honours (pkg/annotations and internal/annotations upstream)."""

from __future__ import annotations

_VM = "io.microsoft.virtualmachine."

# CRI.
KUBERNETES_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
KUBERNETES_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"

# Containers.
CONTAINER_PROCESS_DUMP_LOCATION = "io.microsoft.container.processdumplocation"
CONTAINER_MEMORY_SIZE_IN_MB = "io.microsoft.container.memory.sizeinmb"
CONTAINER_PROCESSOR_COUNT = "io.microsoft.container.processor.count"
CONTAINER_PROCESSOR_LIMIT = "io.microsoft.container.processor.limit"
CONTAINER_PROCESSOR_WEIGHT = "io.microsoft.container.processor.weight"
CONTAINER_STORAGE_QOS_BANDWIDTH_MAXIMUM = "io.microsoft.container.storage.qos.bandwidthmaximum"
CONTAINER_STORAGE_QOS_IOPS_MAXIMUM = "io.microsoft.container.storage.qos.iopsmaximum"
GPU_CAPABILITIES = "io.microsoft.container.gpu.capabilities"
LCOW_RLIMIT_CORE = "io.microsoft.lcow.rlimitcore"
LCOW_SHM_SIZE_KB = "io.microsoft.lcow.shm.size-kb"
LCOW_PRIVILEGED = _VM + "lcow.privileged"
LCOW_HOST_NETWORK = _VM + "lcow.hostnetwork"
LCOW_TEE_LOG_PATH = "io.microsoft.container.lcow.tee-log-path"
LCOW_TEE_LOG_DIR_MOUNT = "io.microsoft.container.lcow.tee-log-dir-mount"
GPU_VHD_PATH = "io.microsoft.lcow.gpuvhdpath"
WCOW_DEVICE_EXTENSIONS = "io.microsoft.container.wcow.deviceextensions"
WCOW_DISABLE_GMSA = "io.microsoft.container.wcow.gmsa.disable"
WCOW_PROCESS_DUMP_TYPE = "io.microsoft.wcow.processdumptype"
WCOW_PROCESS_DUMP_COUNT = "io.microsoft.wcow.processdumpcount"
WCOW_TEST_REGISTRY = "io.microsoft.container.wcow.test-registry-annotation"
HOST_PROCESS_ROOTFS_LOCATION = "microsoft.com/hostprocess-rootfs-location"
HOST_PROCESS_INHERIT_USER = "microsoft.com/hostprocess-inherit-user"
HOST_PROCESS_CONTAINER = "microsoft.com/hostprocess-container"
DISABLE_HOST_PROCESS_CONTAINER = "microsoft.com/disable-hostprocess-container"

# Multi-pod.
SKIP_POD_NETWORKING = "io.microsoft.cri.skip-pod-networking"
TENANT_SANDBOX_ID = "io.microsoft.cri.tenant-sandbox-id"
VIRTUAL_POD_ID = "io.microsoft.cri.virtual-pod-id"

# Networking.
NETWORK_CONFIG_PROXY = "io.microsoft.network.ncproxy"
NCPROXY_CONTAINER_ID = "io.microsoft.network.ncproxy.containerid"

# Live migration.
MIGRATION_SUPPORT_ENABLED = "io.microsoft.migration.support-enabled"
MIGRATION_SOURCE_CONTAINER_ID = "io.microsoft.migration.source-container-id"

# Expansion.
DISABLE_UNSAFE_OPERATIONS = "io.microsoft.disable-unsafe-operations"

# Utility VM.
# hcsshim's own (no upstream equivalent): restore the UVM from a template of its configuration
# ("true", the default where the backend can) or boot it cold ("false"). uvm/template.py.
UVM_TEMPLATES = "io.hcsshim.virtualmachine.templates"
# hcsshim's own: the warm pool of the UVM's configuration (uvm/pool.py): how many paused clones to
# keep ready (0: none, the default), and the cap on their guest memory together (0: none).
UVM_POOL_SIZE = "io.hcsshim.virtualmachine.pool.size"
UVM_POOL_MEMORY_MB = "io.hcsshim.virtualmachine.pool.memory_mb"
BOOT_FILES_ROOT_PATH = _VM + "bootfilesrootpath"
DUMP_DIRECTORY_PATH = _VM + "dump-directory-path"
DISABLE_WRITABLE_FILE_SHARES = _VM + "fileshares.disablewritable"
KERNEL_DRIVERS = _VM + "kerneldrivers"
UVM_HASH_ENVELOPE_REFERENCE_INFO_FILE = _VM + "uvm-hash-envelope-reference-info-file"
CPU_GROUP_ID = _VM + "cpugroup.id"
RESOURCE_PARTITION_ID = _VM + "resource-partition-id"
PROCESSOR_COUNT = _VM + "computetopology.processor.count"
PROCESSOR_LIMIT = _VM + "computetopology.processor.limit"
PROCESSOR_WEIGHT = _VM + "computetopology.processor.weight"
ALLOW_OVERCOMMIT = _VM + "computetopology.memory.allowovercommit"
ENABLE_DEFERRED_COMMIT = _VM + "computetopology.memory.enabledeferredcommit"
ENABLE_COLD_DISCARD_HINT = _VM + "computetopology.memory.enablecolddiscardhint"
MEMORY_SIZE_IN_MB = _VM + "computetopology.memory.sizeinmb"
MEMORY_LOW_MMIO_GAP_IN_MB = _VM + "computetopology.memory.lowmmiogapinmb"
MEMORY_HIGH_MMIO_BASE_IN_MB = _VM + "computetopology.memory.highmmiobaseinmb"
MEMORY_HIGH_MMIO_GAP_IN_MB = _VM + "computetopology.memory.highmmiogapinmb"
FULLY_PHYSICALLY_BACKED = _VM + "fullyphysicallybacked"
NUMA_MAXIMUM_PROCESSORS_PER_NODE = _VM + "computetopology.processor.numa.max-processors-per-node"
NUMA_MAXIMUM_MEMORY_SIZE_PER_NODE = _VM + "computetopology.processor.numa.max-size-per-node"
NUMA_PREFERRED_PHYSICAL_NODES = _VM + "computetopology.numa.preferred-physical-nodes"
NUMA_MAPPED_PHYSICAL_NODES = _VM + "computetopology.numa.mapped-physical-nodes"
NUMA_COUNT_OF_PROCESSORS = _VM + "computetopology.numa.count-of-processors"
NUMA_COUNT_OF_MEMORY_BLOCKS = _VM + "computetopology.numa.count-of-memory-blocks"
STORAGE_QOS_BANDWIDTH_MAXIMUM = _VM + "storageqos.bandwidthmaximum"
STORAGE_QOS_IOPS_MAXIMUM = _VM + "storageqos.iopsmaximum"

# WCOW utility VM.
DISABLE_COMPARTMENT_NAMESPACE = _VM + "disablecompartmentnamespace"
NO_INHERIT_HOST_TIMEZONE = _VM + "wcow.timezone.noinherit"
VSMB_NO_DIRECT_MAP = _VM + "wcow.virtualSMB.nodirectmap"
LOG_SOURCES = _VM + "forwardlogs.sources"
LOG_FORWARDING_ENABLED = _VM + "forwardlogs.enable"
DEFAULT_LOG_SOURCES_ENABLED = _VM + "forwardlogs.defaultsources.enable"
WCOW_ADDITIONAL_REG_KEYS = _VM + "wcow.additional-reg-keys"
WCOW_GUEST_STATE_FILE = _VM + "wcow.gueststatefile"
WCOW_SECURITY_POLICY = _VM + "wcow.securitypolicy"
WCOW_SECURITY_POLICY_ENFORCER = _VM + "wcow.enforcer"
WCOW_AMD_CERTIFICATE = _VM + "wcow.amd-certificate"
WCOW_SECURITY_POLICY_ENV = _VM + "wcow.securitypolicy.env"
WCOW_REFERENCE_INFO_FILE = _VM + "wcow.uvm-reference-info-file"
WCOW_ISOLATION_TYPE = _VM + "wcow.isolation_type"
WCOW_NO_SECURE_BOOT = _VM + "wcow.no_secure_boot"
WCOW_WRITABLE_EFI = _VM + "wcow.writable_efi"
WCOW_DEBUG_MODE = "io.microsoft.wcow.debug"
WCOW_DEBUG_DATA_PATH = "io.microsoft.wcow.debug_data_path"

# LCOW utility VM.
DISABLE_LCOW_TIME_SYNC_SERVICE = _VM + "lcow.timesync.disable"
KERNEL_BOOT_OPTIONS = _VM + "lcow.kernelbootoptions"
KERNEL_DIRECT_BOOT = _VM + "lcow.kerneldirectboot"
PREFERRED_ROOTFS_TYPE = _VM + "lcow.preferredrootfstype"
VPCI_ENABLED = _VM + "lcow.vpcienabled"
VPMEM_COUNT = _VM + "devices.virtualpmem.maximumcount"
VPMEM_SIZE = _VM + "devices.virtualpmem.maximumsizebytes"
VPMEM_NO_MULTI_MAPPING = _VM + "lcow.vpmem.nomultimapping"
DM_VERITY_CREATE_ARGS = _VM + "lcow.dmverity-create-args"
DM_VERITY_MODE = _VM + "lcow.dmverity-mode"
DM_VERITY_ROOTFS_VHD = _VM + "lcow.dmverity-rootfs-vhd"
LCOW_ENCRYPTED_SCRATCH_DISK = _VM + "storage.scratch.encrypted"
LCOW_GUEST_STATE_FILE = _VM + "lcow.gueststatefile"
LCOW_HCL_ENABLED = _VM + "lcow.hcl-enabled"
LCOW_AMD_CERTIFICATE = _VM + "lcow.amd-certificate"
NO_SECURITY_HARDWARE = _VM + "no_security_hardware"
LCOW_SECURITY_POLICY = _VM + "lcow.securitypolicy"
LCOW_SECURITY_POLICY_ENFORCER = _VM + "lcow.enforcer"
LCOW_SECURITY_POLICY_ENV = _VM + "lcow.securitypolicy.env"
LCOW_REFERENCE_INFO_FILE = _VM + "lcow.uvm-reference-info-file"

# internal/annotations: not a stable interface upstream, honoured all the same.
UVM_HV_SOCKET_CONFIG_PREFIX = _VM + "hv-socket.service-table."
UVM_CONSOLE_PIPE = _VM + "console.pipe"
EXTRA_VSOCK_PORTS = _VM + "lcow.extra-vsock-ports"
WRITABLE_OVERLAY_DIRS = _VM + "lcow.writable-overlay-directories"
NETWORKING_POLICY_BASED_ROUTING = _VM + "lcow.network.policybasedrouting"
EXTRA_LCOW_EXEC_ARGS = _VM + "lcow.extra-exec-command-args"

# Upstream's V2 LCOW builder refuses these ("<key> annotation is not supported").
V2_REJECTED = frozenset({NETWORK_CONFIG_PROXY, VPMEM_NO_MULTI_MAPPING, KERNEL_DRIVERS})

# disable-unsafe-operations switches all of these on (oci.AnnotationExpansionMap).
EXPANSIONS: dict[str, tuple[str, ...]] = {
    DISABLE_UNSAFE_OPERATIONS: (
        WCOW_DISABLE_GMSA,
        DISABLE_WRITABLE_FILE_SHARES,
        VSMB_NO_DIRECT_MAP,
        DISABLE_HOST_PROCESS_CONTAINER,
    ),
}

KNOWN: frozenset[str] = frozenset(
    value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and name != "UVM_HV_SOCKET_CONFIG_PREFIX" and "." in value
)
KNOWN_PREFIXES: tuple[str, ...] = (UVM_HV_SOCKET_CONFIG_PREFIX,)
