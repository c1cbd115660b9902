"""Fuzz the RFC 4175 depacketizer: the Python twin, and the C core against it.

The input is a format byte and then packets, each prefixed by a one-byte
length. ``Depacketizer.push`` must never raise (bad packets are counted);
``parse_payload`` raises only :class:`~msm.sdk.errors.RtpError`. When the C
core is built, it must hand back the same frames (timestamp, completeness,
loss, bytes) and the same counters as the twin.
"""

from __future__ import annotations

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import RtpError
    from msm.sdk.rfc4175 import Depacketizer, VideoFormat, parse_payload

try:
    from msm.ext import st2110 as native

    native.load()
except Exception:  # noqa: BLE001 - the twin is fuzzed alone then
    native = None

NAME = "rfc4175"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()
FORMATS = [VideoFormat("YCbCr-4:2:2", 10, 8, 4), VideoFormat("YCbCr-4:2:2", 8, 16, 2), VideoFormat("RGB", 8, 4, 3),
           VideoFormat("RGB", 10, 8, 2)]
SAME = ("packets", "bad_rtp", "bad_pt", "bad_ssrc", "bad_segment", "late", "lost", "frames_complete",
        "frames_incomplete")


def packets(data: bytes) -> list[bytes]:
    out, pos = [], 1
    while pos < len(data):
        size = data[pos]
        out.append(data[pos + 1:pos + 1 + size])
        pos += 1 + size
    return out


def native_frames(fmt: VideoFormat, items: list[bytes]) -> tuple[list[tuple[int, bool, int, bytes]], dict[str, int]]:
    assert native is not None
    rx = native.Receiver(-1, fmt.width, fmt.height, fmt.pgroup_bytes, fmt.pgroup_pixels, 96)
    out, buf = [], bytearray(fmt.frame_bytes)
    for p in items:
        rc, info = rx.push(p, buf)
        if rc == 2 and info is not None:
            out.append((info.timestamp, info.complete, info.lost, bytes(buf)))
            buf = bytearray(fmt.frame_bytes)
            rc, info = rx.push(p, buf)
        if rc == 1 and info is not None:
            out.append((info.timestamp, info.complete, info.lost, bytes(buf)))
            buf = bytearray(fmt.frame_bytes)
    return out, rx.stats()


def test_one(data: bytes) -> None:
    if not data:
        return
    try:
        fmt = FORMATS[data[0] % len(FORMATS)]
        items = packets(data)
        for p in items:
            try:
                parse_payload(p, fmt)
            except RtpError:
                pass
        twin = Depacketizer(fmt)
        frames = [(f.timestamp, f.complete, f.lost, bytes(f.data)) for p in items for f in twin.push(p)]
        if native is not None:
            c_frames, c_counts = native_frames(fmt, items)
            if c_frames != frames:
                raise AssertionError(f"C core frames {c_frames!r:.300} differ from the twin's {frames!r:.300}")
            for name in SAME:
                if c_counts[name] != twin.counters[name]:
                    raise AssertionError(f"counter {name}: C {c_counts[name]}, twin {twin.counters[name]}")
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, []))
