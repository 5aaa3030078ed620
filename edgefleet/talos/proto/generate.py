"""Generate the Python modules of the Talos API subset from the ``.proto`` files next to this file.

``protoc`` (from grpcio-tools) writes absolute imports (``from common import common_pb2``); they
are rewritten to this package's path so the modules import from anywhere. Run as
``python -m edgefleet.talos.proto.generate`` to rewrite the committed modules in place.
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

from edgefleet.errors import ToolMissing

__all__ = ["PACKAGE", "PROTOS", "PROTO_DIR", "generate", "generated_files"]

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE = "edgefleet.talos.proto"
PROTOS = ("common/common.proto", "machine/machine.proto")
_IMPORT = re.compile(r"^from (common|machine) import (\w+_pb2)", re.MULTILINE)


def generated_files() -> list[str]:
    """The generated files, relative to ``PROTO_DIR``."""
    out = []
    for p in PROTOS:
        stem = p[: -len(".proto")]
        out += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return out


def _include_dirs() -> list[str]:
    try:
        grpc_tools = importlib.import_module("grpc_tools")
    except ImportError:
        raise ToolMissing("grpcio-tools is not installed: pip install grpcio-tools") from None
    status = importlib.import_module("google.rpc.status_pb2")  # googleapis-common-protos ships status.proto
    tools_dir = Path(str(grpc_tools.__file__)).parent
    status_file = Path(str(status.__file__))
    return [str(PROTO_DIR), str(tools_dir / "_proto"), str(status_file.parent.parent.parent)]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on ``PROTOS`` and write the fixed-up modules under ``out_dir``."""
    includes = _include_dirs()
    protoc = importlib.import_module("grpc_tools.protoc")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", *(f"-I{d}" for d in includes), f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *PROTOS]
        rc = protoc.main(args)
        if rc != 0:
            raise ToolMissing(f"protoc failed with exit code {rc} on {', '.join(PROTOS)}")
        written = []
        for rel in generated_files():
            text = (Path(tmp) / rel).read_text()
            text = _IMPORT.sub(lambda m: f"from {PACKAGE}.{m.group(1)} import {m.group(2)}", text)
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            written.append(dest)
    return written


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        for f in files:
            rel = f.relative_to(tmp)
            shutil.copyfile(f, PROTO_DIR / rel)
            print(f"wrote {PROTO_DIR / rel}", file=sys.stderr)


if __name__ == "__main__":
    main()
