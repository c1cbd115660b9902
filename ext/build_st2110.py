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


#: st2110.c's calls beyond st2110.h: a frame's packets as headers and spans of the frame, sent
#: without packing them (each packet two iovecs: its header, then its payload in the frame).
EXTRA = """
long msm_st2110_headers(uint32_t width, uint32_t height, uint32_t pg_bytes, uint32_t pg_pixels, uint32_t mtu,
                        int mode, uint32_t seq, uint32_t timestamp, uint32_t ssrc, int payload_type,
                        uint8_t *heads, size_t head_stride, size_t max_packets, uint32_t *head_lens,
                        uint32_t *pay_offs, uint32_t *pay_lens);
long msm_st2110_send_frame(int fd, int family, const uint8_t *addr, uint16_t port, const uint8_t *heads,
                           size_t head_stride, const uint32_t *head_lens, const uint8_t *frame,
                           const uint32_t *pay_offs, const uint32_t *pay_lens, size_t count, uint64_t spread_ns,
                           int gso, msm_st2110_tx_stats *stats);
"""

ffibuilder = FFI()
ffibuilder.cdef(_cdef((HERE / "st2110.h").read_text()) + EXTRA)
ffibuilder.set_source(
    "msm.ext._st2110",
    '#include "st2110.h"\n' + EXTRA,
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
