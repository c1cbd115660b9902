"""RTP/RTCP packets: real captures, round trips, malformed input, properties."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msm.sdk.errors import ProtocolError, RtcpError, RtpError
from msm.sdk.rtp import (
    NTP_UNIX_OFFSET,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    RtpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    is_rtcp,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    rtp_header,
    serialize_rtcp,
    unix_from_ntp,
)
from tests.datafiles import load

# ---------------------------------------------------------------- real captures


def test_ffmpeg_rtp_packet() -> None:
    data = load("rtp/ffmpeg_pcmu_rtp.bin")
    packet = RtpPacket.parse(data)
    assert packet.payload_type == 0
    assert packet.sequence_number == 1253
    assert packet.timestamp == 3928942208
    assert packet.ssrc == 0xEE1A6870
    assert not packet.marker
    assert packet.csrc == () and packet.extension is None and packet.padding == 0
    assert len(packet.payload) == 1024
    assert bytes(packet) == data
    assert rtp_header(data) == (0, 1253, 3928942208, 0xEE1A6870, False)
    assert not is_rtcp(data)


def test_gstreamer_rtp_packet_with_marker() -> None:
    data = load("rtp/gst_pcma_rtp.bin")
    packet = RtpPacket.parse(data)
    assert (packet.payload_type, packet.marker) == (8, True)
    assert bytes(packet) == data
    assert rtp_header(data) == (8, packet.sequence_number, packet.timestamp, packet.ssrc, True)


def test_ffmpeg_sends_sr_without_sdes() -> None:
    data = load("rtp/ffmpeg_sr.bin")
    assert is_rtcp(data)
    (sr,) = parse_rtcp(data)
    assert isinstance(sr, SenderReport)
    assert sr.ssrc == 0xEE1A6870  # the SSRC of the RTP capture from the same run
    assert sr.reports == () and sr.packet_count == 0
    assert SenderReport.parse(data) == sr
    assert bytes(sr) == data


def test_gstreamer_compound_sr_sdes() -> None:
    data = load("rtp/gst_sr_sdes.bin")
    sr, sdes = parse_rtcp(data)
    assert isinstance(sr, SenderReport) and isinstance(sdes, SourceDescription)
    assert (sr.packet_count, sr.octet_count) == (9, 9216)
    (chunk,) = sdes.chunks
    assert chunk.ssrc == sr.ssrc
    assert chunk.item(1) == b"user846258453@host-25631237"
    assert chunk.item(6) == b"GStreamer"  # TOOL
    assert chunk.item(2) is None
    assert serialize_rtcp([sr, sdes]) == data


def test_gstreamer_receiver_report_with_loss() -> None:
    rr, sdes = parse_rtcp(load("rtp/gst_rr_sdes_final.bin"))
    assert isinstance(rr, ReceiverReport) and isinstance(sdes, SourceDescription)
    (block,) = rr.reports
    assert block.ssrc == 0xCAFEBABE
    assert block.fraction_lost == 25  # every 10th packet dropped: 10% of 256
    assert block.packets_lost == 38
    assert block.highest_sequence == 1398
    for name in ("gst_rr_sdes_final.bin", "gst_rr_sdes_loss10.bin"):
        data = load(f"rtp/{name}")
        assert serialize_rtcp(parse_rtcp(data)) == data


# ---------------------------------------------------------------- RTP


def test_rtp_round_trip_all_fields() -> None:
    packet = RtpPacket(
        payload_type=96,
        sequence_number=65535,
        timestamp=0xFFFFFFFF,
        ssrc=0x12345678,
        marker=True,
        csrc=(1, 2, 0xFFFFFFFF),
        extension=(0xBEDE, b"\x10\xaa\x00\x00"),
        payload=b"hello",
        padding=3,
    )
    data = bytes(packet)
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[-3:] == b"\x00\x00\x03"
    assert RtpPacket.parse(data) == packet
    assert rtp_header(data) == (96, 65535, 0xFFFFFFFF, 0x12345678, True)


def test_rtp_empty_payload_and_padding_only() -> None:
    header_only = RtpPacket(payload_type=0, sequence_number=1, timestamp=2, ssrc=3)
    assert len(bytes(header_only)) == 12
    assert RtpPacket.parse(bytes(header_only)) == header_only
    padded = RtpPacket(payload_type=0, sequence_number=1, timestamp=2, ssrc=3, padding=1)
    assert RtpPacket.parse(bytes(padded)) == padded


def test_rtp_padding_contents_are_ignored() -> None:
    data = bytes(RtpPacket(payload_type=0, sequence_number=1, timestamp=2, ssrc=3))
    data = bytes([data[0] | 0x20]) + data[1:] + b"ab" + b"\xff\xff\x03"
    packet = RtpPacket.parse(data)
    assert (packet.payload, packet.padding) == (b"ab", 3)


def _header(first: int = 0x80, second: int = 96) -> bytes:
    return struct.pack("!BBHII", first, second, 1, 2, 3)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(_header()[:11], id="short"),
        pytest.param(_header(first=0x40), id="version1"),
        pytest.param(_header(first=0x00), id="version0"),
        pytest.param(_header(first=0x82) + b"\0\0\0\1", id="csrc-past-end"),
        pytest.param(_header(first=0x90) + b"\0\1", id="extension-header-truncated"),
        pytest.param(_header(first=0x90) + b"\0\1\0\2" + b"\0" * 4, id="extension-past-end"),
        pytest.param(_header(first=0xA0), id="padding-without-room"),
        pytest.param(_header(first=0xA0) + b"xyz\0", id="padding-count-zero"),
        pytest.param(_header(first=0xA0) + b"xy\x04", id="padding-count-too-big"),
    ],
)
def test_rtp_malformed(data: bytes) -> None:
    with pytest.raises(RtpError) as info:
        RtpPacket.parse(data)
    assert info.value.status == 400


def test_rtp_header_fast_path_errors() -> None:
    with pytest.raises(RtpError):
        rtp_header(b"\x80" * 11)
    with pytest.raises(RtpError):
        rtp_header(_header(first=0xC0))
    # It does not look further than the fixed header.
    assert rtp_header(_header(first=0x8F)) == (96, 1, 2, 3, False)


def test_rtp_trailing_data_is_payload() -> None:
    packet = RtpPacket(payload_type=8, sequence_number=7, timestamp=9, ssrc=1, payload=b"ab")
    assert RtpPacket.parse(bytes(packet) + b"cd").payload == b"abcd"


def test_rtp_every_prefix_parses_or_raises() -> None:
    packet = RtpPacket(
        payload_type=96,
        sequence_number=5,
        timestamp=6,
        ssrc=7,
        csrc=(1, 2),
        extension=(1, b"abcdefgh"),
        payload=b"payload",
    )
    data = bytes(packet)
    for end in range(len(data)):
        try:
            got = RtpPacket.parse(data[:end])
        except RtpError:
            assert end < 12 + 8 + 4 + 8  # only a prefix of the header can fail
        else:
            assert got.payload == packet.payload[: end - (len(data) - len(packet.payload))]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload_type": 128},
        {"payload_type": -1},
        {"sequence_number": 65536},
        {"timestamp": 1 << 32},
        {"ssrc": -1},
        {"csrc": tuple(range(16))},
        {"csrc": (1 << 32,)},
        {"extension": (1, b"abc")},
        {"extension": (1 << 16, b"")},
        {"padding": 256},
        {"padding": -1},
        {"marker": 1},
        {"payload": "text"},
        {"sequence_number": True},
    ],
)
def test_rtp_invalid_values_rejected(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "payload_type": 0,
        "sequence_number": 0,
        "timestamp": 0,
        "ssrc": 0,
    }
    fields.update(kwargs)
    with pytest.raises(RtpError):
        RtpPacket(**fields)  # type: ignore[arg-type]


def test_is_rtcp_demux() -> None:
    for second in range(256):
        data = bytes((0x80, second)) + bytes(10)
        assert is_rtcp(data) == (192 <= second <= 223)
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"")
    # RTP payload type 96 with the marker set is 0xE0: not RTCP.
    assert not is_rtcp(bytes(RtpPacket(payload_type=96, sequence_number=0, timestamp=0,
                                       ssrc=0, marker=True)))


# ---------------------------------------------------------------- RTCP


def _blocks(n: int) -> tuple[ReportBlock, ...]:
    return tuple(
        ReportBlock(
            ssrc=i,
            fraction_lost=i * 8,
            packets_lost=-i if i % 2 else i * 1000,
            highest_sequence=65536 + i,
            jitter=i * 3,
            lsr=i << 16,
            dlsr=i << 8,
        )
        for i in range(n)
    )


def test_rr_with_31_blocks() -> None:
    rr = ReceiverReport(ssrc=0xDEADBEEF, reports=_blocks(31))
    data = bytes(rr)
    assert len(data) == 8 + 31 * 24
    assert data[0] == 0x80 | 31 and data[1] == 201
    assert struct.unpack_from("!H", data, 2)[0] == len(data) // 4 - 1
    assert ReceiverReport.parse(data) == rr
    assert parse_rtcp(data) == [rr]
    with pytest.raises(RtcpError):
        ReceiverReport(ssrc=1, reports=_blocks(32))


def test_report_block_signed_loss() -> None:
    for lost in (-(1 << 23), -1, 0, 1, (1 << 23) - 1):
        block = ReportBlock(ssrc=1, packets_lost=lost)
        assert ReportBlock.parse(bytes(block)) == block
    assert bytes(ReportBlock(ssrc=0, packets_lost=-1))[4:8] == b"\x00\xff\xff\xff"
    for bad in ((1 << 23), -(1 << 23) - 1):
        with pytest.raises(RtcpError):
            ReportBlock(ssrc=1, packets_lost=bad)
    with pytest.raises(RtcpError):
        ReportBlock(ssrc=1, fraction_lost=256)
    with pytest.raises(RtcpError):
        ReportBlock.parse(bytes(24) + b"x")


def test_sr_round_trip_with_blocks_and_extension() -> None:
    sr = SenderReport(
        ssrc=1,
        ntp_timestamp=(1 << 64) - 1,
        rtp_timestamp=123,
        packet_count=4,
        octet_count=5,
        reports=_blocks(2),
        extension=b"extn",
    )
    data = bytes(sr)
    assert len(data) == 28 + 48 + 4
    assert SenderReport.parse(data) == sr
    with pytest.raises(RtcpError):
        SenderReport(ssrc=1, extension=b"abc")
    with pytest.raises(RtcpError):
        SenderReport.parse(bytes(ReceiverReport(ssrc=1)))  # wrong type


def test_sdes_round_trip_and_padding() -> None:
    for value in (b"", b"a", b"ab", b"abc", b"abcd", b"x" * 255):
        sdes = SourceDescription(chunks=(SdesChunk(ssrc=9, items=((1, value),)),))
        data = bytes(sdes)
        assert len(data) % 4 == 0
        assert SourceDescription.parse(data) == sdes
    many = SourceDescription(
        chunks=(
            SdesChunk(ssrc=1, items=((1, b"cname"), (2, b"name"), (8, b"\x03privdata"))),
            SdesChunk(ssrc=2, items=()),
            SdesChunk(ssrc=3, items=((1, b"abcdef"),)),
        )
    )
    assert SourceDescription.parse(bytes(many)) == many
    with pytest.raises(RtcpError):
        SdesChunk(ssrc=1, items=((1, b"x" * 256),))
    with pytest.raises(RtcpError):
        SdesChunk(ssrc=1, items=((0, b"end"),))


def test_bye_round_trip() -> None:
    for reason in (b"", b"x", b"bye!", b"shutting down", b"r" * 255):
        bye = Bye(sources=(1, 2), reason=reason)
        data = bytes(bye)
        assert len(data) % 4 == 0
        assert Bye.parse(data) == bye
    assert Bye.parse(bytes(Bye())) == Bye()
    with pytest.raises(RtcpError):
        Bye(sources=tuple(range(32)))


def test_unknown_packets_kept_for_relays() -> None:
    app = UnknownRtcp(packet_type=204, count=3, payload=b"\0\0\0\1NAMEdata")
    pli = UnknownRtcp(packet_type=206, count=1, payload=struct.pack("!II", 1, 2))
    data = serialize_rtcp([ReceiverReport(ssrc=1), app, pli])
    assert parse_rtcp(data) == [ReceiverReport(ssrc=1), app, pli]
    assert UnknownRtcp.parse(bytes(app)) == app
    with pytest.raises(RtcpError):
        UnknownRtcp(packet_type=204, payload=b"abc")
    with pytest.raises(RtcpError):
        UnknownRtcp(packet_type=204, count=32)


def test_rtcp_padding_bit_on_last_packet() -> None:
    rr = ReceiverReport(ssrc=5, reports=_blocks(1))
    body = bytes(rr)
    padded = bytes([body[0] | 0x20, body[1]]) + struct.pack("!H", len(body) // 4) + body[4:]
    padded += b"\0\0\0\x04"
    assert ReceiverReport.parse(padded) == rr
    sdes = bytes(SourceDescription(chunks=(SdesChunk(ssrc=5, items=((1, b"c"),)),)))
    assert parse_rtcp(sdes + padded) == [parse_rtcp(sdes)[0], rr]


def test_rtcp_padding_only_on_last_packet() -> None:
    rr = bytes(ReceiverReport(ssrc=5))
    padded = bytes([rr[0] | 0x20, rr[1], 0, 2]) + rr[4:] + b"\0\0\0\x04"
    with pytest.raises(RtcpError, match="not the last"):
        parse_rtcp(padded + rr)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x80\xc9\x00", id="short-header"),
        pytest.param(b"\x80\xc9\x00\x01\x00\x00\x00\x01" + b"\x80", id="trailing-bytes"),
        pytest.param(b"\x40\xc9\x00\x01\x00\x00\x00\x01", id="version1"),
        pytest.param(b"\x80\xc9\x00\x05\x00\x00\x00\x01", id="length-past-end"),
        pytest.param(b"\x81\xc9\x00\x01\x00\x00\x00\x01", id="rc-more-blocks-than-bytes"),
        pytest.param(b"\x80\xc8\x00\x01\x00\x00\x00\x01", id="sr-truncated"),
        pytest.param(b"\xa0\xc9\x00\x01\x00\x00\x00\x00", id="padding-zero"),
        pytest.param(b"\xa0\xc9\x00\x01\x00\x00\x00\x09", id="padding-too-big"),
        pytest.param(b"\xa0\xcc\x00\x01\x00\x00\x00\x03", id="padding-not-words"),
        pytest.param(b"\x81\xca\x00\x01\x00\x00\x00\x01", id="sdes-no-terminator"),
        pytest.param(b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x09ab", id="sdes-item-past-end"),
        pytest.param(b"\x82\xca\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00", id="sdes-chunks-short"),
        pytest.param(b"\x80\xca\x00\x01\x01\x02\x03\x04", id="sdes-garbage-after-chunks"),
        pytest.param(b"\x82\xcb\x00\x01\x00\x00\x00\x01", id="bye-sources-short"),
        pytest.param(b"\x81\xcb\x00\x02\x00\x00\x00\x01\x09abc", id="bye-reason-past-end"),
    ],
)
def test_rtcp_malformed(data: bytes) -> None:
    with pytest.raises(RtcpError) as info:
        parse_rtcp(data)
    assert info.value.status == 400


def test_rtcp_truncated_compound_every_prefix() -> None:
    data = load("rtp/gst_sr_sdes.bin")
    packets = parse_rtcp(data)
    boundaries = {0}
    offset = 0
    for packet in packets:
        offset += len(bytes(packet))
        boundaries.add(offset)
    for end in range(len(data)):
        if end in boundaries and end:
            assert parse_rtcp(data[:end]) == packets[: sorted(boundaries).index(end)]
        else:
            with pytest.raises(RtcpError):
                parse_rtcp(data[:end])


def test_rtcp_trailing_data() -> None:
    data = load("rtp/gst_rr_sdes_final.bin")
    assert len(parse_rtcp(data + bytes(Bye(sources=(1,))))) == 3
    for tail in (b"\x00", b"\x80\xc9", b"\x80\xc9\x00\x07", b"junkjunk"):
        with pytest.raises(RtcpError):
            parse_rtcp(data + tail)
    rr = bytes(ReceiverReport(ssrc=1))
    with pytest.raises(RtcpError, match="length field"):
        ReceiverReport.parse(rr + rr)


def test_serialize_rejects_oversized_packet() -> None:
    big = UnknownRtcp(packet_type=204, payload=bytes(4 * 65536))
    with pytest.raises(RtcpError):
        bytes(big)


# ---------------------------------------------------------------- NTP


def test_ntp_helpers() -> None:
    assert ntp_from_unix(0.0) == NTP_UNIX_OFFSET << 32
    assert ntp_from_unix(1.5) == (NTP_UNIX_OFFSET + 1) << 32 | 0x80000000
    assert ntp_from_unix(-NTP_UNIX_OFFSET) == 0
    t = 1_700_000_000.25
    ntp = ntp_from_unix(t)
    assert abs(unix_from_ntp(ntp) - t) < 1e-6
    assert ntp_middle32(0x0123456789ABCDEF) == 0x456789AB
    # After 2036-02-07 06:28:16 UTC the seconds wrap into NTP era 1.
    assert ntp_from_unix(2085978496.0) >> 32 == 0
    # LSR echoed by a receiver: the middle of the SR's NTP timestamp.
    sr = parse_rtcp(load("rtp/gst_sr_sdes.bin"))[0]
    assert isinstance(sr, SenderReport)
    assert ntp_middle32(sr.ntp_timestamp) == (sr.ntp_timestamp >> 16) & 0xFFFFFFFF


# ---------------------------------------------------------------- properties

u32 = st.integers(0, 0xFFFFFFFF)
report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-(1 << 23), (1 << 23) - 1),
    highest_sequence=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
words = st.integers(0, 8).map(lambda n: n * 4).flatmap(lambda n: st.binary(min_size=n, max_size=n))
rtp_packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence_number=st.integers(0, 0xFFFF),
    timestamp=u32,
    ssrc=u32,
    marker=st.booleans(),
    csrc=st.lists(u32, max_size=15).map(tuple),
    extension=st.none() | st.tuples(st.integers(0, 0xFFFF), words),
    payload=st.binary(max_size=64),
    padding=st.integers(0, 255),
)
sdes_items = st.tuples(st.integers(1, 255), st.binary(max_size=40))
rtcp_packets: st.SearchStrategy[RtcpPacket] = st.one_of(
    st.builds(
        SenderReport,
        ssrc=u32,
        ntp_timestamp=st.integers(0, (1 << 64) - 1),
        rtp_timestamp=u32,
        packet_count=u32,
        octet_count=u32,
        reports=st.lists(report_blocks, max_size=31).map(tuple),
        extension=words,
    ),
    st.builds(
        ReceiverReport,
        ssrc=u32,
        reports=st.lists(report_blocks, max_size=31).map(tuple),
        extension=words,
    ),
    st.builds(
        SourceDescription,
        chunks=st.lists(
            st.builds(SdesChunk, ssrc=u32, items=st.lists(sdes_items, max_size=4).map(tuple)),
            max_size=5,
        ).map(tuple),
    ),
    st.builds(
        Bye,
        sources=st.lists(u32, max_size=31).map(tuple),
        reason=st.binary(max_size=255),
    ),
    st.builds(
        UnknownRtcp,
        packet_type=st.integers(0, 255).filter(lambda t: not 200 <= t <= 203),
        count=st.integers(0, 31),
        payload=words,
    ),
)


@settings(max_examples=200, deadline=None)
@given(rtp_packets)
def test_property_rtp_round_trip(packet: RtpPacket) -> None:
    data = bytes(packet)
    assert RtpPacket.parse(data) == packet
    header = rtp_header(data)
    assert header == (
        packet.payload_type,
        packet.sequence_number,
        packet.timestamp,
        packet.ssrc,
        packet.marker,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(rtcp_packets, min_size=1, max_size=4))
def test_property_rtcp_round_trip(packets: list[RtcpPacket]) -> None:
    data = serialize_rtcp(packets)
    assert parse_rtcp(data) == packets
    for packet in packets:
        assert type(packet).parse(bytes(packet)) == packet
        assert len(bytes(packet)) % 4 == 0
    assert is_rtcp(data) == (192 <= data[1] <= 223)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=128))
def test_property_any_bytes_rtp(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert rtp_header(data)[1] == packet.sequence_number


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=128))
def test_property_any_bytes_rtcp(data: bytes) -> None:
    try:
        parse_rtcp(data)
    except RtcpError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([0x80, 0x81, 0x82, 0xA1, 0x9F]),
    st.sampled_from([200, 201, 202, 203, 204, 206]),
    st.integers(0, 40),
    st.binary(max_size=160),
)
def test_property_rtcp_plausible_headers(first: int, ptype: int, words_: int, body: bytes) -> None:
    """Valid-looking headers over random bodies reach the per-type parsers."""
    data = bytes((first, ptype)) + struct.pack("!H", words_) + body
    try:
        packets = parse_rtcp(data)
    except RtcpError:
        return
    assert packets


@settings(max_examples=200, deadline=None)
@given(st.lists(rtcp_packets, min_size=1, max_size=3), st.data())
def test_property_rtcp_mutations(packets: list[RtcpPacket], data: st.DataObject) -> None:
    """A valid compound packet with one byte changed parses or raises RtcpError."""
    raw = bytearray(serialize_rtcp(packets))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    try:
        parse_rtcp(bytes(raw))
    except RtcpError:
        pass


def test_errors_are_protocol_errors() -> None:
    assert issubclass(RtpError, ProtocolError) and issubclass(RtcpError, ProtocolError)
