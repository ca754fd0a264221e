"""``hcsshim install``'s config.toml edit: the handler in containerd's schema for its version, once."""

from __future__ import annotations

import tomllib

import pytest

from hcsshim.cli.install import (
    CRI_RUNTIMES,
    Handler,
    InstallError,
    Overhead,
    config_version_for,
    runtime_class,
    updated_config,
)

HANDLER = Handler("vm", "io.containerd.runhcs.v1", "/opt/x/bin/containerd-shim-runhcs-v1")
V2_BASE = (
    'version = 2\n\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n  runtime_type = "x"\n'
)


def _handler_table(text: str, config_version: int) -> object:
    node: object = tomllib.loads(text)
    for part in (*CRI_RUNTIMES[config_version], "vm"):
        assert isinstance(node, dict), text
        node = node[part]
    return node


@pytest.mark.parametrize(
    ("containerd", "expected"), [("1.6.20~ds1", 2), ("v1.7.24", 2), ("2.1.9+unknown", 3)]
)
def test_config_version_follows_containerd(containerd: str, expected: int) -> None:
    assert config_version_for(containerd) == expected


def test_too_old_containerd_is_refused() -> None:
    with pytest.raises(InstallError, match=r"1\.5\.0 is too old"):
        config_version_for("1.5.0")


@pytest.mark.parametrize("config_version", [2, 3])
def test_empty_config_gets_version_and_handler_and_second_run_changes_nothing(config_version: int) -> None:
    text = updated_config("", HANDLER, config_version)
    assert tomllib.loads(text)["version"] == config_version
    assert _handler_table(text, config_version) == HANDLER.settings()
    assert updated_config(text, HANDLER, config_version) == text


def test_existing_config_keeps_its_text_and_gains_the_block() -> None:
    text = updated_config(V2_BASE, HANDLER, 2)
    assert text.startswith(V2_BASE)
    assert tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]
    assert updated_config(text, HANDLER, 2) == text


def test_changed_setting_replaces_only_our_block() -> None:
    first = updated_config(V2_BASE, HANDLER, 2)
    moved = Handler("vm", HANDLER.runtime_type, "/elsewhere/containerd-shim-runhcs-v1")
    second = updated_config(first, moved, 2)
    assert second.startswith(V2_BASE)
    assert second.count("BEGIN hcsshim install") == 1
    assert _handler_table(second, 2) == moved.settings()


def test_version_mismatch_is_an_error_naming_both() -> None:
    with pytest.raises(InstallError, match=r"version = 2.*uses version 3"):
        updated_config(V2_BASE, HANDLER, 3)
    with pytest.raises(InstallError, match="version 1"):
        updated_config('[grpc]\n  address = "/x"\n', HANDLER, 2)


def test_hand_written_handler_equal_is_kept_different_is_an_error() -> None:
    table = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vm]\n'
    same = (
        V2_BASE + table + "".join(f"  {k} = {v!r}\n".replace("'", '"') for k, v in HANDLER.settings().items())
    )
    assert updated_config(same, HANDLER, 2) == same
    other = V2_BASE + table + '  runtime_type = "io.containerd.other.v1"\n'
    with pytest.raises(InstallError, match=r"'vm'.*runtime_type"):
        updated_config(other, HANDLER, 2)


def test_invalid_toml_is_named() -> None:
    with pytest.raises(InstallError, match=r"/etc/c\.toml: not valid TOML"):
        updated_config("version = = 2", HANDLER, 2, "/etc/c.toml")


def test_runtime_class_rounds_the_measured_overhead_up() -> None:
    manifest = runtime_class("vm", Overhead(memory_bytes=(200 << 20) + 1, cpu_milli=41, measured="m"))
    assert "kind: RuntimeClass" in manifest
    assert "handler: vm" in manifest
    assert 'memory: "208Mi"' in manifest
    assert 'cpu: "50m"' in manifest
