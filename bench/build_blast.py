"""cffi (API mode) builder of ``msm_bench._blast``: the benchmark's C sender and receiver.

Built at install time like the engine (see setup.py) and optional the same
way: without it ``msm bench`` still runs but cannot measure the C limit.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent / "msm_bench"


def _cdef(header: str) -> str:
    keep = []
    for line in header.splitlines():
        if line.startswith("#") and not re.match(r"#define BLAST_\w+ \d+", line):
            continue
        keep.append(re.sub(r"/\*.*?\*/", "", line) if line.startswith("#define") else line)
    return "\n".join(keep)


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


ffibuilder = FFI()
ffibuilder.cdef(_cdef((HERE / "blast.h").read_text()))
ffibuilder.set_source(
    "msm_bench._blast",
    '#include "blast.h"',
    sources=[_rel(HERE / "blast.c")],
    include_dirs=[_rel(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
    optional=True,
    # The same file name (.abi3.so) whether pip or `python build.py` builds it,
    # so a development build never shadows an installed one or the reverse.
    py_limited_api=True,
)

if __name__ == "__main__":
    os.chdir(HERE.parent)  # bench/, where setup.py lives
    ffibuilder.compile(verbose="-v" in sys.argv)
