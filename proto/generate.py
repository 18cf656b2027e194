"""Regenerates the committed Python modules of the Cairn API from the .proto files.

Run `python -m cairn.proto.generate` after editing a .proto file. The output is
deterministic, so a test regenerates into a temporary directory and compares byte for byte.
grpc_tools writes imports relative to the proto root (`from cairn.v1 import ...`); they are
rewritten to the installed package path `cairn.proto.cairn.v1`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

PROTO_ROOT = os.path.dirname(os.path.abspath(__file__))
PROTO_FILES = ("cairn/v1/cairn.proto",)
PACKAGE_PREFIX = "cairn.proto."

_IMPORT = re.compile(rb"^from cairn\.v1 import ", re.MULTILINE)


def generate(out_dir: str = PROTO_ROOT) -> list[str]:
    """Generate the modules for PROTO_FILES under `out_dir`; return the written paths."""
    from grpc_tools import protoc  # a build-time dependency only

    for rel in PROTO_FILES:
        os.makedirs(os.path.join(out_dir, os.path.dirname(rel)), exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed for " + ", ".join(PROTO_FILES))
    written = []
    for rel in PROTO_FILES:
        stem = os.path.join(out_dir, rel[: -len(".proto")])
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = stem + suffix
            _fix_imports(path)
            written.append(path)
    return written


def _fix_imports(path: str) -> None:
    """Point `from cairn.v1 import x` at the installed package `cairn.proto.cairn.v1`."""
    with open(path, "rb") as f:
        text = f.read()
    fixed = _IMPORT.sub(b"from " + PACKAGE_PREFIX.encode() + b"cairn.v1 import ", text)
    if fixed != text:
        with open(path, "wb") as f:
            f.write(fixed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cairn.proto.generate", description=__doc__)
    parser.add_argument("--out", default=PROTO_ROOT, help="output root (default: next to the .proto files)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
