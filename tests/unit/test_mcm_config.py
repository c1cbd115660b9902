"""msm.sdk.mcm_config: MCM-shaped connection JSON parses; each bad field is named in one line."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msm.sdk.errors import ConfigError
from msm.sdk.mcm_config import (
    MAX_JSON_BYTES,
    AudioPayload,
    BlobPayload,
    ClientSettings,
    ConnectionConfig,
    MultipointGroup,
    RdmaOptions,
    St2110Connection,
    VideoPayload,
    parse_connection,
    video_frame_size,
)
from tests.datafiles import load

FIXTURES = ["st2110_video_tx", "st2110_video_rx_with_client", "st2110_audio_ffmpeg", "multipoint_video_ffmpeg",
            "multipoint_video", "multipoint_blob", "multipoint_audio_44k", "st2110_22_video"]


def fixture(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(load(f"mcm/{name}.json"))
    return document


def error(document: object, direction: str = "tx") -> str:
    with pytest.raises(ConfigError) as info:
        parse_connection(document, direction=direction)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


# -- MCM's shapes parse ------------------------------------------------------------------------------
# Every fixture both ways, except the rx source filter as tx (refused: test_multicast_rules).
CASES = [(name, direction) for name in FIXTURES for direction in ("tx", "rx")
         if (name, direction) != ("st2110_video_rx_with_client", "tx")]


@pytest.mark.parametrize(("name", "direction"), CASES)
def test_fixture_parses_and_round_trips(name: str, direction: str) -> None:
    text = load(f"mcm/{name}.json")
    config = parse_connection(text, direction=direction)  # type: ignore[arg-type]
    assert parse_connection(config.to_dict(), direction=direction) == config  # type: ignore[arg-type]
    assert parse_connection(json.dumps(config.to_dict()), direction=direction) == config  # type: ignore[arg-type]
    assert config.payload_size >= config.frame_size > 0


def test_sdk_reference_example() -> None:
    config = parse_connection(load("mcm/st2110_video_tx.json"), direction="tx")
    assert config == ConnectionConfig(
        direction="tx",
        connection=St2110Connection(transport="st2110-20", ip_addr="239.10.20.1", port=20000, pacing="narrow",
                                    payload_type=112, transport_pixel_format="yuv422p10rfc4175"),
        payload=VideoPayload(width=1920, height=1080, fps=60.0, pixel_format="yuv422p10rfc4175"),
        rdma=RdmaOptions(provider="tcp", num_endpoints=2))
    assert config.buffer_queue_capacity == 16 and config.max_payload_size == 0
    assert config.frame_size == config.payload_size == 1920 * 1080 * 5 // 2
    assert config.frame_period_ns == 16_666_667
    assert config.connection.is_multicast  # type: ignore[union-attr]


def test_client_fields_in_seconds() -> None:
    config = parse_connection(load("mcm/st2110_video_rx_with_client.json"), direction="rx")
    assert config.client == ClientSettings(api_version="v1", api_connection_string="Server=127.0.0.1; Port=8003",
                                           default_timeout=0.25, max_media_connections=16)
    assert config.client.proxy == ("127.0.0.1", 8003)
    assert config.to_dict()["apiDefaultTimeoutMicroseconds"] == 250000
    assert config.connection == St2110Connection(
        transport="st2110-20", ip_addr="239.168.40.7", port=9100, multicast_source_ip_addr="192.168.40.20",
        pacing="narrow", payload_type=96, transport_pixel_format="yuv422p10rfc4175")
    assert config.frame_size == 1280 * 720 * 4
    assert config.frame_period_ns == 20_000_000


def test_ffmpeg_plugin_audio() -> None:
    config = parse_connection(load("mcm/st2110_audio_ffmpeg.json"), direction="tx")
    assert config.rdma == RdmaOptions(provider="verbs", num_endpoints=4)   # MCM's parser spelling
    assert config.conn_creation_delay == 0.15
    assert config.to_dict()["connCreationDelayMilliseconds"] == 150
    assert config.connection.multicast_source_ip_addr == ""  # type: ignore[union-attr]
    assert config.payload == AudioPayload(channels=8, sample_rate=96000, format="pcm_s16be", packet_time="125us")
    assert config.frame_size == 8 * 2 * 12
    assert config.frame_period_ns == 125_000


def test_ntsc_rates_are_exact() -> None:
    config = parse_connection(load("mcm/multipoint_video_ffmpeg.json"), direction="rx")
    assert isinstance(config.payload, VideoPayload)
    assert config.payload.frame_rate.numerator == 30000 and config.payload.frame_rate.denominator == 1001
    assert config.frame_period_ns == 33_366_667
    assert config.frame_size == 3840 // 6 * 16 * 2160   # v210: 6 pixels in 16 bytes, 3840 is 80 x 48
    assert config.connection == MultipointGroup(urn="ipv4:239.5.5.5:9600")


def test_blob_and_44k_audio() -> None:
    blob = parse_connection(load("mcm/multipoint_blob.json"), direction="tx")
    assert isinstance(blob.payload, BlobPayload)
    assert blob.frame_size == blob.payload_size == 1048576 and blob.frame_period_ns is None
    assert (blob.buffer_queue_capacity, blob.max_metadata_size) == (64, 4096)
    audio = parse_connection(load("mcm/multipoint_audio_44k.json"), direction="rx")
    assert audio.frame_size == 3 * 2 * 48
    assert audio.frame_period_ns == 1_088_435   # 48 samples at 44.1 kHz, not the nominal 1.09 ms


def test_no_payload_is_a_blob_and_mcm_defaults() -> None:
    config = parse_connection({"maxPayloadSize": 100, "connection": {"multipointGroup": {"urn": "g"}}},
                              direction="tx")
    assert isinstance(config.payload, BlobPayload)
    video = parse_connection({"connection": {"st2110": {"ipAddr": "239.1.1.1", "port": 5004}},
                              "payload": {"video": {}}}, direction="rx")
    assert video.payload == VideoPayload(width=640, height=640, fps=60.0, pixel_format="yuv422p10le")
    assert video.connection == St2110Connection(transport="st2110-20", ip_addr="239.1.1.1", port=5004,
                                                payload_type=112, transport_pixel_format="yuv422p10rfc4175")


def test_slowest_rate_has_a_period() -> None:
    slow = parse_connection({"connection": {"multipointGroup": {"urn": "g"}}, "payload": {"video": {"fps": 0.01}}},
                            direction="tx")
    assert slow.frame_period_ns == 100 * 10**9


def test_frame_sizes_per_pixel_format() -> None:
    assert video_frame_size("yuv422p10le", 1920, 1080) == 8_294_400
    assert video_frame_size("yuv422p10rfc4175", 1920, 1080) == 5_184_000
    assert video_frame_size("v210", 1920, 1080) == 5_529_600
    assert video_frame_size("v210", 1280, 720) == 27 * 128 * 720   # 1280 pads to 1296 pixels a line


# -- each bad field is named --------------------------------------------------------------------------
def _st2110_video() -> dict[str, Any]:
    return fixture("st2110_video_tx")


def _with(path: str, value: object, base: dict[str, Any] | None = None) -> dict[str, Any]:
    document = copy.deepcopy(base if base is not None else _st2110_video())
    *parents, last = path.split(".")
    node = document
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return document


_DELETE = object()

BAD_FIELDS = [
    ("connection.st2110.port", 70000, "connection.st2110.port: must be 1..65535, got 70000"),
    ("connection.st2110.port", 0, "connection.st2110.port: must be 1..65535, got 0"),
    ("connection.st2110.port", "9002", "connection.st2110.port: must be an integer, got '9002'"),
    ("connection.st2110.port", 9002.0, "connection.st2110.port: must be an integer, got 9002.0"),
    ("connection.st2110.port", True, "connection.st2110.port: must be an integer, got true"),
    ("connection.st2110.port", _DELETE, "connection.st2110.port: required"),
    ("connection.st2110.ipAddr", _DELETE, "connection.st2110.ipAddr: required"),
    ("connection.st2110.ipAddr", "239.1.1", "connection.st2110.ipAddr: must be an IPv4 address, got '239.1.1'"),
    ("connection.st2110.ipAddr", "ff02::1", "connection.st2110.ipAddr: must be an IPv4 address"),
    ("connection.st2110.ipAddr", "0.0.0.0", "connection.st2110.ipAddr: 0.0.0.0 cannot address a stream"),
    ("connection.st2110.transport", "st2110-40", "connection.st2110.transport: must be one of 'st2110-20'"),
    ("connection.st2110.pacing", "fast", "connection.st2110.pacing: must be one of"),
    ("connection.st2110.payloadType", 34, "connection.st2110.payloadType: must be 96..127, got 34"),
    ("connection.st2110.transportPixelFormat", "v210", "connection.st2110.transportPixelFormat: must be one of"),
    ("connection.st2110.ipaddr", "239.1.1.1", "connection.st2110.ipaddr: unknown field (did you mean 'ipAddr'?)"),
    ("connection.rdma", {}, "connection.rdma: unknown field"),
    ("options.rdma.provider", "efa", "options.rdma.provider: must be one of 'tcp', 'verbs', got 'efa'"),
    ("options.rdma.numEndpoints", 9, "options.rdma.numEndpoints: must be 1..8, got 9"),
    ("options.rdma.num_endpoints", 2, "options.rdma.num_endpoints: give numEndpoints or num_endpoints, not both"),
    ("options.memif", {}, "options.memif: unknown field (expected rdma)"),
    ("payload.video.width", 1921, "payload.video.width: 4:2:2 video needs an even width, got 1921"),
    ("payload.video.width", 0, "payload.video.width: must be 1..16384, got 0"),
    ("payload.video.height", 20000, "payload.video.height: must be 1..16384, got 20000"),
    ("payload.video.fps", 0, "payload.video.fps: must be 0.01..240, got 0"),
    ("payload.video.fps", 1e-300, "payload.video.fps: must be 0.01..240, got 1e-300"),
    ("payload.video.fps", 240.5, "payload.video.fps: must be 0.01..240, got 240.5"),
    ("payload.video.fps", "60", "payload.video.fps: must be a number, got '60'"),
    ("payload.video.pixelFormat", "nv12", "payload.video.pixelFormat: must be one of 'yuv422p10le', 'v210'"),
    ("payload.video.colorSpace", "bt709", "payload.video.colorSpace: unknown field"),
    ("payload.audio", {}, "payload: must hold exactly one of video, audio, blob, got video and audio"),
    ("payload", {}, "payload: must hold exactly one of video, audio, blob, got none"),
    ("payload", [], "payload: must be a JSON object, got an array"),
    ("connection", {}, "connection: must hold exactly one of st2110, multipointGroup, got none"),
    ("connection", _DELETE, "connection: required"),
    ("bufferQueueCapacity", 1, "bufferQueueCapacity: must be 2..128, got 1"),
    ("bufferQueueCapacity", 1000, "bufferQueueCapacity: must be 2..128, got 1000"),
    ("maxPayloadSize", 1000, "maxPayloadSize: must hold one frame of the payload (5184000 bytes), got 1000"),
    ("maxPayloadSize", -1, "maxPayloadSize: must be 0..268435456, got -1"),
    ("maxMetadataSize", 1 << 21, "maxMetadataSize: must be 0..1048576"),
    ("connCreationDelayMilliseconds", 120000, "connCreationDelayMilliseconds: must be 0..60000, got 120000"),
    ("connCreationDelayMicroseconds", 1, "connCreationDelayMicroseconds: unknown field "
                                         "(did you mean 'connCreationDelayMilliseconds'?)"),
    ("apiVersion", "v2", "apiVersion: must be one of 'v1', got 'v2'"),
    ("apiConnectionString", "127.0.0.1:8002", "apiConnectionString: must be 'Server=HOST; Port=PORT'"),
    ("apiDefaultTimeoutMicroseconds", -5, "apiDefaultTimeoutMicroseconds: must be 0..3600000000, got -5"),
]


# Ids name a deleted field <deleted>, not an object's address (the same on every collection: xdist compares them).
_IDS = [f"{p}=<deleted>" if v is _DELETE else f"{p}={v!r}" for p, v, _ in BAD_FIELDS]


@pytest.mark.parametrize(("path", "value", "expected"), BAD_FIELDS, ids=_IDS)
def test_bad_field_is_named(path: str, value: object, expected: str) -> None:
    assert error(_with(path, value)).startswith(expected)


def test_inconsistent_sections_are_named() -> None:
    audio_doc = fixture("st2110_audio_ffmpeg")
    no_tpf = _with("connection.st2110.transportPixelFormat", _DELETE)
    assert error(_with("connection.st2110.transport", "st2110-30", no_tpf)) == (
        "connection.st2110.transport: st2110-30 carries audio, but the payload is video")
    assert error(_with("connection.st2110.transport", "st2110-20", audio_doc)) == (
        "connection.st2110.transport: st2110-20 carries video, but the payload is audio")
    assert error(_with("payload.audio.format", "pcm_s8", audio_doc)).startswith(
        "payload.audio.format: st2110-30 carries pcm_s24be or pcm_s16be")
    big = _with("payload.audio", {"channels": 16, "sampleRate": 48000, "packetTime": "1ms"}, audio_doc)
    assert error(big).startswith("payload.audio.channels: 16 channels of pcm_s24be in 1ms packets is 2304 bytes")
    assert error(_with("payload.audio.packetTime", "1.09ms", audio_doc)).startswith(
        "payload.audio.packetTime: 1.09ms is not a packet time at 96000 Hz (allowed: 1ms, 125us")
    assert error(_with("payload.audio.sampleRate", 32000, audio_doc)) == (
        "payload.audio.sampleRate: must be one of 44100, 48000, 96000, got 32000")
    assert error(_with("connection.st2110.transportPixelFormat", "yuv422p10rfc4175",
                       fixture("st2110_22_video"))).startswith(
        "connection.st2110.transportPixelFormat: only for transport st2110-20")
    assert error(_with("payload.video.pixelFormat", "v210", fixture("st2110_22_video"))) == (
        "payload.video.pixelFormat: st2110-22 takes yuv422p10le, got v210")


def test_blob_rules() -> None:
    blob = fixture("multipoint_blob")
    assert error(_with("maxPayloadSize", 0, blob)).startswith("maxPayloadSize: a blob payload needs it")
    on_st2110 = _with("connection", {"st2110": {"ipAddr": "239.1.1.1", "port": 5004}}, blob)
    assert error(on_st2110).startswith("connection.st2110.transport: st2110-20 carries video, but the payload is blob")
    assert error(_with("payload.blob", {"size": 1}, blob)).startswith("payload.blob.size: unknown field")
    assert error(_with("bufferQueueCapacity", 128, _with("maxPayloadSize", 256 << 20, blob))).startswith(
        "bufferQueueCapacity: 128 buffers of")


def test_multicast_rules() -> None:
    rx = fixture("st2110_video_rx_with_client")
    assert error(rx, "tx") == "connection.st2110.multicastSourceIpAddr: only an rx connection filters by source"
    assert error(_with("connection.st2110.ipAddr", "192.168.40.7", rx), "rx") == (
        "connection.st2110.multicastSourceIpAddr: a source filter needs a multicast ipAddr, got 192.168.40.7")
    assert error(_with("connection.st2110.multicastSourceIpAddr", "239.0.0.2", rx), "rx") == (
        "connection.st2110.multicastSourceIpAddr: must be a unicast address, got 239.0.0.2")


def test_group_urn() -> None:
    group = fixture("multipoint_video")
    assert error(_with("connection.multipointGroup.urn", _DELETE, group)) == "connection.multipointGroup.urn: required"
    assert error(_with("connection.multipointGroup.urn", "a b", group)).startswith(
        "connection.multipointGroup.urn: must be 1..256 printable ASCII characters")
    assert error(_with("connection.st2110", {"ipAddr": "239.1.1.1", "port": 1}, group)) == (
        "connection: must hold exactly one of st2110, multipointGroup, got st2110 and multipointGroup")


def test_document_level_errors() -> None:
    assert error("").startswith("connection JSON: Expecting value")
    assert error('{"co\\nnection": {}}') == "'co\\nnection': unknown field (did you mean 'connection'?)"
    assert error("[1]") == "connection JSON: must be a JSON object, got an array"
    assert error('{"maxPayloadSize": 1, "maxPayloadSize": 2}') == "connection JSON: duplicate field 'maxPayloadSize'"
    assert error('{"payload": {"video": {"fps": NaN}}}') == "connection JSON: NaN is not a JSON number"
    assert error(b"\xff{}").startswith("connection JSON: not UTF-8")
    assert error(b" " * (MAX_JSON_BYTES + 1)) == f"connection JSON: {MAX_JSON_BYTES + 1} bytes, the limit is 65536"
    assert error("[" * 100_000).startswith("connection JSON: ")
    assert error({"connection": {"multipointGroup": {"urn": "g"}}}, "both") == (
        "direction: must be 'tx' or 'rx', got 'both'")
    assert error({"payload": {"video": {"fps": float("inf")}}}).startswith("connection JSON: the object is not JSON")


# -- round trip of any valid config -------------------------------------------------------------------
_videos = st.builds(VideoPayload, width=st.integers(1, 4096).map(lambda w: w * 2), height=st.integers(1, 4320),
                    fps=st.sampled_from([23.98, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0, 120.0]),
                    pixel_format=st.sampled_from(["yuv422p10le", "v210", "yuv422p10rfc4175"]))
_groups = st.builds(MultipointGroup, urn=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                                                 max_size=40))


@settings(max_examples=150, deadline=None)
@given(video=_videos, group=_groups, capacity=st.integers(2, 16), metadata=st.integers(0, 8192),
       delay_ms=st.integers(0, 60000), endpoints=st.none() | st.integers(1, 8))
def test_round_trip_property(video: VideoPayload, group: MultipointGroup, capacity: int, metadata: int,
                             delay_ms: int, endpoints: int | None) -> None:
    config = ConnectionConfig(direction="rx", connection=group, payload=video, buffer_queue_capacity=capacity,
                              max_metadata_size=metadata, conn_creation_delay=delay_ms / 1000,
                              rdma=RdmaOptions(num_endpoints=endpoints) if endpoints else None)
    assert parse_connection(json.dumps(config.to_dict()), direction="rx") == config
