"""The pod model and the UtilityVM ask their collaborators through Protocols, never by probing them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hcsshim

TYPED = ("shim/pod.py", "shim/task.py", "shim/service_task.py", "uvm/utility_vm.py", "shim/local.py")


@pytest.mark.parametrize("module", TYPED)
def test_no_getattr_or_hasattr_probing(module: str) -> None:
    path = Path(hcsshim.__file__).parent / module
    tree = ast.parse(path.read_text(), str(path))
    probes = [
        f"{module}:{node.lineno}: {node.func.id}(...)"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
    ]
    assert not probes, "add the member to the Protocol instead: " + "; ".join(probes)
