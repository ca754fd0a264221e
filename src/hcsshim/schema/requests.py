"""Ready-made hot add/remove requests: the host ModifySettingRequest and the guest request HCS forwards.

Shapes follow hcsshim's vmmanager/guestmanager (V2) and internal/uvm (V1): for an add, HCS applies the
host part and then the guest part; removes go guest first. Each function returns one request with
both parts where upstream sends both, so a caller can split it (V2) or send it whole (V1).
"""

from __future__ import annotations

from hcsshim.hvsock.abi import (
    PLAN9_FLAG_LINUX_METADATA,
    PLAN9_FLAG_READ_ONLY,
    PLAN9_FLAG_RESTRICT_FILE_ACCESS,
    PLAN9_PORT,
    SCSI_CONTROLLER_GUIDS,
    RequestType,
    ResourceType,
    plan9_share_path,
    scsi_mount_path,
)
from hcsshim.schema.modify import (
    CPU_LIMITS_RESOURCE_PATH,
    MEMORY_RESOURCE_PATH,
    PLAN9_SHARE_RESOURCE_PATH,
    GuestModificationRequest,
    LCOWContainerConstraints,
    LCOWMappedDirectory,
    LCOWMappedVirtualDisk,
    LCOWMappedVPMemDevice,
    LCOWNetworkAdapter,
    ModifySettingRequest,
    ProcessorLimits,
    SCSIDevice,
    network_resource_path,
    scsi_resource_path,
    vpmem_controller_resource_path,
)
from hcsshim.schema.vm import (
    Attachment,
    NetworkAdapter,
    Plan9Share,
    VirtualPMemDevice,
)


def scsi_add(
    controller: int,
    lun: int,
    host_path: str,
    *,
    read_only: bool = False,
    disk_type: str = "VirtualDisk",
    options: list[str] | None = None,
    controller_guid: str = "",
    block_dev: bool = False,
) -> ModifySettingRequest:
    """`controller_guid` is the document's GUID for controller `controller` (default: the abi's);
    with `block_dev` the guest exposes the device node at the mount path instead of mounting it."""
    return ModifySettingRequest(
        resource_path=scsi_resource_path(controller_guid or SCSI_CONTROLLER_GUIDS[controller], lun),
        request_type=RequestType.ADD,
        settings=Attachment(type=disk_type, path=host_path, read_only=read_only),
        guest_request=GuestModificationRequest(
            resource_type=ResourceType.MAPPED_VIRTUAL_DISK,
            request_type=RequestType.ADD,
            settings=LCOWMappedVirtualDisk(
                mount_path=scsi_mount_path(controller, lun),
                controller=controller,
                lun=lun,
                read_only=read_only,
                options=list(options or []),
                block_dev=block_dev,
            ),
        ),
    )


def scsi_unmount(controller: int, lun: int, *, read_only: bool = False) -> GuestModificationRequest:
    """Guest step 1 of a SCSI remove: unmount."""
    return GuestModificationRequest(
        resource_type=ResourceType.MAPPED_VIRTUAL_DISK,
        request_type=RequestType.REMOVE,
        settings=LCOWMappedVirtualDisk(
            mount_path=scsi_mount_path(controller, lun), controller=controller, lun=lun, read_only=read_only
        ),
    )


def scsi_eject(controller: int, lun: int) -> GuestModificationRequest:
    """Guest step 2 of a SCSI remove: let the guest drop the device before the host detaches it."""
    return GuestModificationRequest(
        resource_type=ResourceType.SCSI_DEVICE,
        request_type=RequestType.REMOVE,
        settings=SCSIDevice(controller=controller, lun=lun),
    )


def scsi_remove(controller: int, lun: int, *, controller_guid: str = "") -> ModifySettingRequest:
    """Host step of a SCSI remove (no settings), carrying the guest's eject (scsi_eject) as its guest
    half: a remove runs the guest half first. The unmount (scsi_unmount) goes before it."""
    return ModifySettingRequest(
        resource_path=scsi_resource_path(controller_guid or SCSI_CONTROLLER_GUIDS[controller], lun),
        request_type=RequestType.REMOVE,
        guest_request=scsi_eject(controller, lun),
    )


def vpmem_add(
    device: int, host_path: str, mount_path: str, *, image_format: str = "Vhd1"
) -> ModifySettingRequest:
    return ModifySettingRequest(
        resource_path=vpmem_controller_resource_path(device),
        request_type=RequestType.ADD,
        settings=VirtualPMemDevice(host_path=host_path, read_only=True, image_format=image_format),
        guest_request=GuestModificationRequest(
            resource_type=ResourceType.VPMEM_DEVICE,
            request_type=RequestType.ADD,
            settings=LCOWMappedVPMemDevice(device_number=device, mount_path=mount_path),
        ),
    )


def vpmem_remove(device: int, mount_path: str) -> ModifySettingRequest:
    return ModifySettingRequest(
        resource_path=vpmem_controller_resource_path(device),
        request_type=RequestType.REMOVE,
        guest_request=GuestModificationRequest(
            resource_type=ResourceType.VPMEM_DEVICE,
            request_type=RequestType.REMOVE,
            settings=LCOWMappedVPMemDevice(device_number=device, mount_path=mount_path),
        ),
    )


def plan9_flags(*, read_only: bool, restrict: bool = False) -> int:
    flags = PLAN9_FLAG_LINUX_METADATA
    if read_only:
        flags |= PLAN9_FLAG_READ_ONLY
    if restrict:
        flags |= PLAN9_FLAG_RESTRICT_FILE_ACCESS
    return flags


def plan9_add(
    name: str, host_path: str, *, read_only: bool = False, allowed_files: list[str] | None = None
) -> ModifySettingRequest:
    return ModifySettingRequest(
        resource_path=PLAN9_SHARE_RESOURCE_PATH,
        request_type=RequestType.ADD,
        settings=Plan9Share(
            name=name,
            access_name=name,
            path=host_path,
            port=PLAN9_PORT,
            flags=plan9_flags(read_only=read_only, restrict=bool(allowed_files)),
            allowed_files=list(allowed_files or []),
        ),
        guest_request=GuestModificationRequest(
            resource_type=ResourceType.MAPPED_DIRECTORY,
            request_type=RequestType.ADD,
            settings=LCOWMappedDirectory(
                mount_path=plan9_share_path(name), port=PLAN9_PORT, share_name=name, read_only=read_only
            ),
        ),
    )


def plan9_remove(name: str, *, read_only: bool = False) -> ModifySettingRequest:
    return ModifySettingRequest(
        resource_path=PLAN9_SHARE_RESOURCE_PATH,
        request_type=RequestType.REMOVE,
        settings=Plan9Share(name=name, access_name=name, port=PLAN9_PORT),
        guest_request=GuestModificationRequest(
            resource_type=ResourceType.MAPPED_DIRECTORY,
            request_type=RequestType.REMOVE,
            settings=LCOWMappedDirectory(
                mount_path=plan9_share_path(name), port=PLAN9_PORT, share_name=name, read_only=read_only
            ),
        ),
    )


def network_add(
    nic_id: str, endpoint_id: str, mac: str, guest: LCOWNetworkAdapter | None = None
) -> ModifySettingRequest:
    request = ModifySettingRequest(
        resource_path=network_resource_path(nic_id),
        request_type=RequestType.ADD,
        settings=NetworkAdapter(endpoint_id=endpoint_id, mac_address=mac),
    )
    if guest is not None:
        request.guest_request = GuestModificationRequest(
            resource_type=ResourceType.NETWORK, request_type=RequestType.ADD, settings=guest
        )
    return request


def nic_add(nic_id: str, host: dict[str, object], guest: dict[str, object]) -> ModifySettingRequest:
    """A NIC hot-add with the backend's own host settings (qemu's carry a ``Tap``) and the guest's
    LCOWNetworkAdapter, both as the caller made them."""
    return ModifySettingRequest(
        resource_path=network_resource_path(nic_id),
        request_type=RequestType.ADD,
        settings=host,
        guest_request=GuestModificationRequest(
            resource_type=ResourceType.NETWORK, request_type=RequestType.ADD, settings=guest
        ),
    )


def nic_remove(nic_id: str, namespace_id: str, host: dict[str, object]) -> ModifySettingRequest:
    return ModifySettingRequest(
        resource_path=network_resource_path(nic_id),
        request_type=RequestType.REMOVE,
        settings=host,
        guest_request=GuestModificationRequest(
            resource_type=ResourceType.NETWORK,
            request_type=RequestType.REMOVE,
            settings=LCOWNetworkAdapter(namespace_id=namespace_id, id=nic_id),
        ),
    )


def network_remove(nic_id: str, endpoint_id: str, mac: str, namespace_id: str = "") -> ModifySettingRequest:
    return ModifySettingRequest(
        resource_path=network_resource_path(nic_id),
        request_type=RequestType.REMOVE,
        settings=NetworkAdapter(endpoint_id=endpoint_id, mac_address=mac),
        guest_request=GuestModificationRequest(
            resource_type=ResourceType.NETWORK,
            request_type=RequestType.REMOVE,
            settings=LCOWNetworkAdapter(namespace_id=namespace_id, id=nic_id),
        ),
    )


def memory_update(size_in_mb: int) -> ModifySettingRequest:
    """Resize the VM's memory; the settings are the bare number (RequestType empty, as upstream)."""
    return ModifySettingRequest(resource_path=MEMORY_RESOURCE_PATH, settings=size_in_mb)


def processor_limits_update(*, limit: int = 0, weight: int = 0) -> ModifySettingRequest:
    return ModifySettingRequest(
        resource_path=CPU_LIMITS_RESOURCE_PATH, settings=ProcessorLimits(limit=limit, weight=weight)
    )


def container_constraints_update(linux: dict[str, object]) -> GuestModificationRequest:
    return GuestModificationRequest(
        resource_type=ResourceType.CONTAINER_CONSTRAINTS,
        request_type=RequestType.UPDATE,
        settings=LCOWContainerConstraints(linux=linux),
    )
