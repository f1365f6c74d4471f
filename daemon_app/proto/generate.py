"""Regenerate daemon_pb2.py / daemon_pb2_grpc.py from proto/daemon.proto (`make proto`)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent.parent / "proto"
OUT_DIR = Path(__file__).resolve().parent
GENERATED = ("daemon_pb2.py", "daemon_pb2_grpc.py")


def generate(out_dir: str | os.PathLike[str] = OUT_DIR,
             proto_dir: str | os.PathLike[str] = PROTO_DIR) -> list[Path]:
    """Run grpc_tools.protoc into `out_dir`; make the grpc module's import package-relative."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{proto_dir}", f"--python_out={tmp}",
                f"--grpc_python_out={tmp}", str(Path(proto_dir) / "daemon.proto")]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto_dir}/daemon.proto")
        grpc_py = Path(tmp) / "daemon_pb2_grpc.py"
        text = re.sub(r"^import daemon_pb2 as daemon__pb2$",
                      "from daemon_app.proto import daemon_pb2 as daemon__pb2", grpc_py.read_text(),
                      flags=re.M)
        grpc_py.write_text(text)
        written = []
        for name in GENERATED:
            shutil.copyfile(Path(tmp) / name, out / name)
            written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(OUT_DIR), help="output directory (default: daemon_app/proto)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
