"""Regenerate the Python gRPC code from ``msm.proto``.

    python -m msm.protos.generate          # rewrite protos/msm_pb2*.py
    python -m msm.protos.generate --check  # exit 1 if the committed code is stale

Imports in the generated ``_grpc`` module are made package-relative so that
``protos`` works as an installed package.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUTS = ("msm_pb2.py", "msm_pb2.pyi", "msm_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # only needed by developers, not at run time

    args = [
        "protoc",
        f"-I{HERE}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(HERE / "msm.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    grpc_file = out_dir / "msm_pb2_grpc.py"
    text = grpc_file.read_text()
    grpc_file.write_text(text.replace("import msm_pb2 as msm__pb2", "from . import msm_pb2 as msm__pb2"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check the committed code is current")
    opts = parser.parse_args(argv)
    if not opts.check:
        generate(HERE)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [n for n in OUTPUTS if (Path(tmp) / n).read_bytes() != (HERE / n).read_bytes()]
    if stale:
        print(f"stale generated code: {', '.join(stale)}; run: python -m msm.protos.generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
