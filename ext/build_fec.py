"""cffi (API mode) builder of ``msm.ext._fec``, the loss repair codecs (SMPTE 2022-1 FEC, 2022-7).

setup.py picks up every ``ext/build*.py``; ``python ext/build_fec.py``
rebuilds it in place. The declarations are fec.h minus its preprocessor lines.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _cdef(header: str) -> str:
    keep = [line for line in header.splitlines() if not line.startswith("#")]
    return re.sub(r"/\*.*?\*/", "", "\n".join(keep), flags=re.S)


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


ffibuilder = FFI()
ffibuilder.cdef(_cdef((HERE / "fec.h").read_text()))
ffibuilder.set_source(
    "msm.ext._fec",
    '#include "fec.h"\n',
    sources=[_rel(HERE / "fec.c")],
    include_dirs=[_rel(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    # Optional like the engine: without a compiler the repair codecs run as msm.rtp_proxy.repair.
    optional=True,
    py_limited_api=True,
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose="-v" in sys.argv)
