"""Every console script declared in pyproject.toml starts: ``--help`` (``-v`` for the containerd shims,
whose Go-style flags have no --help) exits 0 and names the program. Both the installed script and the
``module:function`` it points at are run, so a missing module or a stale install shows up here."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


def _probe(name: str) -> list[str]:
    return ["-v"] if name.startswith("containerd-shim-") else ["--help"]


def _check(name: str, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert name in proc.stdout, proc.stdout


def test_pyproject_declares_scripts() -> None:
    assert "hcsshim" in _scripts()


@pytest.mark.parametrize("name", sorted(_scripts()))
def test_entry_point_function_runs(name: str) -> None:
    module, _, func = _scripts()[name].partition(":")
    code = (
        "import importlib, sys\n"
        f"sys.argv = [{name!r}, *sys.argv[1:]]\n"
        f"sys.exit(getattr(importlib.import_module({module!r}), {func!r})())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *_probe(name)], capture_output=True, text=True, timeout=60
    )
    _check(name, proc)


@pytest.mark.parametrize("name", sorted(_scripts()))
def test_installed_script_runs(name: str) -> None:
    path = BIN / name
    assert path.exists(), f"{path} missing: the install is stale (run scripts/setup.sh)"
    proc = subprocess.run([str(path), *_probe(name)], capture_output=True, text=True, timeout=60)
    _check(name, proc)
