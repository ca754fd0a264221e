"""Regenerate the protobuf modules under ``src/hcsshim/api`` from their ``.proto`` sources.

``python -m hcsshim.api.generate [--out DIR]`` runs the protoc bundled with the pinned grpcio-tools and
mypy-protobuf's ``protoc-gen-mypy`` from the same virtualenv, with ``-I src`` so that generated modules
import each other as ``hcsshim.api....``. With ``--out`` the tree is written elsewhere (the unit test
uses this to diff a fresh generation against the committed files).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
SRC_DIR = API_DIR.parent.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")


def proto_files() -> list[Path]:
    """All .proto sources, sorted so that protoc sees them in a stable order."""
    return sorted(API_DIR.rglob("*.proto"))


def generated_files(root: Path) -> list[Path]:
    """Generated modules under ``root/hcsshim/api``, relative to ``root``."""
    api = root / "hcsshim" / "api"
    found = [p for p in api.rglob("*") if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)]
    return sorted(p.relative_to(root) for p in found)


def _mypy_plugin() -> str:
    # The plugin must come from the same venv as the pinned mypy-protobuf, not from whatever PATH has.
    beside = Path(sys.executable).parent / "protoc-gen-mypy"
    if beside.exists():
        return str(beside)
    found = shutil.which("protoc-gen-mypy")
    if found is None:
        raise SystemExit("protoc-gen-mypy not found: install the dev extras (mypy-protobuf)")
    return found


def _ensure_packages(out: Path) -> None:
    # Every directory that holds generated modules must be an importable package.
    for proto in proto_files():
        rel = proto.parent.relative_to(SRC_DIR)
        directory = out / rel
        # Stop below hcsshim/api: that package is hand-written.
        while len(directory.relative_to(out).parts) > 2:
            init = directory / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated protobuf modules (see hcsshim.api.generate)."""\n')
            directory = directory.parent


def generate(out: Path) -> list[Path]:
    """Run protoc over every .proto into ``out``; return the generated files relative to ``out``."""
    from grpc_tools import protoc  # dev dependency: keep the runtime import graph free of it

    out.mkdir(parents=True, exist_ok=True)
    for old in generated_files(out):
        (out / old).unlink()
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{SRC_DIR}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_mypy_plugin()}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        *(str(p) for p in proto_files()),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    _ensure_packages(out)
    return generated_files(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hcsshim.api.generate", description=__doc__)
    parser.add_argument("--out", type=Path, default=SRC_DIR, help="output root (default: src)")
    ns = parser.parse_args(argv)
    files = generate(ns.out.resolve())
    print(f"generated {len(files)} files under {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
