"""ST 2110-21 timing end to end on loopback: our C pacer, GStreamer's rtpvrawpay, live and from a capture.

The raster is 720p30 at 800 packets of 1,200 bytes a frame (24k packets/s), smaller than
1080p30's 112k so the test fits beside other work on a 2-core machine; the model's
bounds follow from the standard for whatever NPACKETS is (narrow CMAX 4, VRX_FULL 8).
Our sender runs SCHED_FIFO where permitted, as a dedicated ST 2110 sender would: a
narrow sender may run at most 6 TRS (240 us here) late, and a time-shared CPU stalls
ordinary threads for milliseconds. Frames that still run late are counted, not hidden:
the stream's verdict is its worst frame; the test asks most frames to be narrow or wide.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from msm.rtp_proxy.media.st2110_analyse import capture_live, open_socket, tai_offset_ns
from msm.rtp_proxy.media.st2110_timing import CLASSES, Analyser, Report

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HEIGHT, PACKETS, SIZE, FRAMES = 720, 800, 1200, 45
GSO_FRAMES = 20   # the GSO test: 1080p30 10-bit, 0.7 s
#: Share of frames that must be narrow or wide: GStreamer's and any burst sender's are 0;
#: ours measured 0.68 to 0.9 with the machine's two cores fully loaded by other work.
MIN_COMPLIANT = 0.5


def _pacer_or_skip() -> None:
    from msm.ext import pacer
    try:
        pacer.load()
    except pacer.NativeUnavailable as exc:
        pytest.skip(f"the C pacer is not built: {exc}")


def _dumpcap(port: int, path: str, snaplen: int = 128) -> subprocess.Popen[str]:
    """Capture on lo; headers are enough (``snaplen``) unless GSO trains are to be cut into packets."""
    proc = subprocess.Popen(["dumpcap", "-q", "-i", "lo", "-s", str(snaplen), "-B", "64", "-f",
                             f"udp dst port {port}", "-w", path], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:   # dumpcap says "Capturing on 'Loopback: lo'" once it is
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if "Capturing on" in line:
            return proc
        if proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"dumpcap did not start capturing: {proc.stderr.read() if proc.stderr else ''}")


def _majority(rep: Report) -> str:
    return max(CLASSES, key=lambda k: rep.counts[k])


@pytest.fixture(scope="module")
def paced() -> Iterator[dict[str, Any]]:
    """Our pacer's stream, analysed live while dumpcap captures it."""
    _pacer_or_skip()
    if shutil.which("dumpcap") is None:
        pytest.skip("dumpcap not installed (apt install tshark)")
    sock = open_socket(0, None, None)
    port = sock.getsockname()[1]
    offset = tai_offset_ns()
    analyser = Analyser(rate=Fraction(30), height=HEIGHT)
    with tempfile.TemporaryDirectory(prefix="msm-st2110-") as tmp:
        pcap = os.path.join(tmp, "paced.pcapng")
        cap = _dumpcap(port, pcap)
        done = threading.Event()
        live = threading.Thread(target=capture_live, args=(analyser, sock, FRAMES / 30 + 20),
                                kwargs={"offset_ns": offset, "stop": done})
        live.start()
        try:
            sender = subprocess.run(
                [sys.executable, "-m", "tests.st2110_sender", "--port", str(port), "--packets", str(PACKETS),
                 "--size", str(SIZE), "--frames", str(FRAMES), "--height", str(HEIGHT), "--realtime"],
                cwd=REPO, capture_output=True, text=True, timeout=60)
        finally:
            time.sleep(0.3)
            done.set()
            live.join()
            cap.send_signal(signal.SIGINT)
            cap.wait(timeout=10)
        assert sender.returncode == 0, sender.stderr
        yield {"live": analyser.report, "sender": json.loads(sender.stdout.splitlines()[-1]), "pcap": pcap,
               "port": port, "offset": offset, "stderr": sender.stderr}


def test_our_pacer_is_narrow_or_wide_live(paced: dict[str, Any]) -> None:
    rep: Report = paced["live"]
    sent = paced["sender"]
    print(f"\nsender: {sent}\nlive: {rep.counts}, Cinst max {rep.cinst_max}, VRX {rep.vrx_min}..{rep.vrx_max}, "
          f"verdict {rep.verdict} ({rep.reason}) {paced['stderr']}")
    assert sent["packets"] == PACKETS * FRAMES and sent["send_errors"] == 0
    assert rep.frames >= FRAMES * 0.6, f"only {rep.frames} frames complete: {rep.frames_skipped} skipped"
    compliant = rep.counts["narrow"] + rep.counts["wide"]
    assert compliant >= MIN_COMPLIANT * rep.frames, f"{rep.counts}: {rep.reason}"
    # Every frame the pacer sent on time (the receiver's buffer never ran dry) is narrow:
    # bursts within CMAX, never more than VRX_FULL ahead.
    on_time = [r for r in rep.frame_results if r.vrx_min >= 1]
    assert on_time and all(r.klass == "narrow" for r in on_time), [r.reason for r in on_time if r.klass != "narrow"]
    if rep.counts["narrow"] < compliant:
        print(f"some frames only wide: {[r.reason for r in rep.frame_results if r.klass == 'wide'][:3]}")
    if rep.verdict != "narrow":
        print(f"the stream as a whole is {rep.verdict}: {rep.reason} (its late frames; the sender's lateness "
              f"max {sent['max_late_us_max']:.0f} us, narrow allows {6 * rep.trs_ns / 1000:.0f} us)")


def test_the_capture_gives_the_live_class(paced: dict[str, Any]) -> None:
    """``msm st2110 analyse --pcap`` (rate learnt from the RTP timestamps) agrees with the live analysis."""
    proc = subprocess.run([sys.executable, "-m", "msm.cli", "st2110", "analyse", "--pcap", paced["pcap"],
                           "--port", str(paced["port"]), "--height", str(HEIGHT), "--json", "--frames",
                           "--tai-offset", str(paced["offset"] / 1e9)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    offline = json.loads(proc.stdout)
    live: Report = paced["live"]
    print(f"\nlive {live.counts} {live.verdict}; pcap {offline['counts']} {offline['verdict']}")
    assert offline["rate"] == "30" and offline["packets_per_frame"] == PACKETS
    assert max(CLASSES, key=lambda k: offline["counts"][k]) == _majority(live)
    by_frame = {r.frame: r.klass for r in live.frame_results}
    both = [(by_frame[r["frame"]], r["klass"]) for r in offline["frame_results"] if r["frame"] in by_frame]
    assert len(both) >= 0.8 * live.frames
    agree = sum(a == b for a, b in both)
    assert agree >= 0.9 * len(both), f"{agree} of {len(both)} frames classed alike"


def test_gstreamer_rtpvrawpay_is_non_compliant() -> None:
    """rtpvrawpay sends each frame as one burst: Cinst far over wide's CMAX in every frame."""
    if shutil.which("gst-launch-1.0") is None:
        pytest.skip("gst-launch-1.0 not installed (run scripts/setup.sh)")
    sock = open_socket(0, None, None)
    port = sock.getsockname()[1]
    analyser = Analyser(height=HEIGHT)       # the rate learnt from its timestamps
    live = threading.Thread(target=capture_live, args=(analyser, sock, 3.0))
    live.start()
    gst = subprocess.run(
        ["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=1", "pattern=smpte", "!",
         "video/x-raw,format=UYVP,width=1280,height=720", "!", "imagefreeze", "num-buffers=40", "!",
         "video/x-raw,framerate=30/1", "!", "rtpvrawpay", "pt=96", "mtu=1400", "!", "udpsink", "host=127.0.0.1",
         f"port={port}", "sync=true", "buffer-size=4194304"], capture_output=True, text=True, timeout=30)
    live.join()
    rep = analyser.report
    print(f"\ngstreamer: {rep.counts}, Cinst max {rep.cinst_max}, VRX {rep.vrx_min}..{rep.vrx_max}, "
          f"verdict {rep.verdict} ({rep.reason})")
    assert gst.returncode == 0, gst.stderr[-500:]
    assert rep.frames >= 20 and rep.rate == "30"
    assert rep.counts["non-compliant"] == rep.frames and rep.verdict == "non-compliant"
    assert rep.cinst_max > 10 * rep.limits["cmax_wide"]


def test_wide_gso_trains_from_a_capture() -> None:
    """1080p30 10-bit at 1,400-byte packets (3,700 a frame, 112k/s), wide: UDP GSO trains of 12 sent
    when the pacer's own network compatibility bucket has room for them (bucket mode).

    dumpcap on loopback sees the trains whole; ``msm st2110 analyse --pcap`` cuts them back
    into packets. Frames the pacer sent on time are wide at worst (its bucket stays under
    CMAX 16 as the capture sees it); how many ran late is printed.
    """
    _pacer_or_skip()
    if shutil.which("dumpcap") is None:
        pytest.skip("dumpcap not installed (apt install tshark)")
    sock = open_socket(0, None, None)   # held so the port stays ours; nothing reads it
    port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="msm-st2110-gso-") as tmp:   # about 100 MB, gone afterwards
        _gso_run(sock, port, os.path.join(tmp, "gso.pcapng"))


def _gso_run(sock: Any, port: int, pcap: str) -> None:
    cap = _dumpcap(port, pcap, snaplen=65535)   # whole trains
    try:
        sender = subprocess.run(
            [sys.executable, "-m", "tests.st2110_sender", "--port", str(port), "--packets", "3700", "--size", "1400",
             "--frames", str(GSO_FRAMES), "--height", "1080", "--mode", "wide", "--gso", "--realtime"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        time.sleep(0.3)
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=10)
        sock.close()
    assert sender.returncode == 0, sender.stderr
    sent = json.loads(sender.stdout.splitlines()[-1])
    proc = subprocess.run([sys.executable, "-m", "msm.cli", "st2110", "analyse", "--pcap", pcap, "--port", str(port),
                           "--json", "--frames", "--tai-offset", str(tai_offset_ns() / 1e9)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    rep = json.loads(proc.stdout)
    print(f"\ncapture {os.path.getsize(pcap)} bytes; sender: {sent}\nanalyser: {rep['counts']}, "
          f"Cinst max {rep['cinst_max']}, verdict {rep['verdict']} ({rep['reason']})")
    assert sent["gso_sends"] > 0 and sent["packets"] == 3700 * GSO_FRAMES
    assert rep["packets"] == 3700 * GSO_FRAMES and rep["packets_per_frame"] == 3700   # every train cut back
    # What the bucket pacer guarantees is its bursts: every frame's Cinst within wide CMAX, by
    # construction, whenever its thread runs. Whether a frame is also on time (VRX never under
    # zero) is up to the scheduler: on this VM a quiet run had 0 to 19 of 19 frames on time,
    # the sender thread losing its vCPU for milliseconds even at real-time priority. So the
    # bursts are checked on every frame, the class on the frames that came on time, and how many
    # did is printed, not required.
    assert all(r["cinst_max"] <= rep["limits"]["cmax_wide"] for r in rep["frame_results"]), rep["counts"]
    on_time = [r for r in rep["frame_results"] if r["vrx_min"] >= 1]
    print(f"{len(on_time)} of {rep['frames']} frames on time")
    assert all(r["klass"] in ("narrow", "wide") for r in on_time), [r["reason"] for r in on_time]


def _netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    name = f"msm-st2110-{os.getpid()}"
    for cmd in (["ip", "netns", "add", name], ["ip", "-n", name, "link", "set", "lo", "up"],
                ["ip", "-n", name, "link", "set", "lo", "multicast", "on"],
                ["ip", "-n", name, "route", "add", "239.0.0.0/8", "dev", "lo", "src", "127.0.0.1"]):
        subprocess.run(cmd, check=True, capture_output=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


netns = pytest.fixture(_netns)


def test_multicast_group_and_source(netns: str) -> None:
    """``--group`` joins a multicast group (source-specific with ``--source``), in a namespace of its own."""
    _pacer_or_skip()
    group, port = "239.255.21.10", 5004

    def analyse(source: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "msm.cli", "st2110", "analyse",
                                 "--port", str(port), "--group", group, "--source", source, "--duration", "3.5",
                                 "--rate", "30", "--height", str(HEIGHT), "--json"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    right, wrong = analyse("127.0.0.1"), analyse("127.0.0.2")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:   # both bound (the command takes a while to import on a busy machine)
        udp = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/udp"], capture_output=True, text=True)
        if sum(f":{port:04X} " in line.split()[1] + " " for line in udp.stdout.splitlines()[1:]) >= 2:
            break
        time.sleep(0.1)
    time.sleep(0.2)   # and joined
    sender = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "tests.st2110_sender", "--host",
                             group, "--port", str(port), "--packets", "200", "--frames", "20", "--height",
                             str(HEIGHT), "--realtime"], cwd=REPO, capture_output=True, text=True, timeout=30)
    out_right, err_right = right.communicate(timeout=30)
    out_wrong, _err = wrong.communicate(timeout=30)
    assert sender.returncode == 0, sender.stderr
    got, other = json.loads(out_right), json.loads(out_wrong)
    print(f"\n--source 127.0.0.1: {got['packets']} packets, {got['counts']}; --source 127.0.0.2: {other['packets']}")
    assert got["packets"] == 200 * 20 and got["frames"] >= 15, err_right[-300:]
    assert other["packets"] == 0 and other["verdict"] == "unknown"
