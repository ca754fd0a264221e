"""The agent's hold on the cgroup BPF device key, against this host's real kernel: a private cgroup2
mount and a cgroup of the test's own stand in for the UVM's root cgroup (attaching to this host's
root would change the host)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from hcsshim.guest import static_keys

pytestmark = pytest.mark.root


@pytest.fixture
def scratch_cgroup(tmp_path: object) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("needs root: mounts cgroup2 and attaches a BPF program")
    mnt = os.path.join(str(tmp_path), "cg2")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "cgroup2", "none", mnt], check=True)
    cg = os.path.join(mnt, f"hcsshim-keytest-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(cg)
        yield cg
    finally:
        # Removing the cgroup detaches its programs.
        if os.path.isdir(cg):
            os.rmdir(cg)
        subprocess.run(["umount", mnt], check=True)


def test_the_allow_all_device_program_is_attached_once_with_allow_multi(scratch_cgroup: str) -> None:
    assert static_keys.device_programs(scratch_cgroup) == ([], 0)
    assert static_keys.hold_device_filter_key(scratch_cgroup) is True
    ids, flags = static_keys.device_programs(scratch_cgroup)
    assert len(ids) == 1 and ids[0] > 0
    # Without ALLOW_MULTI runc could not attach its own filters below it.
    assert flags == static_keys.BPF_F_ALLOW_MULTI
    # A second agent start in the same UVM attaches nothing more.
    assert static_keys.hold_device_filter_key(scratch_cgroup) is False
    assert static_keys.device_programs(scratch_cgroup) == (ids, flags)


def test_a_child_cgroup_can_still_attach_its_own_filter(scratch_cgroup: str) -> None:
    static_keys.hold_device_filter_key(scratch_cgroup)
    child = os.path.join(scratch_cgroup, "container")
    os.mkdir(child)
    try:
        assert static_keys.hold_device_filter_key(child) is True
        assert len(static_keys.device_programs(child)[0]) == 1
    finally:
        os.rmdir(child)


def test_a_path_that_is_not_a_cgroup_is_named_in_the_error(tmp_path: object) -> None:
    with pytest.raises(OSError, match=str(tmp_path)):
        static_keys.device_programs(str(tmp_path))
