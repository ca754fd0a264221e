"""The few fields the shim reads of two messages other components define, decoded without their
.proto files (each built in a private descriptor pool, so the full modules can still be loaded
beside them; unknown fields are skipped as protobuf always does):

- CRI's ``runtime.v1.PodSandboxConfig`` (hostname = 2, annotations = 7): containerd 2.x's CRI passes
  it as ``CreateSandboxRequest.options`` with ``sandboxer = "shim"``;
- containerd's ``runtimeoptions.v1.Options`` (type_url = 1, config_path = 2, config_body = 3): the
  options CRI hands a runtime type it has no options type for (every one but runc's and
  runhcs-v1's), e.g. ``io.containerd.lcow.v2``.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

POD_SANDBOX_CONFIG = "runtime.v1.PodSandboxConfig"
RUNTIME_OPTIONS = "runtimeoptions.v1.Options"

_F = descriptor_pb2.FieldDescriptorProto


def _string(msg: descriptor_pb2.DescriptorProto, name: str, number: int) -> None:
    msg.field.add(name=name, number=number, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)


@functools.cache
def _classes() -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    cri = descriptor_pb2.FileDescriptorProto(
        name="hcsshim_foreign_cri.proto", package="runtime.v1", syntax="proto3"
    )
    entry = descriptor_pb2.DescriptorProto(name="AnnotationsEntry")
    entry.options.map_entry = True
    _string(entry, "key", 1)
    _string(entry, "value", 2)
    config = cri.message_type.add(name="PodSandboxConfig")
    config.nested_type.append(entry)
    _string(config, "hostname", 2)
    config.field.add(
        name="annotations",
        number=7,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".runtime.v1.PodSandboxConfig.AnnotationsEntry",
    )
    pool.Add(cri)
    ro = descriptor_pb2.FileDescriptorProto(
        name="hcsshim_foreign_runtimeoptions.proto", package="runtimeoptions.v1", syntax="proto3"
    )
    options = ro.message_type.add(name="Options")
    _string(options, "type_url", 1)
    _string(options, "config_path", 2)
    options.field.add(name="config_body", number=3, type=_F.TYPE_BYTES, label=_F.LABEL_OPTIONAL)
    pool.Add(ro)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        for name in (POD_SANDBOX_CONFIG, RUNTIME_OPTIONS)
    }


def _decode(name: str, data: bytes) -> Any:
    message: Any = _classes()[name]()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    return message


def pod_sandbox_config(data: bytes) -> tuple[str, dict[str, str]]:
    """(hostname, annotations) of a serialized PodSandboxConfig; ValueError if it does not parse."""
    config = _decode(POD_SANDBOX_CONFIG, data)
    return str(config.hostname), {str(k): str(v) for k, v in config.annotations.items()}


def runtime_options(data: bytes) -> tuple[str, str, bytes]:
    """(type_url, config_path, config_body) of a serialized runtimeoptions.v1.Options."""
    options = _decode(RUNTIME_OPTIONS, data)
    return str(options.type_url), str(options.config_path), bytes(options.config_body)
