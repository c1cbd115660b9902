"""cffi (API mode) builder of ``msm.ext._memif``, the memif descriptor-ring fast path.

setup.py picks up every ``ext/build*.py``; ``python ext/build_memif.py``
rebuilds it in place. The declarations are memif.h minus its preprocessor lines.
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
    text = re.sub(r"/\*.*?\*/", "", "\n".join(keep), flags=re.S)
    return text


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


ffibuilder = FFI()
ffibuilder.cdef(_cdef((HERE / "memif.h").read_text()))
ffibuilder.set_source(
    "msm.ext._memif",
    '#include "memif.h"',
    sources=[_rel(HERE / "memif.c")],
    include_dirs=[_rel(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
    # Optional like the engine: without a compiler msm.sdk.memif_ring walks the
    # rings in Python (same results, more CPU per frame).
    optional=True,
    py_limited_api=True,
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose="-v" in sys.argv)
