"""cffi (API mode) builder of ``msm.ext._engine``, the native data plane.

setup.py names ``ffibuilder`` in ``cffi_modules``, so pip compiles the engine at
install time; ``python ext/build.py`` rebuilds it in place for development.
The declarations are engine.h itself, minus its preprocessor lines.
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
        if line.startswith("#") and not re.match(r"#define MSM_(FEATURE|SRTP)_\w+ \d+", line):
            continue
        keep.append(re.sub(r"/\*.*?\*/", "", line) if line.startswith("#define") else line)
    return "\n".join(keep)


def _rel(path: Path) -> str:
    # setuptools wants source paths relative to the project (setup.py's directory).
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _srtp() -> tuple[list[tuple[str, str | None]], list[str]]:
    """``MSM_HAVE_SRTP`` (and ``-ldl``) where libsrtp2's headers are found (``libsrtp2-dev``); else neither.

    libsrtp is not linked: the engine resolves its functions at run time from
    the library ``msm_srtp_load`` is given (pylibsrtp's, built on OpenSSL), or
    the system's ``libsrtp2.so.1`` (engine.c says why). The headers give the
    types. Without them the engine still builds, reports no ``srtp`` feature
    and refuses SRTP flows and legs (the proxy says why). ``MSM_NO_SRTP=1``
    builds without it.
    """
    if os.environ.get("MSM_NO_SRTP", "") not in ("", "0"):
        return [], []
    dirs = [Path(p) for p in os.environ.get("CPATH", "").split(":") if p] + [Path("/usr/include"),
                                                                            Path("/usr/local/include")]
    if any((d / "srtp2" / "srtp.h").is_file() for d in dirs):
        return [("MSM_HAVE_SRTP", "1")], ["dl"]
    return [], []


_SRTP_MACROS, _SRTP_LIBS = _srtp()

ffibuilder = FFI()
ffibuilder.cdef(_cdef((HERE / "engine.h").read_text()))
ffibuilder.set_source(
    "msm.ext._engine",
    '#include "engine.h"',
    sources=[_rel(HERE / "engine.c")],
    include_dirs=[_rel(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
    libraries=["pthread", *_SRTP_LIBS],
    define_macros=_SRTP_MACROS,
    # A build failure (no compiler, no Python headers, not Linux) skips the
    # extension instead of failing the install: the proxy then runs the
    # pure-Python data path and says so in its log.
    optional=True,
    # The same file name (.abi3.so) whether pip or `python build.py` builds it,
    # so a development build never shadows an installed one or the reverse.
    py_limited_api=True,
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose="-v" in sys.argv)
