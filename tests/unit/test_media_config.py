"""The media: section of `msm up --config` and `msm-proxy --media-config` (groups, ST 2110-20 and -30
bridges) and the egress's pacing class."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from msm.media_config import MediaConfig, load_media_file, read_media
from msm.rtp_proxy.media.bridges import MAX_BRIDGES, PacingMeter, incomplete_reason
from msm.rtp_proxy.media.pacing import default_lead
from msm.sdk.errors import ConfigError
from msm.sdk.mcm_values import MAX_URN
from msm.sdk.rfc4175 import VideoFormat
from msm.sdk.st2110_sdp import AudioStream, VideoStream, audio_sdp, video_sdp

VIDEO = {"width": 1920, "height": 1080, "fps": 29.97}


def _read(text: str, path: str = "msm.yaml") -> MediaConfig:
    return read_media(yaml.safe_load(text) or {}, path)


def _egress(**more: Any) -> dict[str, Any]:
    return {"name": "out", "direction": "egress", "group": "urn:a", "ipAddr": "127.0.0.1", "port": 6000,
            "payload": {"video": dict(VIDEO)}, **more}


def _error(*bridges: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        read_media({"media": {"bridges": list(bridges)}}, "msm.yaml")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_no_media_section_is_empty() -> None:
    assert _read("routes: {a: rtsp://x/y}") == MediaConfig()


def test_the_documented_example(tmp_path: Path) -> None:
    sdp = tmp_path / "cam1.sdp"
    fmt = VideoFormat("YCbCr-4:2:2", 10, 1280, 720)
    sdp.write_text(video_sdp(VideoStream("239.1.1.2", 5004, fmt, source="192.0.2.9")))
    config = _read(f"""
media:
  groups: [urn:studio:cam1, {{urn: urn:studio:spare}}]
  bridges:
    - {{name: cam1-in, direction: ingress, group: urn:studio:cam1, sdp: {sdp}}}
    - name: cam1-in-b
      direction: ingress
      group: urn:studio:cam1b
      transport: st2110-20
      ipAddr: 239.1.1.1
      port: 5004
      multicastSourceIpAddr: 192.0.2.10
      payloadType: 96
      payload: {{video: {{width: 1920, height: 1080, fps: 30, pixelFormat: yuv422p10rfc4175}}}}
      incomplete: drop
    - name: cam1-out
      direction: egress
      group: urn:studio:cam1
      ipAddr: 127.0.0.1
      port: 6000
      payload: {{video: {{width: 1280, height: 720, fps: 59.94}}}}
      pacing: narrow
      writeSdp: /tmp/cam1-out.sdp
""")
    assert config.groups == ["urn:studio:cam1", "urn:studio:spare"]
    first, second, out = config.bridges
    assert (first.stream.address, first.stream.port, first.stream.source, first.stream.fmt) == (
        "239.1.1.2", 5004, "192.0.2.9", fmt)
    assert first.sdp_in == sdp and first.incomplete == "pass"
    assert (second.stream.source, second.stream.payload_type, second.incomplete) == ("192.0.2.10", 96, "drop")
    assert second.stream.fmt.width == 1920 and second.stream.rate == 30
    assert out.direction == "egress" and out.pacing == "narrow" and out.sdp_out == Path("/tmp/cam1-out.sdp")
    assert out.stream.rate == Fraction(60000, 1001) and out.stream.payload_type == 112   # MCM's defaults
    assert _read("media: {bridges: [" + str(_egress()) + "]}").bridges[0].pacing == "wide"


@pytest.mark.parametrize(("bridge", "message"), [
    (_egress(port=70000), "media.bridges[1].port: must be 1..65535, got 70000"),
    (_egress(ipAddr="cam.local"), "media.bridges[1].ipAddr: must be an IPv4 address, got 'cam.local'"),
    (_egress(payload={"video": {"width": 641}}), "media.bridges[1].payload.video.width: 4:2:2 video needs an even "
     "width, got 641"),
    (_egress(payload={"video": {"pixelFormat": "v210"}}), "media.bridges[1].payload.video.pixelFormat: bridges "
     "carry yuv422p10rfc4175 (no conversion), got 'v210'"),
    (_egress(multicastSourceIpAddr="192.0.2.1"), "media.bridges[1].multicastSourceIpAddr: only an rx connection "
     "filters by source"),
    (_egress(pacing="fast"), "media.bridges[1].pacing: must be one of wide, narrow, linear, none, got 'fast'"),
    (_egress(incomplete="drop"), "media.bridges[1].incomplete: only for an ingress bridge"),
    (_egress(colour="blue"), "media.bridges[1].colour: unknown field"),
    (_egress(name="a b"), "media.bridges[1].name: letters, digits, '.', '_' and '-' (1..64, a letter or digit "
     "first), got 'a b'"),
    (_egress(name="first"), "media.bridges[1].name: 'first' is already the name of another bridge"),
    (_egress(name="x", group="urn with space"), "media.bridges[1].group: must be a URN of 1..256 printable ASCII "
     "characters without spaces, got 'urn with space'"),
    (_egress(name="x", sdp="/x.sdp"), "media.bridges[1].ipAddr: give sdp or the stream's fields, not both"),
    (_egress(name="x", port=6001, transport="st2110-22"), "media.bridges[1].payload.video.pixelFormat: st2110-22 "
     "takes yuv422p10le, got yuv422p10rfc4175"),
    (_egress(name="x", port=6001, transport="st2110-22", payload={"video": {"pixelFormat": "yuv422p10le"}}),
     "media.bridges[1].transport: bridges carry st2110-20 video or st2110-30 audio, got st2110-22 (ST 2110-22 "
     "bridges are not built yet)"),
    (_egress(name="x", port=6001, payload={"audio": {"packetTime": "250us"}}), "media.bridges[1].payload.audio."
     "packetTime: the ST 2110-30 bridge takes 1ms or 125us, got '250us'"),
    (_egress(name="x", port=6001, payload={"audio": {"format": "pcm_s8"}}), "media.bridges[1].payload.audio.format: "
     "st2110-30 carries pcm_s24be or pcm_s16be, got pcm_s8"),
    (_egress(name="x", port=6001, payload={"audio": {"format": "L20"}}), "media.bridges[1].payload.audio.format: "
     "must be one of 'pcm_s24be', 'pcm_s16be', 'pcm_s8', got 'L20'"),
    (_egress(name="x", port=6001, payload={"audio": {}}, pacing="wide"), "media.bridges[1].pacing: only for "
     "st2110-20 video (audio goes out at its packet time)"),
    (_egress(name="x", port=6001, payload={"audio": {}}, maxPayloadSize=100), "media.bridges[1].maxPayloadSize: "
     "must be 288..2097152 bytes (at least one 288-byte packet), got 100"),
    (_egress(name="x", port=6001, maxPayloadSize=5000), "media.bridges[1].maxPayloadSize: only for st2110-30 audio "
     "(a video frame is the frame)"),
    ({"name": "x", "direction": "egress"}, "media.bridges[1].group: must be a URN of 1..256 printable ASCII "
     "characters without spaces, got None"),
    ({"name": "x", "group": "urn:a"}, "media.bridges[1].direction: required"),
    ("out", "media.bridges[1]: must be a mapping (name, direction, group, ...), got 'out'"),
])
def test_a_bad_bridge_is_one_line_naming_its_yaml_path(bridge: Any, message: str) -> None:
    first = _egress(name="first", port=5999)
    assert _error(first, bridge) == f"msm.yaml: {message}".replace("1..256 ", f"1..{MAX_URN} ")


def test_same_address_twice_and_too_many() -> None:
    assert _error(_egress(name="a"), _egress(name="b")) == (
        "msm.yaml: media.bridges[1].port: bridge 'a' already uses 127.0.0.1:6000")
    assert _error(_egress(name="a", nodes=["n1", "n2"]), _egress(name="b", nodes="n2")) == (
        "msm.yaml: media.bridges[1].port: bridge 'a' already uses 127.0.0.1:6000")
    # The same address on other nodes is another socket.
    config = read_media({"media": {"bridges": [_egress(name="a", nodes=["n1"]), _egress(name="b", nodes="n2")]}}, "m")
    assert [b.nodes for b in config.bridges] == [("n1",), ("n2",)]
    assert _error(_egress(nodes=["bad name"])) == ("msm.yaml: media.bridges[0].nodes[0]: must be a node name "
                                                  "(letters, digits, '.', '_', '-'; up to 253), got 'bad name'")
    assert _error(_egress(nodes={"n1": 1})).startswith("msm.yaml: media.bridges[0].nodes: must be a list of at most")
    many = [_egress(name=f"b{i}", port=6000 + i) for i in range(MAX_BRIDGES + 1)]
    assert _error(*many) == f"msm.yaml: media.bridges: {MAX_BRIDGES + 1} bridges, a proxy runs at most {MAX_BRIDGES}"


def test_audio_bridges_in_mcms_fields_and_from_an_sdp_file(tmp_path: Path) -> None:
    audio = tmp_path / "audio.sdp"
    audio.write_text(audio_sdp(AudioStream("239.1.1.3", 5006, "L16", 48000, 8, 125, source="192.0.2.4")))
    config = _read(f"""
media:
  bridges:
    - {{name: mic-sdp, direction: ingress, group: urn:studio:mic, sdp: {audio}, incomplete: drop}}
    - name: mic1-in
      direction: ingress
      group: urn:studio:mic1
      ipAddr: 239.1.2.1
      port: 5006
      payload: {{audio: {{channels: 2, sampleRate: 48000, format: L24, packetTime: 1ms}}}}
      maxPayloadSize: 3000
    - name: mic1-out
      direction: egress
      group: urn:studio:mic1
      transport: st2110-30
      ipAddr: 127.0.0.1
      port: 6006
      payloadType: 97
      payload: {{audio: {{channels: 4, sampleRate: 96000, format: pcm_s16be, packetTime: 125us}}}}
""")
    from_sdp, fields, out = config.bridges
    assert from_sdp.stream == AudioStream("239.1.1.3", 5006, "L16", 48000, 8, 125, source="192.0.2.4")
    assert (from_sdp.transport, from_sdp.incomplete, from_sdp.block_bytes, from_sdp.pacing) == (
        "st2110-30", "drop", 8 * 2 * 6, "none")
    assert fields.stream == AudioStream("239.1.2.1", 5006, "L24", 48000, 2, 1000, 112)   # MCM's payload type
    assert fields.block_bytes == 2880   # 3000 rounded down to whole 288-byte packets
    assert out.stream == AudioStream("127.0.0.1", 6006, "L16", 96000, 4, 125, 97) and out.block_bytes == 12 * 4 * 2


def test_sdp_files_that_cannot_be_bridged(tmp_path: Path) -> None:
    ingress = {"name": "x", "direction": "ingress", "group": "urn:a"}
    assert _error({**ingress, "sdp": str(tmp_path / "none.sdp")}) == (
        f"msm.yaml: media.bridges[0].sdp: cannot read {tmp_path / 'none.sdp'}: No such file or directory")
    junk = tmp_path / "junk.sdp"
    junk.write_text("v=0\r\nm=video 5004 RTP/AVP 96\r\n")
    assert _error({**ingress, "sdp": str(junk)}).startswith(f"msm.yaml: media.bridges[0].sdp: {junk}: ")


@pytest.mark.parametrize(("media", "message"), [
    ("[a]", "media: must be a mapping with groups: and bridges:, got ['a']"),
    ("{bridge: []}", "media.bridge: unknown field (media takes groups and bridges)"),
    ("{bridges: {a: 1}}", "media.bridges: must be a list, got {'a': 1}"),
    ("{groups: [1]}", "media.groups[0]: must be a URN of"),
])
def test_bad_sections(media: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _read(f"media: {media}", "cfg.yaml")
    assert str(err.value).startswith(f"cfg.yaml: {message}")


# -- msm-proxy --media-config ---------------------------------------------------------------------------
def test_media_config_file_is_the_section_or_holds_only_it(tmp_path: Path) -> None:
    bridge = _egress()
    bare, wrapped, as_json = tmp_path / "bare.yaml", tmp_path / "wrapped.yaml", tmp_path / "media.json"
    bare.write_text(yaml.safe_dump({"groups": ["urn:a"], "bridges": [bridge]}))
    wrapped.write_text(yaml.safe_dump({"media": {"groups": ["urn:a"], "bridges": [bridge]}}))
    as_json.write_text('{"media": {"groups": ["urn:a"]}}')
    assert load_media_file(str(bare)) == load_media_file(str(wrapped))
    assert load_media_file(str(bare)).bridges[0].stream.port == 6000
    assert load_media_file(str(as_json)) == MediaConfig(groups=["urn:a"])
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_media_file(str(empty)) == MediaConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("bridges: [{name: x, direction: egress, group: urn:a, ipAddr: 127.0.0.1, port: 0}]",
     "bridges[0].port: must be 1..65535, got 0"),
    ("media: {bridges: [{name: x, direction: egress, group: urn:a, ipAddr: 127.0.0.1, port: 0}]}",
     "media.bridges[0].port: must be 1..65535, got 0"),
    ("media: {groups: [urn:a]}\nroutes: {a: rtsp://x/y}", "routes: msm-proxy reads only the media: section"),
    ("bridge: []", "bridge: unknown field (media takes groups and bridges)"),
    ("[1, 2]", "must be a mapping (groups:, bridges:, or media: holding them), got [1, 2]"),
    ("media: {groups: [", "not valid YAML or JSON: "),
])
def test_a_bad_media_config_file_is_one_line_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "media.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_media_file(str(path))
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_media_file(str(tmp_path / "none.yaml"))


# -- the egress's measured class ------------------------------------------------------------------------
def _meter(mode: str, packets: int = 4320, height: int = 1080) -> PacingMeter:
    group = {"narrow": 2, "wide": 8, "linear": 2}[mode]
    lead = default_lead(mode, packets, height) - (group - 1 if mode != "wide" else 0)
    return PacingMeter(None, mode=mode, packets=packets, period_ns=Fraction(10**9, 30), height=height, lead=lead,
                       group=group)


def test_on_time_frames_take_their_modes_class() -> None:
    wide, narrow = _meter("wide"), _meter("narrow")
    assert wide.klass == "unknown"
    assert wide.measure(0, 0) == "wide" and narrow.measure(0, 0) == "narrow"
    assert wide.klass == "wide" and narrow.klass == "narrow"


def test_late_packets_underflow_the_receiver() -> None:
    meter = _meter("wide")
    trs = meter.trs_ns
    assert meter.measure(10, int(trs * (meter.lead - 1))) == "wide"        # within the lead: still in time
    assert meter.measure(10, int(trs * (meter.lead + 2))) == "non-compliant"
    assert "VRX underflow" in meter.reason and meter.klass == "non-compliant"
    assert dict(meter.counts) == {"narrow": 0, "wide": 1, "non-compliant": 1}
    for _ in range(300):   # the class covers the last 300 frames
        meter.measure(0, 0)
    assert meter.klass == "wide" and meter.late_packets == 20


def test_incomplete_reasons_are_a_small_set() -> None:
    assert incomplete_reason("lost 3 packets") == "lost_packets"
    assert incomplete_reason("no marker") == "no_marker"
    assert incomplete_reason("got 10 of 20 bytes") == "short_frame"


async def test_a_bridge_runs_only_on_the_nodes_it_names() -> None:
    from msm.rtp_proxy.media.bridges import BridgeSet
    from msm.rtp_proxy.media.plane import MediaNode

    audio = {"audio": {"channels": 2, "sampleRate": 48000, "format": "L24", "packetTime": "1ms"}}
    config = read_media({"media": {"bridges": [
        _egress(name="here", nodes=["n1", "n3"], payload=audio), _egress(name="there", nodes="n2", payload=audio),
        _egress(name="everywhere", port=6001, payload=audio)]}}, "m")
    media = MediaNode("n1")
    bridges = BridgeSet(media)
    try:
        await bridges.start(config.bridges)
        assert sorted(bridges.egresses) == ["everywhere", "here"] and bridges.elsewhere == ["there"]
        assert {row["name"]: row["transport"] for row in bridges.snapshot()} == {"here": "st2110-30",
                                                                                "everywhere": "st2110-30"}
    finally:
        await bridges.stop()
        await media.stop()
