"""ST 2110-21 schedule math (against the standard's formulas), the C pacer against its twin, the analyser's model."""

from __future__ import annotations

import random
import socket
import struct
from fractions import Fraction

import pytest

from msm.rtp_proxy.media.pacing import frame_period, limits, schedule
from msm.rtp_proxy.media.pcap import PcapError, gso_segments, udp_datagrams
from msm.rtp_proxy.media.st2110_timing import Analyser
from msm.sdk.errors import ConfigError

P30 = Fraction(10**9, 30)
P2997 = Fraction(1001 * 10**9, 30000)
P5994 = Fraction(1001 * 10**9, 60000)


def _approx(value: Fraction, expected: float, tol: float = 0.01) -> bool:
    return abs(float(value) - expected) < tol


def test_1080p30_gapped_numbers() -> None:
    s = schedule(P30, 4320, "narrow", 1080)
    # TRS = TFRAME * (1080/1125) / NPACKETS; TRODEFAULT = 43 lines of TFRAME/1125.
    assert _approx(s.trs_ns, 33_333_333.333 * 0.96 / 4320)
    assert _approx(s.tr_offset_ns, 33_333_333.333 * 43 / 1125)
    assert round(float(s.tr_offset_ns)) == 1_274_074
    lim = s.limits
    # CMAX narrow = MAX(4, INT(4320 / (43200 * 0.96 / 30))) = MAX(4, 3); VRX_FULL narrow = MAX(8, INT(4320 / 900)).
    assert (lim.cmax_narrow, lim.vrx_full_narrow, lim.cmax_wide, lim.vrx_full_wide) == (4, 8, 16, 720)


def test_1080p5994_numbers() -> None:
    s = schedule(P5994, 4320, "narrow", 1080)
    tframe = 1001 / 60000
    assert _approx(s.trs_ns, tframe * 1e9 * 0.96 / 4320)
    assert round(float(s.tr_offset_ns)) == round(tframe * 1e9 * 43 / 1125)
    lim = s.limits
    assert lim.cmax_narrow == int(4320 / (43200 * 0.96 * tframe)) == 6
    assert lim.vrx_full_narrow == int(4320 / (27000 * tframe)) == 9
    assert lim.cmax_wide == 16                       # INT(4320 / (21600 * TFRAME)) = 11 < 16
    assert lim.vrx_full_wide == int(4320 / (300 * tframe)) == 863


def test_720p_and_linear() -> None:
    s = schedule(P5994, 2160, "narrow", 720)
    assert round(float(s.tr_offset_ns)) == round(1001 / 60000 * 1e9 * 28 / 750)   # TRODEFAULT 28 of 750 lines
    assert _approx(s.trs_ns, 1001 / 60000 * 1e9 * 720 / 750 / 2160)
    lin = schedule(P30, 4320, "linear", 1080)
    assert lin.trs_ns == P30 / 4320                   # linear: RACTIVE = 1
    assert limits(P30, 4320, linear=True).cmax_narrow == max(4, int(4320 / (43200 / 30)))


def test_gapped_leaves_the_vertical_blanking_empty() -> None:
    for period, height in ((P30, 1080), (P2997, 1080), (P5994, 720)):
        s = schedule(period, 3700, "narrow", height)
        total, active, _tro = s.lines
        n = 1000
        last = s.packet_time_ns(n, 3699)
        # The last packet leaves before the active period of the read schedule ends ...
        assert last < n * period + s.tr_offset_ns + period * Fraction(active, total)
        # ... and the next frame's first packet after the previous frame's last.
        assert s.packet_time_ns(n + 1, 0) - last > float(period) * (1 - active / total) * 0.9


def test_rtp_timestamp_follows_the_epoch() -> None:
    assert schedule(P30, 10).rtp_timestamp(7) == 21000
    assert schedule(P2997, 10).rtp_timestamp(1000) == 3003 * 1000 % 2**32
    big = 53_880_000_000
    assert schedule(P30, 10).rtp_timestamp(big) == big * 3000 % 2**32
    s = schedule(P30, 10)
    assert s.frame_of(s.frame_start_ns(big)) == big and s.frame_of(s.frame_start_ns(big) - 1) == big - 1


def test_frame_rates_and_bad_input() -> None:
    assert frame_period("59.94") == P5994 and frame_period("30") == P30 and frame_period("60000/1001") == P5994
    for bad in ("fast", "0", "-1"):
        with pytest.raises(ConfigError):
            frame_period(bad)
    with pytest.raises(ConfigError, match="mode"):
        schedule(P30, 10, "bursty")
    with pytest.raises(ConfigError):
        schedule(P30, 0)


# -- the C pacer against its twin ------------------------------------------------------------------
def _pacer(period: Fraction, packets: int, mode: str, height: int):   # type: ignore[no-untyped-def]
    pacer_mod = pytest.importorskip("msm.ext.pacer")
    try:
        pacer_mod.load()
    except pacer_mod.NativeUnavailable as exc:
        pytest.skip(f"the C pacer is not built: {exc}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return sock, pacer_mod.Pacer(sock.fileno(), ("127.0.0.1", 9), period, packets, mode, height=height)


@pytest.mark.parametrize("period,packets,mode,height", [
    (P30, 3700, "narrow", 1080), (P5994, 4320, "narrow", 1080), (P2997, 1316, "wide", 720),
    (P5994, 2160, "linear", 720), (Fraction(10**9, 25), 7, "narrow", 2160)])
def test_c_schedule_equals_twin(period: Fraction, packets: int, mode: str, height: int) -> None:
    sock, pacer = _pacer(period, packets, mode, height)
    twin = schedule(period, packets, mode, height)
    rng = random.Random(2110)
    now_frame = twin.frame_of(1_800_000_000 * 10**9)
    with sock:
        for _ in range(300):
            frame, index = now_frame + rng.randrange(-10**6, 10**6), rng.randrange(packets)
            assert pacer.packet_time(frame, index) == twin.packet_time_ns(frame, index)
            assert pacer.rtp_timestamp(frame) == twin.rtp_timestamp(frame)
            t = twin.frame_start_ns(frame) + rng.randrange(int(period))
            assert pacer.frame_of(t) == twin.frame_of(t) == frame


def test_c_pacer_refuses_bad_frames() -> None:
    sock, pacer = _pacer(P30, 4, "narrow", 1080)
    from msm.ext.pacer import Pacer
    for kwargs, message in (({"dest": ("camera.local", 5004)}, "IP address"), ({"mode": "bursty"}, "narrow, wide"),
                            ({"clock": "monotonic"}, "tai or realtime"), ({"packets": 0}, "packets per frame")):
        args = {"dest": ("127.0.0.1", 9), "mode": "narrow", "clock": "tai", "packets": 4} | kwargs
        with pytest.raises(ValueError, match=message):
            Pacer(sock.fileno(), args["dest"], P30, args["packets"], args["mode"], clock=args["clock"])
    with sock, pytest.raises(ValueError, match="lengths"):
        pacer.send_frame(bytes(100), [50, 50, 50])
    with sock, pytest.raises(ValueError, match="RTP header"):
        pacer.send_frame(bytes(100), [8, 8])


def test_c_pacer_sends_on_the_schedule() -> None:
    """Ten packets of a 100 Hz frame to a local socket: none leaves before its time, all carry the epoch's timestamp."""
    pacer_mod = pytest.importorskip("msm.ext.pacer")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, 35, 1)        # SO_TIMESTAMPNS
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    period = Fraction(10**9, 100)
    try:
        pacer = pacer_mod.Pacer(tx.fileno(), rx.getsockname(), period, 10, "narrow", height=1080,
                                clock="realtime")
    except pacer_mod.NativeUnavailable as exc:
        pytest.skip(f"the C pacer is not built: {exc}")
    packets = [struct.pack("!BBHII", 0x80, 96, k, 0, 7) + bytes([k]) * 100 for k in range(10)]
    with rx, tx:
        stats = pacer.send_frame(packets)               # the bridge's form: a list of packets
        twin = schedule(period, 10)
        assert stats.packets_sent == 10 and stats.send_errors == 0 and stats.skipped_frames == 0
        assert stats.rtp_timestamp == twin.rtp_timestamp(stats.frame)
        for k in range(10):
            data, anc, _f, _a = rx.recvmsg(2048, 64)
            sec, nsec = struct.unpack("=qq", anc[0][2][:16])
            assert data[2:4] == struct.pack("!H", k) and data[12:] == bytes([k]) * 100
            assert int.from_bytes(data[4:8], "big") == stats.rtp_timestamp
            # Never early (1 us of grouping tolerance); lateness is the machine's, reported not asserted.
            assert sec * 10**9 + nsec >= twin.packet_time_ns(stats.frame, k) - 1_000
    assert stats.max_late_ns >= 0 and stats.cpu_ns > 0


# -- the analyser's model on synthetic arrivals -----------------------------------------------------
def _feed(an: Analyser, times: list[list[float | None]], period: Fraction) -> None:
    seq = 0
    for n, frame in enumerate(times):
        ts = schedule(period, 10).rtp_timestamp(n + 1000)
        for k, t in enumerate(frame):
            if t is not None:    # None: lost
                an.feed(int(t), seq & 0xFFFF, ts, k == len(frame) - 1, 1200)
            seq += 1


def _frames(period: Fraction, packets: int, when) -> list[list[float | None]]:   # type: ignore[no-untyped-def]
    s = schedule(period, packets, lead=0)
    return [[when(s, n + 1000, k) for k in range(packets)] for n in range(12)]


def test_analyser_classes() -> None:
    packets = 1000
    trs = float(schedule(P30, packets).trs_ns)

    def judge(when) -> tuple[str, Analyser]:   # type: ignore[no-untyped-def]
        an = Analyser(rate=Fraction(30))
        _feed(an, _frames(P30, packets, when), P30)
        return an.report.verdict, an

    # On the read schedule, 3 packets ahead: narrow.
    verdict, an = judge(lambda s, n, k: s.packet_time_ns(n, k) - 3 * trs + 100)
    assert verdict == "narrow" and an.report.frames == 11 and an.report.cinst_max <= 2
    assert an.report.vrx_max == 4 and an.report.rtp_offset == (0, 0)
    # 30 packets ahead (within TROFFSET: 39.8 packets here), in bursts of 8: wide (VRX and Cinst over narrow).
    verdict, an = judge(lambda s, n, k: s.packet_time_ns(n, (k // 8) * 8) - 30 * trs)
    assert verdict == "wide", an.report.reason
    # The whole frame in one burst (what rtpvrawpay does): non-compliant on Cinst.
    verdict, an = judge(lambda s, n, k: s.packet_time_ns(n, 0) + k * 500)
    assert verdict == "non-compliant" and "Cinst" in an.report.reason and an.report.cinst_max > 100
    # Paced but 20 packets late: the receiver runs dry (VRX underflow).
    verdict, an = judge(lambda s, n, k: s.packet_time_ns(n, k) + 20 * trs)
    assert verdict == "non-compliant" and "underflow" in an.report.reason


def test_analyser_learns_the_rate_and_skips_partial_frames() -> None:
    an = Analyser()
    frames = _frames(P5994, 50, lambda s, n, k: s.packet_time_ns(n, k))
    _feed(an, frames, P5994)
    assert an.rate == Fraction(60000, 1001)
    # The first frame is skipped (capture may begin mid-frame); those before the rate was
    # learnt are judged once it is.
    assert an.report.frames_skipped == 1 and an.report.frames == 11 and an.report.verdict == "narrow"
    an2 = Analyser(rate=Fraction(30))
    frames = _frames(P30, 50, lambda s, n, k: s.packet_time_ns(n, k) - 2000)
    frames[3][10] = None                           # a lost packet: that frame is not judged
    _feed(an2, frames, P30)
    assert an2.report.lost == 1 and an2.report.frames == 10


# -- pcap and pcapng ----------------------------------------------------------------------------------
def _udp_frame(payload: bytes, dport: int) -> bytes:
    udp = struct.pack("!HHHH", 5004, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    return b"\x00" * 12 + b"\x08\x00" + ip + udp


def test_pcap_and_pcapng(tmp_path) -> None:   # type: ignore[no-untyped-def]
    pkt = _udp_frame(b"\x80\x60" + bytes(20), 6000)
    classic = tmp_path / "a.pcap"
    classic.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                        + struct.pack("<IIII", 1_700_000_000, 123_456, len(pkt), len(pkt)) + pkt)
    assert list(udp_datagrams(str(classic))) == [(1_700_000_000_123_456_000, "127.0.0.1", pkt[42:], 22)]
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    idb_body = struct.pack("<HHI", 1, 0, 0) + opts
    idb = struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body))
    t = 1_700_000_000_987_654_321
    padded = pkt + bytes(-len(pkt) % 4)
    epb_body = struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(pkt), len(pkt)) + padded
    epb = struct.pack("<II", 6, 12 + len(epb_body)) + epb_body + struct.pack("<I", 12 + len(epb_body))
    ng = tmp_path / "b.pcapng"
    ng.write_bytes(shb + idb + epb)
    assert [(d[0], d[3]) for d in udp_datagrams(str(ng), 6000)] == [(t, 22)]
    assert list(udp_datagrams(str(ng), 6001)) == []
    bad = tmp_path / "c.pcap"
    bad.write_bytes(b"hello world")
    with pytest.raises(PcapError, match="not a pcap"):
        list(udp_datagrams(str(bad)))
    ng.write_bytes((shb + idb + epb)[:-10])
    with pytest.raises(PcapError, match="cut short"):
        list(udp_datagrams(str(ng)))


# -- the command's bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["st2110", "analyse"], "give --port (live) or --pcap FILE"),
    (["st2110", "analyse", "--port", "70000"], "--port must be 1..65535"),
    (["st2110", "analyse", "--port", "5004", "--rate", "fast"], "not a frame rate"),
    (["st2110", "analyse", "--pcap", "/nonexistent/x.pcap"], "cannot read /nonexistent/x.pcap"),
    (["st2110", "analyse", "--port", "5004", "--duration", "-1"], "--duration must be"),
    (["st2110", "analyse", "--port", "x"], "invalid int value"),
    (["st2110", "analyse", "--pcap", "x.pcap", "--source", "camera"], "--source is not an IP address"),
])
def test_analyse_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from msm.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("msm: error: ") and message in last and "Traceback" not in err


def test_analyse_a_capture_from_the_command(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A pcap of a paced stream, written here, through ``msm st2110 analyse --pcap``: narrow, exit 0."""
    from msm.cli import main
    s = schedule(P30, 20, lead=0)
    records = []
    for n in range(10):
        for k in range(20):
            rtp = struct.pack("!BBHII", 0x80, 96 | (0x80 if k == 19 else 0), n * 20 + k, s.rtp_timestamp(n + 9000), 1)
            t = s.packet_time_ns(n + 9000, k) - 2 * int(s.trs_ns)
            pkt = _udp_frame(rtp + bytes(100), 5004)
            records.append(struct.pack("<IIII", t // 10**9, t % 10**9, len(pkt), len(pkt)) + pkt)
    path = tmp_path / "paced.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1) + b"".join(records))
    assert main(["st2110", "analyse", "--pcap", str(path), "--tai-offset", "0"]) == 0
    out = capsys.readouterr().out
    assert "verdict: narrow" in out and "30 Hz, 20 packets/frame" in out


def test_gso_trains_are_cut_back_into_packets() -> None:
    def rtp(seq: int, size: int, ssrc: int = 0x2110) -> bytes:
        return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, 5, ssrc) + bytes([seq & 0xFF]) * (size - 12)
    train = rtp(65534, 1400) + rtp(65535, 1400) + rtp(0, 1400) + rtp(1, 700)
    assert gso_segments(train) == [rtp(65534, 1400), rtp(65535, 1400), rtp(0, 1400), rtp(1, 700)]
    jumbo = rtp(7, 8900)
    assert gso_segments(jumbo) == [jumbo]
    # Another stream's packet inside, or a gap in the sequence: not a train, left whole.
    assert gso_segments(rtp(1, 1400) + rtp(2, 1400, ssrc=9)) == [rtp(1, 1400) + rtp(2, 1400, ssrc=9)]
    assert len(gso_segments(rtp(1, 1400) + rtp(3, 1400))) == 1


def test_linear_stream_needs_the_linear_model() -> None:
    """A type NL sender (TRS = TFRAME / NPACKETS) is narrow on the linear schedule, runs dry on the gapped one."""
    linear = schedule(P30, 1000, "linear", lead=2)
    times: list[list[float | None]] = [[linear.packet_time_ns(n + 1000, k) for k in range(1000)] for n in range(8)]
    judged_linear, judged_gapped = Analyser(rate=Fraction(30), linear=True), Analyser(rate=Fraction(30))
    _feed(judged_linear, times, P30)
    _feed(judged_gapped, times, P30)
    assert judged_linear.report.verdict == "narrow", judged_linear.report.reason
    assert judged_gapped.report.verdict == "non-compliant" and "underflow" in judged_gapped.report.reason


def test_wide_bucket_mode_keeps_cinst_within_cmax() -> None:
    """The wide pacer's GSO trains (bucket mode) as the receiving socket timestamps them: 1080p30's 4,320
    packets a frame (small payloads) with the analyser's Cinst within CMAX, none lost, no busy-wait."""
    pacer_mod = pytest.importorskip("msm.ext.pacer")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (33, socket.SO_RCVBUF):    # SO_RCVBUFFORCE when privileged: 17k datagrams wait unread
        try:
            rx.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
            break
        except OSError:
            continue
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, 35, 1)        # SO_TIMESTAMPNS
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    n, frames = 4320, 4
    try:
        pacer = pacer_mod.Pacer(tx.fileno(), rx.getsockname(), P30, n, "wide", clock="realtime", gso=True)
    except pacer_mod.NativeUnavailable as exc:
        pytest.skip(f"the C pacer is not built: {exc}")
    analyser = Analyser(rate=Fraction(30), height=1080)
    with rx, tx:
        stats = []
        for f in range(frames):
            packets = [struct.pack("!BBHII", 0x80, 96 | (0x80 if k == n - 1 else 0), (f * n + k) & 0xFFFF, 0, 7)
                       + bytes(20) for k in range(n)]
            stats.append(pacer.send_frame(packets))
        rx.settimeout(1.0)
        for _ in range(n * frames):
            data, anc, _f, _a = rx.recvmsg(2048, 64)
            sec, nsec = struct.unpack("=qq", anc[0][2][:16])
            analyser.feed_rtp(sec * 10**9 + nsec, data)
    rep = analyser.report
    print(f"\n{rep.counts}, Cinst max {rep.cinst_max}, VRX {rep.vrx_min}..{rep.vrx_max}; "
          f"{[(s.groups, s.gso_sends, s.sleeps, s.max_late_ns // 1000) for s in stats]}")
    assert all(s.packets_sent == n and s.send_errors == 0 for s in stats)
    assert all(s.groups == -(-n // 12) for s in stats)      # trains of 12
    assert rep.frames == frames - 1 and rep.cinst_max <= limits(P30, n).cmax_wide == 16
    # VRX never above the 360 packets the pacer may run ahead plus a train (VRX_FULL 720)
    assert rep.vrx_max is not None and rep.vrx_max <= 360 + 12
