"""SMPTE 2022-1 FEC against GStreamer's rtpst2022-1-fecenc / rtpst2022-1-fecdec, both ways.

GStreamer runs in Debian's Python (``gi``) as a one-shot filter: packets go in on stdin and
come out on stdout, pushed through the element from the caller's thread (no appsrc queues, no
sockets), so what is dropped and in which order things arrive is the test's, deterministically.
The media SSRC is 0: GStreamer's encoder refuses anything else. Recovered packets are compared
with the ones that were dropped, byte for byte.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess

import pytest

from msm.ext import NativeUnavailable
from msm.rtp_proxy import repair
from msm.rtp_proxy.repair import fec as py_fec

GST_PYTHON = "/usr/bin/python3"
# Tags of the framing on stdin/stdout: media, column FEC (fec_0, port + 2), row FEC (fec_1, port + 4).
MEDIA, COLUMN, ROW = 0, 1, 2

GST_FILTER = r'''
import struct, sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst

Gst.init(None)
mode, columns, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if Gst.ElementFactory.find("rtpst2022-1-fecenc") is None:
    sys.exit("SKIP: GStreamer has no rtpst2022-1-fecenc (gst-plugins-good 1.20 or later)")
MEDIA_CAPS = "application/x-rtp,media=video,clock-rate=90000,encoding-name=MP2T,payload=33"
FEC_CAPS = "application/x-rtp,media=application,clock-rate=90000,encoding-name=parityfec,payload=96"


def frames():
    data, at = sys.stdin.buffer.read(), 0
    while at < len(data):
        tag, n = struct.unpack_from("!BH", data, at)
        yield tag, data[at + 3:at + 3 + n]
        at += 3 + n


def feeder(name, target, caps):
    pad = Gst.Pad.new(name, Gst.PadDirection.SRC)
    pad.set_active(True)
    if pad.link(target) != Gst.PadLinkReturn.OK:
        sys.exit(f"cannot link {name}")
    pad.push_event(Gst.Event.new_stream_start(name))
    pad.push_event(Gst.Event.new_caps(Gst.Caps.from_string(caps)))
    segment = Gst.Segment.new()
    segment.init(Gst.Format.TIME)
    pad.push_event(Gst.Event.new_segment(segment))
    return pad


def appsink(pipeline, name):
    sink = Gst.ElementFactory.make("appsink", name)
    sink.set_property("sync", False)
    sink.set_property("async", False)
    pipeline.add(sink)
    return sink


def drain(sink, tag, out):
    while (sample := sink.emit("try-pull-sample", 0)) is not None:
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        out.append(struct.pack("!BH", tag, info.size) + bytes(info.data))
        buf.unmap(info)


pipeline, out = Gst.Pipeline.new("p"), []
if mode == "enc":
    fec = Gst.ElementFactory.make("rtpst2022-1-fecenc", "fec")
    fec.set_property("columns", columns)
    fec.set_property("rows", rows)
    pipeline.add(fec)
    sinks = [appsink(pipeline, name) for name in ("media", "column", "row")]
    pipeline.set_state(Gst.State.PLAYING)
    for pad, sink in zip(("src", "fec_0", "fec_1"), sinks):
        fec.link_pads(pad, sink, "sink")
    pads = {0: feeder("m", fec.get_static_pad("sink"), MEDIA_CAPS)}
else:
    fec = Gst.ElementFactory.make("rtpst2022-1-fecdec", "fec")
    pipeline.add(fec)
    sinks = [appsink(pipeline, "media")]
    fec.link_pads("src", sinks[0], "sink")
    pipeline.set_state(Gst.State.PLAYING)
    pads = {0: feeder("m", fec.get_static_pad("sink"), MEDIA_CAPS),
            1: feeder("c", fec.request_pad_simple("fec_%u"), FEC_CAPS),
            2: feeder("r", fec.request_pad_simple("fec_%u"), FEC_CAPS)}
for tag, packet in frames():
    ret = pads[tag].push(Gst.Buffer.new_wrapped(packet))
    if ret != Gst.FlowReturn.OK:
        sys.exit(f"push of a packet tagged {tag}: {ret}")
    for t, sink in enumerate(sinks):
        drain(sink, t, out)
pipeline.set_state(Gst.State.NULL)
sys.stdout.buffer.write(b"".join(out))
'''


def gst_filter(mode: str, columns: int, rows: int, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    if not os.access(GST_PYTHON, os.X_OK):
        pytest.skip(f"{GST_PYTHON} (Debian's, with gi) not found: run scripts/setup.sh")
    data = b"".join(struct.pack("!BH", tag, len(p)) + p for tag, p in frames)
    proc = subprocess.run([GST_PYTHON, "-c", GST_FILTER, mode, str(columns), str(rows)], input=data,
                          capture_output=True, timeout=30, check=False)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0 and "SKIP:" in err:
        pytest.skip(err.split("SKIP:", 1)[1].strip())
    if proc.returncode != 0 and ("No module named 'gi'" in err or "Namespace Gst not available" in err):
        pytest.skip(f"GStreamer's Python bindings unavailable: {err.splitlines()[-1]} (run scripts/setup.sh)")
    assert proc.returncode == 0, err[-2000:]
    out, at = [], 0
    while at < len(proc.stdout):
        tag, n = struct.unpack_from("!BH", proc.stdout, at)
        out.append((tag, proc.stdout[at + 3:at + 3 + n]))
        at += 3 + n
    return out


def seq_of(pkt: bytes) -> int:
    return int(struct.unpack("!H", pkt[2:4])[0])


def media_stream(count: int, start: int, seed: int) -> list[bytes]:
    """SSRC 0 (GStreamer's encoder takes nothing else), MPEG-TS sized payloads and shorter ones,
    some markers: the length, marker and timestamp recovery all do something."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        size = 1316 if rng.random() < 0.7 else rng.randrange(20, 1316)
        marker = 0x80 if rng.random() < 0.1 else 0
        out.append(struct.pack("!BBHII", 0x80, marker | 33, (start + i) & 0xFFFF, (i * 3003) & 0xFFFFFFFF, 0)
                   + rng.randbytes(size))
    return out


COLUMNS, ROWS = 5, 4                                  # 20-packet matrices, 45% overhead


def drops_for(first: int, matrices: int) -> tuple[set[int], set[int]]:
    """What the test drops per matrix, by sequence number: what XOR can get back, and what it cannot."""
    recoverable, lost = set(), set()
    for m in range(matrices):
        base = first + m * COLUMNS * ROWS
        if m % 3 == 0:                            # a whole row: the columns rebuild it
            recoverable |= {base + 5 + k for k in range(COLUMNS)}
        elif m % 3 == 1:                          # two in a row, one of them alone in its column...
            recoverable |= {base + 0, base + 1, base + 6}   # ...and one that needs the row first
        else:                                     # a 2x2 square: no row or column with a single loss
            lost |= {base + 1, base + 2, base + 6, base + 7}
            recoverable.add(base + 13)
    return {s & 0xFFFF for s in recoverable}, {s & 0xFFFF for s in lost}


def test_ours_encodes_gstreamer_decodes() -> None:
    packets = media_stream(120, 65500, seed=1)       # six matrices, across the sequence number wrap
    recoverable, lost = drops_for(65500, 6)
    enc = repair.fec_encoder(COLUMNS, ROWS)
    frames: list[tuple[int, bytes]] = []
    for p in packets:
        fecs = enc.push(p)
        if seq_of(p) not in recoverable | lost:
            frames.append((MEDIA, p))
        frames += [(ROW if kind == 1 else COLUMN, f) for kind, f in fecs]
    out = gst_filter("dec", COLUMNS, ROWS, frames)
    by_seq = {seq_of(p): p for p in packets}
    got = [p for tag, p in out if tag == MEDIA]
    recovered = [p for p in got if seq_of(p) in recoverable | lost]
    assert sorted(seq_of(p) for p in recovered) == sorted(recoverable)
    assert all(p == by_seq[seq_of(p)] for p in recovered)          # byte for byte, header included
    assert len(got) == len(packets) - len(lost)
    # Our own decoder, fed the same, recovers exactly the same packets.
    dec = repair.fec_decoder(COLUMNS, ROWS)
    mine = []
    for tag, p in frames:
        dec.media(p) if tag == MEDIA else dec.fec(p)
        mine += dec.recovered()
    assert sorted(mine) == sorted(recovered)


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_gstreamer_encodes_ours_decodes(native: bool) -> None:
    packets = media_stream(140, 65470, seed=2)       # six matrices and one more, which flushes the
    recoverable, lost = drops_for(65470, 6)          # sixth matrix's delayed column packets
    out = gst_filter("enc", COLUMNS, ROWS, [(MEDIA, p) for p in packets])
    assert [p for tag, p in out if tag == MEDIA] == packets
    try:
        dec = repair.fec_decoder(COLUMNS, ROWS, native=native)
    except NativeUnavailable as exc:
        pytest.skip(f"C codecs not built: {exc}")
    recovered = []
    for tag, p in out:
        if tag == MEDIA:
            if seq_of(p) in recoverable | lost:
                continue
            assert dec.media(p) == 0
        else:
            assert dec.fec(p) == 0, f"FEC packet refused: {p[:28].hex()}"
        recovered += dec.recovered()
    by_seq = {seq_of(p): p for p in packets}
    assert sorted(seq_of(p) for p in recovered) == sorted(recoverable)
    assert all(p == by_seq[seq_of(p)] for p in recovered)
    # Row FEC packets are ours byte for byte; column ones too but for the RTP timestamp (GStreamer
    # stamps a column packet when it sends it, delayed by up to a matrix; msm sends it at once).
    enc = py_fec.FecEncoder(COLUMNS, ROWS)
    ours = [(kind, f) for p in packets for kind, f in enc.push(p)]
    assert [f for tag, f in out if tag == ROW] == [f for kind, f in ours if kind == 1]
    theirs_col = [f for tag, f in out if tag == COLUMN]
    ours_col = [f for kind, f in ours if kind == 0][: len(theirs_col)]
    assert len(theirs_col) >= 6 * COLUMNS
    assert [f[:4] + f[8:] for f in theirs_col] == [f[:4] + f[8:] for f in ours_col]
