"""Hot add/remove request shapes (the JSON HCS and the GCS receive)."""

from __future__ import annotations

from hcsshim.schema import ModifySettingRequest
from hcsshim.schema import requests as r


def test_scsi_add_and_remove() -> None:
    add = r.scsi_add(1, 3, "/var/lib/x.vhdx", read_only=True)
    assert add.to_json() == (
        '{"ResourcePath":"VirtualMachine/Devices/Scsi/0110f83b-de10-5172-a266-78bca56bf50a/Attachments/3",'
        '"RequestType":"Add","Settings":{"Type":"VirtualDisk","Path":"/var/lib/x.vhdx","ReadOnly":true},'
        '"GuestRequest":{"RequestType":"Add","ResourceType":"MappedVirtualDisk",'
        '"Settings":{"MountPath":"/run/mounts/scsi/1_3_0","Lun":3,"Controller":1,"ReadOnly":true}}}'
    )
    assert r.scsi_eject(1, 3).to_json() == (
        '{"RequestType":"Remove","ResourceType":"SCSIDevice","Settings":{"Controller":1,"Lun":3}}'
    )
    assert r.scsi_remove(0, 1).to_json() == (
        '{"ResourcePath":"VirtualMachine/Devices/Scsi/df6d0690-79e5-55b6-a5ec-c1e2f77f580a/Attachments/1",'
        '"RequestType":"Remove","GuestRequest":{"RequestType":"Remove","ResourceType":"SCSIDevice",'
        '"Settings":{"Lun":1}}}'
    )
    assert ModifySettingRequest.from_json(add.to_json()).to_json() == add.to_json()


def test_plan9_vpmem_network_memory_cpu() -> None:
    assert r.plan9_add("0", "/srv/data", read_only=True).to_json() == (
        '{"ResourcePath":"VirtualMachine/Devices/Plan9/Shares","RequestType":"Add",'
        '"Settings":{"Name":"0","AccessName":"0","Path":"/srv/data","Port":564,"Flags":5},'
        '"GuestRequest":{"RequestType":"Add","ResourceType":"MappedDirectory",'
        '"Settings":{"MountPath":"/run/mounts/plan9/0","Port":564,"ShareName":"0","ReadOnly":true}}}'
    )
    assert r.plan9_add("1", "/srv", allowed_files=["f"]).to_dict()["Settings"]["Flags"] == 0x84
    assert r.vpmem_add(2, "/l.vhd", "/run/layers/p2").to_dict()["Settings"] == {
        "HostPath": "/l.vhd",
        "ReadOnly": True,
        "ImageFormat": "Vhd1",
    }
    assert r.network_remove("nic", "ep", "00-15-5D-00-00-01", "ns").to_dict()["GuestRequest"] == {
        "RequestType": "Remove",
        "ResourceType": "Network",
        "Settings": {"NamespaceID": "ns", "ID": "nic"},
    }
    assert r.memory_update(2048).to_json() == (
        '{"ResourcePath":"VirtualMachine/ComputeTopology/Memory/SizeInMB","Settings":2048}'
    )
    assert r.processor_limits_update(limit=50000).to_json() == (
        '{"ResourcePath":"VirtualMachine/ComputeTopology/Processor/Limits","Settings":{"Limit":50000}}'
    )
    assert r.container_constraints_update({"memory": {"limit": 1}}).to_json() == (
        '{"RequestType":"Update","ResourceType":"ContainerConstraints",'
        '"Settings":{"Windows":{},"Linux":{"memory":{"limit":1}}}}'
    )
