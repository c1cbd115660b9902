"""cffi (API mode) builder of ``msm.ext._pacer``, the ST 2110-21 sender pacer.

setup.py picks up every ``ext/build*.py``; ``python ext/build_pacer.py``
rebuilds it in place. The declarations are pacer.h minus its preprocessor lines.
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
    return text.replace("MSM_PACER_MAX_GROUP", "64")


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


#: pacer.c's calls beyond pacer.h: the bucket mode of wide senders, and a frame sent in the
#: frame form (headers apart, payloads as spans of the frame: nothing packed; pacer.c says how).
EXTRA = """
int msm_pacer_set_bucket(msm_pacer *pacer, uint32_t cmax, uint32_t ahead, int64_t wake_early_max_ns);
int msm_pacer_send_parts(msm_pacer *pacer, unsigned char *heads, size_t head_stride, const uint32_t *head_lens,
                         const unsigned char *frame, uint64_t frame_len, const uint32_t *pay_offs,
                         const uint32_t *pay_lens, uint32_t n, int64_t frame_index, uint32_t hurry,
                         msm_pacer_stats *out);
"""

ffibuilder = FFI()
ffibuilder.cdef(_cdef((HERE / "pacer.h").read_text()) + EXTRA)
ffibuilder.set_source(
    "msm.ext._pacer",
    '#include "pacer.h"\n' + EXTRA,
    sources=[_rel(HERE / "pacer.c")],
    include_dirs=[_rel(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
    # Optional like the engine: without a compiler nothing paces (the twin in
    # msm.rtp_proxy.media.pacing computes the schedule but does not send at rate).
    optional=True,
    py_limited_api=True,
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose="-v" in sys.argv)
