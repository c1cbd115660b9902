"""Regenerate the Python gRPC code from every ``.proto`` in this folder.

    python -m msm.protos.generate          # rewrite protos/<name>_pb2*.py for each <name>.proto
    python -m msm.protos.generate --check  # exit 1 if the committed code is stale

Imports in the generated modules are made package-relative (``from . import msm_pb2``)
so that ``protos`` works as an installed package.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def protos() -> list[Path]:
    return sorted(HERE.glob("*.proto"))


def outputs() -> list[str]:
    return [f"{p.stem}_pb2{suffix}" for p in protos() for suffix in (".py", ".pyi", "_grpc.py")]


# protoc writes "import x_pb2 as x__pb2" for the module's own messages (in _grpc) and for
# every imported .proto: all of them are siblings in this package.
_SIBLING = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def _relative(text: str) -> str:
    return _SIBLING.sub(r"from . import \1 as \2", text)


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # only needed by developers, not at run time

    args = [
        "protoc",
        f"-I{HERE}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in protos()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for name in outputs():
        if name.endswith(".py"):
            path = out_dir / name
            path.write_text(_relative(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check the committed code is current")
    opts = parser.parse_args(argv)
    if not opts.check:
        generate(HERE)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [n for n in outputs()
                 if not (HERE / n).exists() or (Path(tmp) / n).read_bytes() != (HERE / n).read_bytes()]
    if stale:
        print(f"stale generated code: {', '.join(stale)}; run: python -m msm.protos.generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
