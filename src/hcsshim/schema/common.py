"""Small schema2 types shared by VMs and containers."""

# ruff: noqa: RUF009  -- j() is a dataclasses.field() carrying the Go json tag; it returns a Field, not a shared default
from __future__ import annotations

from dataclasses import dataclass

from hcsshim.schema._codec import SchemaObject, j


@dataclass(slots=True, kw_only=True)
class Version(SchemaObject):
    major: int = j("Major", "i32", default=0)
    minor: int = j("Minor", "i32", default=0)


@dataclass(slots=True, kw_only=True)
class StorageQoS(SchemaObject):
    iops_maximum: int = j("IopsMaximum", "i32", default=0)
    bandwidth_maximum: int = j("BandwidthMaximum", "i32", default=0)


@dataclass(slots=True, kw_only=True)
class HvSocketServiceConfig(SchemaObject):
    bind_security_descriptor: str = j("BindSecurityDescriptor", default="")
    connect_security_descriptor: str = j("ConnectSecurityDescriptor", default="")
    allow_wildcard_binds: bool = j("AllowWildcardBinds", default=False)
    disabled: bool = j("Disabled", default=False)


@dataclass(slots=True, kw_only=True)
class HvSocketSystemConfig(SchemaObject):
    default_bind_security_descriptor: str = j("DefaultBindSecurityDescriptor", default="")
    default_connect_security_descriptor: str = j("DefaultConnectSecurityDescriptor", default="")
    service_table: dict[str, HvSocketServiceConfig] = j("ServiceTable", factory=dict)


@dataclass(slots=True, kw_only=True)
class Layer(SchemaObject):
    id: str = j("Id", default="")
    path: str = j("Path", default="")
    path_type: str = j("PathType", default="")
    cache: str = j("Cache", default="")


@dataclass(slots=True, kw_only=True)
class RegistryKey(SchemaObject):
    hive: str = j("Hive", default="")
    name: str = j("Name", default="")
    volatile: bool = j("Volatile", default=False)


@dataclass(slots=True, kw_only=True)
class RegistryValue(SchemaObject):
    key: RegistryKey | None = j("Key", default=None)
    name: str = j("Name", default="")
    type: str = j("Type", default="")
    string_value: str = j("StringValue", default="")
    binary_value: str = j("BinaryValue", default="")
    d_word_value: int = j("DWordValue", "i32", default=0)
    q_word_value: int = j("QWordValue", "i32", default=0)
    custom_type: int = j("CustomType", "i32", default=0)


@dataclass(slots=True, kw_only=True)
class RegistryChanges(SchemaObject):
    add_values: list[RegistryValue] = j("AddValues", factory=list)
    delete_keys: list[RegistryKey] = j("DeleteKeys", factory=list)
