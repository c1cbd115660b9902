"""cffi (API mode) builder of ``msm.ext._st2110``, the ST 2110-20 packet core.

setup.py picks up every ``ext/build*.py``; ``python ext/build_st2110.py``
rebuilds it in place. The declarations are st2110.h minus its preprocessor lines.
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
ffibuilder.cdef(_cdef((HERE / "st2110.h").read_text()))
ffibuilder.set_source(
    "msm.ext._st2110",
    '#include "st2110.h"',
    sources=[_rel(HERE / "st2110.c")],
    include_dirs=[_rel(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
    # Optional like the engine: without a compiler the bridges use msm.sdk.rfc4175.
    optional=True,
    py_limited_api=True,
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose="-v" in sys.argv)
