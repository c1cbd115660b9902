"""Fuzz the session description parser (``SessionDescription.parse``).

Only :class:`~msm.sdk.errors.SdpError` is expected.  A description that parses must
also serialise to a fixed point (its bytes parse to a description with the same
bytes; the value may differ in the order of ``extra`` lines, which serialising puts
in the RFC's order: see ``fuzz/seeds/sdp/extra_lines_reordered.sdp``), answer the questions the mesh asks of it
(controls, clock rates, payload maps) and survive the rewrite viewers get
(``viewer_sdp``), since upstream descriptions are peer bytes too.
"""

from __future__ import annotations

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import SdpError
    from msm.sdk.rtsp_server import viewer_sdp
    from msm.sdk.sdp import SessionDescription, resolve_control

NAME = "sdp"
KNOWN: tuple[fuzzlib.KnownBug, ...] = (
)
BASE = "rtsp://127.0.0.1:8554/cam"


def check(sdp: SessionDescription) -> None:
    data = bytes(sdp)
    again = bytes(SessionDescription.parse(data))
    if again != data:
        raise AssertionError(f"serialising is not a fixed point: {data!r:.300} became {again!r:.300}")
    resolve_control(BASE, sdp.control)
    for media in sdp.media:
        resolve_control(BASE, media.control)
        media.clock_rate  # noqa: B018 - a property that parses the payload maps
        for payload_type in range(128):
            media.rtpmap(payload_type)
    for host in ("127.0.0.1", "::1"):
        SessionDescription.parse(viewer_sdp(sdp, host))


def test_one(data: bytes) -> None:
    try:
        try:
            sdp = SessionDescription.parse(data)
        except SdpError:
            return
        check(sdp)
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, ["sdp/*.sdp"]))
