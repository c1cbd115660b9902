"""SMPTE 2022-1 FEC against GStreamer's rtpst2022-1-fecenc / rtpst2022-1-fecdec, both ways; RFC 4588
RTX against rtprtxsend / rtprtxreceive and RFC 4585 NACK against rtpsession (AVPF), both ways.

GStreamer runs in Debian's Python (``gi``) as a one-shot filter: packets go in on stdin and
come out on stdout, pushed through the element from the caller's thread (no appsrc queues, no
sockets), so what is dropped and in which order things arrive is the test's, deterministically.
The media SSRC is 0: GStreamer's encoder refuses anything else. Recovered packets are compared
with the ones that were dropped, byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess

import pytest

from msm.ext import NativeUnavailable
from msm.rtp_proxy import repair
from msm.rtp_proxy.repair import fec as py_fec
from msm.rtp_proxy.repair.rtx import build_nack, build_rtx, nacks_in, parse_rtx

GST_PYTHON = "/usr/bin/python3"
# Tags of the framing on stdin/stdout: media, column FEC (fec_0, port + 2), row FEC (fec_1, port + 4).
MEDIA, COLUMN, ROW = 0, 1, 2

# Both GStreamer scripts start with this: Gst initialised, and a pad that pushes buffers into an element.
GST_PRELUDE = r'''
import json, struct, sys, time
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst

Gst.init(None)


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


'''

GST_FILTER = GST_PRELUDE + r'''
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


def run_gst(script: str, args: list[str], data: bytes) -> bytes:
    """Run ``script`` in Debian's Python with GStreamer; its stdout. Skips (saying why) without them."""
    if not os.access(GST_PYTHON, os.X_OK):
        pytest.skip(f"{GST_PYTHON} (Debian's, with gi) not found: run scripts/setup.sh")
    proc = subprocess.run([GST_PYTHON, "-c", script, *args], input=data, capture_output=True, timeout=30,
                          check=False)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0 and "SKIP:" in err:
        pytest.skip(err.split("SKIP:", 1)[1].strip())
    if proc.returncode != 0 and ("No module named 'gi'" in err or "Namespace Gst not available" in err):
        pytest.skip(f"GStreamer's Python bindings unavailable: {err.splitlines()[-1]} (run scripts/setup.sh)")
    assert proc.returncode == 0, err[-2000:]
    return proc.stdout


def gst_filter(mode: str, columns: int, rows: int, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    data = b"".join(struct.pack("!BH", tag, len(p)) + p for tag, p in frames)
    stdout = run_gst(GST_FILTER, [mode, str(columns), str(rows)], data)
    out, at = [], 0
    while at < len(stdout):
        tag, n = struct.unpack_from("!BH", stdout, at)
        out.append((tag, stdout[at + 3:at + 3 + n]))
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


# One run of GStreamer for the four RTX/NACK exchanges (a process start costs ~0.3 s): rtprtxsend
# answering retransmission requests, rtprtxreceive taking msm's RTX, rtpsession taking msm's NACK
# (it asks its sender for the packets: upstream GstRTPRetransmissionRequest events), and rtpsession
# sending NACKs for what its jitter buffer would ask for.
GST_RTX = GST_PRELUDE + r"""
for name in ("rtprtxsend", "rtprtxreceive", "rtpsession"):
    if Gst.ElementFactory.find(name) is None:
        sys.exit(f"SKIP: GStreamer has no {name}")
job = json.load(sys.stdin)
S, R = job["ssrc"], job["rtx_ssrc"]
media = [bytes.fromhex(h) for h in job["media"]]
CAPS = "application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96"
PT_MAP = "application/x-rtp-pt-map, 96=(uint)97"


def appsink(pipeline, source_pad):
    sink = Gst.ElementFactory.make("appsink")
    sink.set_property("sync", False)
    sink.set_property("async", False)
    pipeline.add(sink)
    sink.sync_state_with_parent()
    if source_pad.link(sink.get_static_pad("sink")) != Gst.PadLinkReturn.OK:
        sys.exit("cannot link an appsink")
    return sink


def pull(sink, want, timeout):
    out, end = [], time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        sample = sink.emit("try-pull-sample", 20 * Gst.MSECOND)
        if sample is not None:
            buf = sample.get_buffer()
            ok, info = buf.map(Gst.MapFlags.READ)
            out.append(bytes(info.data).hex())
            buf.unmap(info)
    return out


def request(seq):
    return Gst.Event.new_custom(Gst.EventType.CUSTOM_UPSTREAM, Gst.Structure.new_from_string(
        f"GstRTPRetransmissionRequest, seqnum=(uint){seq}, ssrc=(uint){S}, deadline=(uint)2000, avg-rtt=(uint)10"))


def element(pipeline, name, **props):
    el = Gst.ElementFactory.make(name)
    for key, value in props.items():
        el.set_property(key.replace("_", "-"), value)
    pipeline.add(el)
    return el


result = {}
p = Gst.Pipeline.new("rtxsend")
el = element(p, "rtprtxsend", payload_type_map=Gst.Structure.new_from_string(PT_MAP),
             ssrc_map=Gst.Structure.new_from_string(f"application/x-rtp-ssrc-map, {S}=(uint){R}"))
p.set_state(Gst.State.PLAYING)
sink = appsink(p, el.get_static_pad("src"))
src = feeder("m", el.get_static_pad("sink"), CAPS)
for pkt in media:
    src.push(Gst.Buffer.new_wrapped(pkt))
pull(sink, len(media), 2)
for seq in job["rtx_requests"]:
    sink.get_static_pad("sink").push_event(request(seq))
result["rtxsend"] = pull(sink, len(job["rtx_requests"]), 2)
p.set_state(Gst.State.NULL)

p = Gst.Pipeline.new("rtxreceive")
el = element(p, "rtprtxreceive", payload_type_map=Gst.Structure.new_from_string(PT_MAP))
p.set_state(Gst.State.PLAYING)
src = feeder("m", el.get_static_pad("sink"), CAPS)
sink = appsink(p, el.get_static_pad("src"))
for pkt in media:
    if pkt[2:4] != bytes.fromhex(job["our_rtx"])[12:14]:
        src.push(Gst.Buffer.new_wrapped(pkt))
pull(sink, len(media) - 1, 2)
sink.get_static_pad("sink").push_event(request(job["rtx_requests"][0]))
src.push(Gst.Buffer.new_wrapped(bytes.fromhex(job["our_rtx"])))
result["rtxreceive"] = pull(sink, 1, 2)
p.set_state(Gst.State.NULL)

p = Gst.Pipeline.new("nack-in")
el = element(p, "rtpsession", rtp_profile=3)                       # AVPF
p.set_state(Gst.State.PLAYING)
src = feeder("m", el.request_pad_simple("send_rtp_sink"), CAPS)
appsink(p, el.get_static_pad("send_rtp_src"))
asked = []
def probe(pad, info):
    st = info.get_event().get_structure()
    if st is not None and st.get_name() == "GstRTPRetransmissionRequest":
        asked.append([st.get_value("seqnum"), st.get_value("ssrc")])
    return Gst.PadProbeReturn.OK
src.add_probe(Gst.PadProbeType.EVENT_UPSTREAM, probe)
for pkt in media:
    src.push(Gst.Buffer.new_wrapped(pkt))
rtcp = feeder("r", el.request_pad_simple("recv_rtcp_sink"), "application/x-rtcp")
rtcp.push(Gst.Buffer.new_wrapped(bytes.fromhex(job["our_rtcp"])))
result["asked"] = asked
p.set_state(Gst.State.NULL)

p = Gst.Pipeline.new("nack-out")
el = element(p, "rtpsession", rtp_profile=3, rtcp_min_interval=50 * Gst.MSECOND)
p.set_state(Gst.State.PLAYING)
src = feeder("m", el.request_pad_simple("recv_rtp_sink"), CAPS)
rtcp = appsink(p, el.request_pad_simple("send_rtcp_src"))
out = appsink(p, el.get_static_pad("recv_rtp_src"))
for pkt in media:
    if struct.unpack("!H", pkt[2:4])[0] not in job["nack_requests"]:
        src.push(Gst.Buffer.new_wrapped(pkt))
for seq in job["nack_requests"]:
    out.get_static_pad("sink").push_event(request(seq))
sent, end, want = [], time.monotonic() + 3, set(job["nack_requests"])
while want and time.monotonic() < end:                # until NACKs named every request (rough FCI walk)
    for h in pull(rtcp, 1, 0.1):
        sent.append(h)
        data, at = bytes.fromhex(h), 0
        while at + 4 <= len(data):
            size = 4 * (struct.unpack_from("!H", data, at + 2)[0] + 1)
            if data[at + 1] == 205:
                for k in range(at + 12, at + size, 4):
                    pid, blp = struct.unpack_from("!HH", data, k)
                    want -= {pid} | {(pid + 1 + b) & 0xFFFF for b in range(16) if blp >> b & 1}
            at += size
result["rtcp"] = sent
p.set_state(Gst.State.NULL)
json.dump(result, sys.stdout)
"""

SSRC, RTX_SSRC = 0x11223344, 0x55667788


def rtx_media() -> list[bytes]:
    rng = random.Random(3)
    return [struct.pack("!BBHII", 0x80, (0x80 if seq % 4 == 3 else 0) | 96, seq & 0xFFFF, seq * 3000, SSRC)
            + rng.randbytes(rng.randrange(10, 1200)) for seq in range(65530, 65530 + 12)]


@pytest.fixture(scope="module")
def gst_rtx() -> dict[str, list[str] | list[list[int]]]:
    packets = rtx_media()
    rr = struct.pack("!BBHI", 0x80, 201, 1, RTX_SSRC)
    job = {"ssrc": SSRC, "rtx_ssrc": RTX_SSRC, "media": [p.hex() for p in packets], "rtx_requests": [65533, 0],
           "our_rtx": build_rtx(packets[3], rtx_ssrc=RTX_SSRC, rtx_payload_type=97, rtx_seq=4000).hex(),
           "our_rtcp": (rr + build_nack(RTX_SSRC, SSRC, [65531, 65533, 65535, 1])).hex(),
           "nack_requests": [65532, 65534, 0, 3]}
    result: dict[str, list[str] | list[list[int]]] = json.loads(run_gst(GST_RTX, [], json.dumps(job).encode()))
    return result


def test_gstreamer_rtx_parsed_by_ours(gst_rtx: dict[str, list[str] | list[list[int]]]) -> None:
    by_seq = {seq_of(p): p for p in rtx_media()}
    rtx = [bytes.fromhex(str(h)) for h in gst_rtx["rtxsend"]]
    assert [(p[1] & 0x7F, p[8:12]) for p in rtx] == [(97, struct.pack("!I", RTX_SSRC))] * 2
    originals = [parse_rtx(p, media_ssrc=SSRC, media_payload_type=96) for p in rtx]
    assert originals == [by_seq[65533], by_seq[0]]
    # And ours is GStreamer's, but for the RTX stream's own sequence numbers.
    assert [build_rtx(by_seq[s], rtx_ssrc=RTX_SSRC, rtx_payload_type=97, rtx_seq=seq_of(p))
            for s, p in zip((65533, 0), rtx, strict=True)] == rtx


def test_our_rtx_restored_by_gstreamer(gst_rtx: dict[str, list[str] | list[list[int]]]) -> None:
    assert [bytes.fromhex(str(h)) for h in gst_rtx["rtxreceive"]] == [rtx_media()[3]]


def test_our_nack_makes_gstreamer_ask_its_sender(gst_rtx: dict[str, list[str] | list[list[int]]]) -> None:
    assert gst_rtx["asked"] == [[65531, SSRC], [65533, SSRC], [65535, SSRC], [1, SSRC]]


def test_gstreamer_nack_parsed_by_ours(gst_rtx: dict[str, list[str] | list[list[int]]]) -> None:
    nacks = [n for h in gst_rtx["rtcp"] for n in nacks_in(bytes.fromhex(str(h)))]
    assert nacks and all(n.media_ssrc == SSRC for n in nacks)
    assert sorted({s for n in nacks for s in n.seqs}) == [0, 3, 65532, 65534]
