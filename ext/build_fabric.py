"""cffi (API mode) builder of ``msm.ext._fabric``, the libfabric frame link between proxies.

setup.py names ``ffibuilder`` in ``cffi_modules`` (every ``ext/build*.py``);
``python ext/build_fabric.py`` rebuilds it in place for development. Most of
libfabric's API is ``static inline`` in its headers, hence API mode: the C in
fabric.c calls it, Python only sees fabric.h. Without libfabric's headers
(``libfabric-dev``) or a compiler the module is skipped (``optional``) and
:mod:`msm.ext.fabric` says why.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _cdef(header: str) -> str:
    keep = []
    for line in header.splitlines():
        if line.startswith("#") and not re.match(r"#define MSM_FAB_\w+ \d+", line):
            continue
        keep.append(re.sub(r"/\*.*?\*/", "", line) if line.startswith("#define") else line)
    return "\n".join(keep)


def _rel(path: Path) -> str:
    # setuptools wants source paths relative to the project (setup.py's directory).
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


ffibuilder = FFI()
ffibuilder.cdef(_cdef((HERE / "fabric.h").read_text()))
ffibuilder.set_source(
    "msm.ext._fabric",
    '#include "fabric.h"',
    sources=[_rel(HERE / "fabric.c")],
    include_dirs=[_rel(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
    libraries=["fabric"],
    # No libfabric headers, no compiler: the install goes on without the link
    # (msm.ext.fabric.load() then raises NativeUnavailable with the reason).
    optional=True,
    # The same file name (.abi3.so) whether pip or `python build_fabric.py` builds it.
    py_limited_api=True,
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose="-v" in sys.argv)
