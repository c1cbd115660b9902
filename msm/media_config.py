"""The ``media:`` section of ``msm up --config`` and ``msm-proxy --media-config``: groups and ST 2110
bridges, read strictly.

::

    media:
      groups: [urn:studio:cam1]              # optional: groups shown before anything joins them
      bridges:
        - name: cam1-in                      # letters, digits, . _ - (SDP file name, metric label)
          direction: ingress                 # the network into the group (its sender)
          group: urn:studio:cam1
          sdp: /etc/msm/cam1.sdp             # declared by an SDP file, or by MCM's fields:
        - name: cam1-in-b
          direction: ingress
          nodes: [node-a]                    # only node-a's proxy runs it (default: every proxy)
          group: urn:studio:cam1b
          transport: st2110-20               # MCM's connection.st2110 field names
          ipAddr: 239.1.1.1
          port: 5004
          multicastSourceIpAddr: 192.0.2.10  # source-specific multicast (optional)
          payloadType: 96
          payload: {video: {width: 1920, height: 1080, fps: 30, pixelFormat: yuv422p10rfc4175}}
          incomplete: pass                   # pass (marked incomplete) or drop; counted either way
        - name: cam1-out
          direction: egress                  # the group out to the network (a receiver of it)
          group: urn:studio:cam1
          ipAddr: 127.0.0.1
          port: 6000
          payload: {video: {width: 1920, height: 1080, fps: 30}}
          pacing: wide                       # wide (default), narrow, linear or none
          writeSdp: /tmp/cam1-out.sdp        # default <state dir>/media/<name>.sdp
        - name: mic1-in                      # ST 2110-30 (AES67): an SDP file, or the fields
          direction: ingress
          group: urn:studio:mic1
          ipAddr: 239.1.2.1
          port: 5006
          payload: {audio: {channels: 2, sampleRate: 48000, format: L24, packetTime: 1ms}}
          maxPayloadSize: 2880               # the group's frames: 10 packets (10 ms); default one packet

The ST 2110 fields and ``payload`` are read by MCM's own reader
(:func:`msm.sdk.mcm_config.parse_connection`: an ingress is an ``rx`` connection,
an egress a ``tx`` one), so they take the same names, defaults and checks; the
pixel format defaults to ``yuv422p10rfc4175``, the only one bridged (no conversion).
An audio payload makes the transport ``st2110-30`` when none is given; its format
is MCM's ``pcm_s24be`` or ``pcm_s16be`` (``L24``, ``L16`` are taken as their
names), its packet time ``1ms`` or ``125us`` (the bridge's). An audio bridge's
group frames are blocks of whole packets (``maxPayloadSize`` bytes, rounded
down to whole packets; one packet by default, as an MCM connection's buffer);
an audio egress goes out at its packet time (``pacing`` is video's).
Every error is one line naming the file and the YAML path, e.g.
``msm.yaml: media.bridges[1].port: must be 1..65535, got 70000``.

:func:`load_media_file` reads ``msm-proxy --media-config``: a YAML (or JSON) file
holding the section itself (``groups:``, ``bridges:``) or a top-level ``media:``
key with it (and nothing else), so a file written for ``msm up`` is read the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msm.rtp_proxy.media.aes67_bridge import MAX_BLOCK_BYTES, audio_format, audio_stream
from msm.rtp_proxy.media.bridges import MAX_BRIDGES, PACINGS, BridgeSpec
from msm.sdk.errors import ConfigError, SdpError
from msm.sdk.mcm_config import parse_connection
from msm.sdk.mcm_values import MAX_URN, AudioPayload, St2110Connection, VideoPayload
from msm.sdk.rfc4175 import VideoFormat
from msm.sdk.st2110_sdp import AudioStream, VideoStream, parse_st2110

__all__ = ["MediaConfig", "load_media_file", "read_media"]

_OWN = ("name", "direction", "group", "nodes", "sdp", "incomplete", "pacing", "writeSdp", "maxPayloadSize")
_ST2110 = ("transport", "ipAddr", "port", "multicastSourceIpAddr", "payloadType", "transportPixelFormat")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
#: Node names one bridge may list (a bridge for more nodes than this lists none: every node).
MAX_NODES = 64
#: Largest SDP file read (a real one is under 1 KB).
MAX_SDP_BYTES = 64 << 10
#: Largest --media-config file read: 16 bridges take a few KB.
MAX_CONFIG_BYTES = 1 << 20
#: RTP's names of the formats, taken for MCM's.
_AUDIO_ALIASES = {"L24": "pcm_s24be", "L16": "pcm_s16be"}


@dataclass(frozen=True)
class MediaConfig:
    groups: list[str] = field(default_factory=list)
    bridges: list[BridgeSpec] = field(default_factory=list)


def read_media(file_values: dict[str, Any], path: str) -> MediaConfig:
    """The ``media`` mapping of a config file read from ``path`` (an empty MediaConfig without one)."""
    section = file_values.get("media")
    if section is None:
        return MediaConfig()
    try:
        return _media(section)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_media_file(path: str) -> MediaConfig:
    """``msm-proxy --media-config``'s file: the ``media:`` section, or a mapping with only a ``media`` key.

    ConfigError, one line naming the file and the YAML path, for anything else.
    """
    import yaml

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES} bytes, not a media config")
    try:
        values = yaml.safe_load(data.decode("utf-8", errors="replace"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML or JSON: {' '.join(str(exc).split())[:200]}") from None
    if values is None:
        return MediaConfig()
    if isinstance(values, dict) and "media" in values:
        other = [str(k) for k in values if k != "media"]
        if other:
            raise ConfigError(f"{path}: {other[0]}: msm-proxy reads only the media: section")
        return read_media(values, path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: must be a mapping (groups:, bridges:, or media: holding them), "
                          f"got {_show(values)}")
    try:
        return _media(values)
    except ConfigError as exc:   # the file is the section: its paths start at its top
        text = str(exc)
        raise ConfigError(f"{path}: {text.removeprefix('media.')}") from None


def _media(section: object) -> MediaConfig:
    if not isinstance(section, dict):
        raise ConfigError(f"media: must be a mapping with groups: and bridges:, got {_show(section)}")
    unknown = [str(k) for k in section if k not in ("groups", "bridges")]
    if unknown:
        raise ConfigError(f"media.{unknown[0]}: unknown field (media takes groups and bridges)")
    groups = [_urn(value, f"media.groups[{i}]") for i, value in enumerate(_list(section, "groups"))]
    raw = _list(section, "bridges")
    if len(raw) > MAX_BRIDGES:
        raise ConfigError(f"media.bridges: {len(raw)} bridges, a proxy runs at most {MAX_BRIDGES}")
    bridges: list[BridgeSpec] = []
    for i, value in enumerate(raw):
        spec = _bridge(value, f"media.bridges[{i}]")
        for other in bridges:
            if other.name == spec.name:
                raise ConfigError(f"media.bridges[{i}].name: {spec.name!r} is already the name of another bridge")
            shared = not other.nodes or not spec.nodes or set(other.nodes) & set(spec.nodes)
            if other.direction == spec.direction and shared and (other.stream.address, other.stream.port) == (
                    spec.stream.address, spec.stream.port):
                raise ConfigError(f"media.bridges[{i}].port: bridge {other.name!r} already uses "
                                  f"{spec.stream.address}:{spec.stream.port}")
        bridges.append(spec)
    return MediaConfig(groups, bridges)


def _list(section: dict[Any, Any], key: str) -> list[Any]:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"media.{key}: must be a list, got {_show(value)}")
    return value


def _urn(value: object, where: str) -> str:
    if isinstance(value, dict) and list(value) == ["urn"]:
        value, where = value["urn"], f"{where}.urn"
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URN or not value.isascii() \
            or not value.isprintable() or " " in value:
        raise ConfigError(f"{where}: must be a URN of 1..{MAX_URN} printable ASCII characters without spaces, "
                          f"got {_show(value)}")
    return value


def _string(item: dict[str, Any], key: str, where: str, choices: tuple[str, ...] = (), default: str = "") -> str:
    if key not in item and not default:
        raise ConfigError(f"{where}.{key}: required")
    value = item.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: must be a non-empty string, got {_show(value)}")
    if choices and value not in choices:
        raise ConfigError(f"{where}.{key}: must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _bridge(item: object, where: str) -> BridgeSpec:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a mapping (name, direction, group, ...), got {_show(item)}")
    for key in item:
        if key not in (*_OWN, *_ST2110, "payload"):
            raise ConfigError(f"{where}.{key}: unknown field")
    name = _string(item, "name", where)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: letters, digits, '.', '_' and '-' (1..64, a letter or digit first), "
                          f"got {_show(name)}")
    direction = _string(item, "direction", where, ("ingress", "egress"))
    group = _urn(item.get("group"), f"{where}.group")
    ingress = direction == "ingress"
    for key, applies in (("incomplete", ingress), ("pacing", not ingress), ("writeSdp", not ingress)):
        if key in item and not applies:
            raise ConfigError(f"{where}.{key}: only for an {'egress' if ingress else 'ingress'} bridge")
    incomplete = _string(item, "incomplete", where, ("pass", "drop"), "pass") if ingress else "pass"
    pacing = _string(item, "pacing", where, PACINGS, "wide") if not ingress else "wide"
    sdp_out = Path(_string(item, "writeSdp", where)) if "writeSdp" in item else None
    sdp_in: Path | None = None
    stream: VideoStream | AudioStream
    if "sdp" in item:
        given = [key for key in (*_ST2110, "payload") if key in item]
        if given:
            raise ConfigError(f"{where}.{given[0]}: give sdp or the stream's fields, not both")
        sdp_in = Path(_string(item, "sdp", where))
        stream = _from_sdp(sdp_in, f"{where}.sdp")
    else:
        stream = _from_fields(item, where, "rx" if ingress else "tx")
    block = 0
    if isinstance(stream, AudioStream):
        if "pacing" in item:
            raise ConfigError(f"{where}.pacing: only for st2110-20 video (audio goes out at its packet time)")
        pacing, block = "none", _block_bytes(item, stream, where)
    elif "maxPayloadSize" in item:
        raise ConfigError(f"{where}.maxPayloadSize: only for st2110-30 audio (a video frame is the frame)")
    return BridgeSpec(name=name, direction=direction, group=group, stream=stream, incomplete=incomplete,
                      pacing=pacing, sdp_out=sdp_out, sdp_in=sdp_in, block_bytes=block, nodes=_nodes(item, where))


def _nodes(item: dict[str, Any], where: str) -> tuple[str, ...]:
    """``nodes``: the node names whose proxy runs the bridge (a Kubernetes node name, or msm-proxy --node)."""
    value = item.get("nodes", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_NODES:
        raise ConfigError(f"{where}.nodes: must be a list of at most {MAX_NODES} node names, got {_show(value)}")
    for i, node in enumerate(value):
        if not isinstance(node, str) or not _NODE.fullmatch(node):
            raise ConfigError(f"{where}.nodes[{i}]: must be a node name (letters, digits, '.', '_', '-'; up to "
                              f"253), got {_show(node)}")
    return tuple(value)


def _block_bytes(item: dict[str, Any], stream: AudioStream, where: str) -> int:
    """An audio bridge's group frame: ``maxPayloadSize`` rounded down to whole packets (default one)."""
    packet = audio_format(stream).packet_bytes
    size = item.get("maxPayloadSize", packet)
    if isinstance(size, bool) or not isinstance(size, int) or not packet <= size <= MAX_BLOCK_BYTES:
        raise ConfigError(f"{where}.maxPayloadSize: must be {packet}..{MAX_BLOCK_BYTES} bytes (at least one "
                          f"{packet}-byte packet), got {_show(size)}")
    return size - size % packet


def _from_sdp(path: Path, where: str) -> VideoStream | AudioStream:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SDP_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SDP_BYTES:
        raise ConfigError(f"{where}: {path} is over {MAX_SDP_BYTES} bytes, not an SDP file")
    try:
        stream = parse_st2110(data.decode("utf-8", errors="replace"))
    except (SdpError, ConfigError) as exc:
        raise ConfigError(f"{where}: {path}: {exc}") from None
    if isinstance(stream, AudioStream):
        try:
            audio_format(stream)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {path}: {exc}") from None
    return stream


def _from_fields(item: dict[str, Any], where: str, direction: str) -> VideoStream | AudioStream:
    """The stream from MCM's fields, read by MCM's reader; its error paths become this bridge's."""
    st2110 = {key: item[key] for key in _ST2110 if key in item}
    payload = item.get("payload", {"video": {}})
    if isinstance(payload, dict) and isinstance(payload.get("video"), dict):
        payload = {**payload, "video": {"pixelFormat": "yuv422p10rfc4175", **payload["video"]}}
    if isinstance(payload, dict) and isinstance(payload.get("audio"), dict):
        audio = payload["audio"]
        if audio.get("format") in _AUDIO_ALIASES:
            payload = {**payload, "audio": {**audio, "format": _AUDIO_ALIASES[audio["format"]]}}
        st2110.setdefault("transport", "st2110-30")
    try:
        config = parse_connection({"connection": {"st2110": st2110}, "payload": payload},
                                  direction="rx" if direction == "rx" else "tx")
    except ConfigError as exc:
        raise ConfigError(_rebase(str(exc), where)) from None
    st, video = config.connection, config.payload
    assert isinstance(st, St2110Connection)
    if isinstance(video, AudioPayload):
        return audio_stream(st, video, f"{where}.payload.audio")
    if st.transport != "st2110-20" or not isinstance(video, VideoPayload):
        raise ConfigError(f"{where}.transport: bridges carry st2110-20 video or st2110-30 audio, got "
                          f"{st.transport} (ST 2110-22 bridges are not built yet)")
    if video.pixel_format != "yuv422p10rfc4175":
        raise ConfigError(f"{where}.payload.video.pixelFormat: bridges carry yuv422p10rfc4175 (no conversion), "
                          f"got {video.pixel_format!r}")
    try:
        fmt = VideoFormat("YCbCr-4:2:2", 10, video.width, video.height)
    except ConfigError as exc:
        raise ConfigError(f"{where}.payload.video: {exc}") from None
    return VideoStream(st.ip_addr, st.port, fmt, rate=video.frame_rate, payload_type=st.payload_type,
                       source=st.multicast_source_ip_addr or None)


def _rebase(message: str, where: str) -> str:
    """MCM's JSON paths (``connection.st2110.port``, ``payload.video.fps``) as this bridge's YAML paths."""
    for old, new in (("connection.st2110.", f"{where}."), ("connection.st2110", where),
                     ("connection JSON", where), ("payload", f"{where}.payload")):
        if message.startswith(old):
            return new + message[len(old):]
    return f"{where}: {message}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
