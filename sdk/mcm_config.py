"""The connection JSON of Media Communications Mesh (MCM), read strictly into frozen values.

An app that hands media to the mesh directly describes each connection the way MCM's SDK does
(``mesh_create_tx_connection(client, conn, json)``), so an MCM user's files work unchanged::

    {"bufferQueueCapacity": 16, "maxPayloadSize": 0, "maxMetadataSize": 0,
     "connCreationDelayMilliseconds": 0,
     "connection": {"st2110": {"transport": "st2110-20", "ipAddr": "239.0.0.1", "port": 9002,
                               "multicastSourceIpAddr": "192.168.95.2", "pacing": "narrow",
                               "payloadType": 112, "transportPixelFormat": "yuv422p10rfc4175"}},
     "options": {"rdma": {"provider": "tcp", "numEndpoints": 2}},
     "payload": {"video": {"width": 1920, "height": 1080, "fps": 60.0, "pixelFormat": "yuv422p10le"}}}

``connection`` holds exactly one of ``st2110`` or ``multipointGroup{urn}``; ``payload`` exactly
one of ``video``, ``audio`` or ``blob`` (none at all means blob, as in MCM). MCM's defaults are
kept (capacity 16, payload type 112, 640x640 at 60 fps ``yuv422p10le``, 2 channels of
``pcm_s24be`` at 48 kHz in 1 ms packets). The client fields MCM's sample files put beside the
connection (``apiVersion``, ``apiConnectionString``, ``apiDefaultTimeoutMicroseconds``,
``maxMediaConnections``) are read into :class:`ClientSettings`. Where MCM's documentation and its
parser disagree on a spelling (``numEndpoints`` documented, ``num_endpoints`` read by its
parser and written by its FFmpeg plugin) both are accepted.

Where this parser is stricter than MCM's (which logs and carries on): an unknown field, a value
of the wrong JSON type (``true`` is not a number, ``9002.0`` is not an integer), a duplicate
key, a missing ``connection.st2110.ipAddr``/``port`` or ``multipointGroup.urn``, and every
inconsistency (ST 2110-20/-22 carry video, -30 audio; a blob needs a multipoint group and a
``maxPayloadSize``; a packet time must belong to its sample rate; ``maxPayloadSize``, when not
0 for "computed", must hold the frame or packet the payload implies) raise
:class:`~msm.sdk.errors.ConfigError` with one line that starts with the JSON path of the field::

    connection.st2110.port: must be 1..65535, got 70000

**Units.** MCM mixes milliseconds (``connCreationDelayMilliseconds``) and microseconds
(``apiDefaultTimeoutMicroseconds``, the ``timeout_us`` arguments). The JSON keeps MCM's field
names and their units so that files stay interchangeable, but the Python SDK has one unit for
every timeout and delay: **seconds, as a float** (``conn_creation_delay``, ``default_timeout``).
Media timing that must be exact is an integer of nanoseconds (``frame_period_ns``,
``packet_time_ns``); sizes are bytes.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from msm.sdk.errors import ConfigError
from msm.sdk.mcm_values import (
    AUDIO_FORMATS,
    MAX_CHANNELS,
    MAX_CONN_CREATION_DELAY_MS,
    MAX_DIMENSION,
    MAX_FPS,
    MAX_JSON_BYTES,
    MAX_METADATA_SIZE,
    MAX_PAYLOAD_SIZE,
    MAX_QUEUE_BYTES,
    MAX_QUEUE_CAPACITY,
    MAX_URN,
    MIN_FPS,
    MIN_QUEUE_CAPACITY,
    PACINGS,
    PACKET_TIMES,
    PIXEL_FORMATS,
    RDMA_PROVIDERS,
    SAMPLE_RATES,
    ST2110_MAX_AUDIO_PAYLOAD,
    TRANSPORT_PIXEL_FORMATS,
    TRANSPORTS,
    AudioPayload,
    BlobPayload,
    ClientSettings,
    Connection,
    ConnectionConfig,
    Direction,
    MultipointGroup,
    Payload,
    RdmaOptions,
    St2110Connection,
    VideoPayload,
    audio_packet_size,
    did_you_mean,
    parse_connection_string,
    show,
    video_frame_size,
)

__all__ = [
    "MAX_JSON_BYTES", "MAX_PAYLOAD_SIZE", "MAX_QUEUE_CAPACITY",
    "AudioPayload", "BlobPayload", "ClientSettings", "ConnectionConfig", "Direction", "MultipointGroup",
    "RdmaOptions", "St2110Connection", "VideoPayload", "audio_packet_size", "decode", "parse_connection",
    "video_frame_size",
]

_TOP = ("bufferQueueCapacity", "maxPayloadSize", "maxMetadataSize", "connCreationDelayMilliseconds",
        "connection", "options", "payload",
        "apiVersion", "apiConnectionString", "apiDefaultTimeoutMicroseconds", "maxMediaConnections")
_ST2110 = ("transport", "ipAddr", "port", "multicastSourceIpAddr", "pacing", "payloadType", "transportPixelFormat")
_VIDEO = ("width", "height", "fps", "pixelFormat")
_AUDIO = ("channels", "sampleRate", "format", "packetTime")
_MAX_TIMEOUT_US = 3600 * 1_000_000
_MAX_MEDIA_CONNECTIONS = 1024


def parse_connection(source: str | bytes | Mapping[str, Any], *, direction: Direction) -> ConnectionConfig:
    """Read one MCM connection JSON (text, UTF-8 bytes or an already-decoded object) for a
    ``"tx"`` or ``"rx"`` connection; :class:`ConfigError` names the first bad field."""
    if direction not in ("tx", "rx"):
        raise ConfigError(f"direction: must be 'tx' or 'rx', got {show(direction)}")
    top = _Fields(decode(source), "", _TOP)
    connection = _connection(top, direction)
    payload = _payload(top)
    config = ConnectionConfig(
        direction=direction, connection=connection, payload=payload,
        buffer_queue_capacity=top.integer("bufferQueueCapacity", 16, MIN_QUEUE_CAPACITY, MAX_QUEUE_CAPACITY),
        max_payload_size=top.integer("maxPayloadSize", 0, 0, MAX_PAYLOAD_SIZE),
        max_metadata_size=top.integer("maxMetadataSize", 0, 0, MAX_METADATA_SIZE),
        conn_creation_delay=top.integer("connCreationDelayMilliseconds", 0, 0, MAX_CONN_CREATION_DELAY_MS) / 1000,
        rdma=_rdma(top), client=_client(top))
    _check_consistent(config)
    return config


# -- reading one JSON object -------------------------------------------------------------------------
class _Fields:
    """One JSON object at ``path``, whose keys must all be in ``allowed``."""

    def __init__(self, value: object, path: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"{path or 'connection JSON'}: must be a JSON object, got {show(value)}")
        for key in value:
            if key not in allowed:
                name = key if key.isidentifier() and len(key) <= 40 else show(key)
                raise ConfigError(f"{self._join(path, name)}: unknown field{did_you_mean(key, allowed)}")
        self.data: dict[str, Any] = value
        self.path = path

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def at(self, key: str) -> str:
        return self._join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def child(self, key: str, allowed: tuple[str, ...]) -> _Fields:
        return _Fields(self.data[key], self.at(key), allowed)

    def integer(self, key: str, default: int | None, low: int, high: int) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise ConfigError(f"{self.at(key)}: required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.at(key)}: must be an integer, got {show(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{self.at(key)}: must be {low}..{high}, got {show(value)}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.at(key)}: must be a number, got {show(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{self.at(key)}: must be {low:g}..{high:g}, got {show(value)}")
        return float(value)

    def string(self, key: str, default: str | None, choices: tuple[str, ...] = ()) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise ConfigError(f"{self.at(key)}: required")
        if not isinstance(value, str):
            raise ConfigError(f"{self.at(key)}: must be a string, got {show(value)}")
        if choices and value not in choices:
            shown = ", ".join(repr(choice) for choice in choices)
            raise ConfigError(f"{self.at(key)}: must be one of {shown}, got {show(value)}")
        return value


def _one_of(fields: _Fields, choices: tuple[str, ...]) -> str:
    present = [key for key in choices if fields.has(key)]
    if len(present) != 1:
        got = " and ".join(present) if present else "none"
        raise ConfigError(f"{fields.path}: must hold exactly one of {', '.join(choices)}, got {got}")
    return present[0]


# -- the sections ------------------------------------------------------------------------------------
def _connection(top: _Fields, direction: Direction) -> Connection:
    if not top.has("connection"):
        raise ConfigError("connection: required (st2110 or multipointGroup)")
    section = top.child("connection", ("st2110", "multipointGroup"))
    if _one_of(section, ("st2110", "multipointGroup")) == "multipointGroup":
        group = section.child("multipointGroup", ("urn",))
        urn = group.string("urn", None)
        if not urn or len(urn) > MAX_URN or not urn.isascii() or not urn.isprintable() or " " in urn:
            raise ConfigError(f"{group.at('urn')}: must be 1..{MAX_URN} printable ASCII characters without "
                              f"spaces, got {show(urn)}")
        return MultipointGroup(urn=urn)
    return _st2110(section.child("st2110", _ST2110), direction)


def _st2110(st: _Fields, direction: Direction) -> St2110Connection:
    transport = st.string("transport", "st2110-20", TRANSPORTS)
    ip_addr = _ipv4(st, "ipAddr", None)
    source = _ipv4(st, "multicastSourceIpAddr", "")
    if source and direction == "tx":
        raise ConfigError(f"{st.at('multicastSourceIpAddr')}: only an rx connection filters by source")
    if source and not ipaddress.IPv4Address(ip_addr).is_multicast:
        raise ConfigError(f"{st.at('multicastSourceIpAddr')}: a source filter needs a multicast ipAddr, "
                          f"got {ip_addr}")
    if source and ipaddress.IPv4Address(source).is_multicast:
        raise ConfigError(f"{st.at('multicastSourceIpAddr')}: must be a unicast address, got {source}")
    pixel_format: str | None = None
    if transport == "st2110-20":
        pixel_format = st.string("transportPixelFormat", "yuv422p10rfc4175", TRANSPORT_PIXEL_FORMATS)
    elif st.has("transportPixelFormat"):
        raise ConfigError(f"{st.at('transportPixelFormat')}: only for transport st2110-20, not {transport}")
    return St2110Connection(
        transport=transport, ip_addr=ip_addr, port=st.integer("port", None, 1, 65535),
        multicast_source_ip_addr=source, pacing=st.string("pacing", "", PACINGS),
        payload_type=st.integer("payloadType", 112, 96, 127), transport_pixel_format=pixel_format)


def _ipv4(st: _Fields, key: str, default: str | None) -> str:
    text = st.string(key, default)
    if not text and default == "":
        return ""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(f"{st.at(key)}: must be an IPv4 address, got {show(text)}") from None
    if address.is_unspecified or address == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(f"{st.at(key)}: {address} cannot address a stream")
    return str(address)


def _payload(top: _Fields) -> Payload:
    if not top.has("payload"):
        return BlobPayload()   # MCM: no payload section is a blob
    section = top.child("payload", ("video", "audio", "blob"))
    kind = _one_of(section, ("video", "audio", "blob"))
    if kind == "blob":
        section.child("blob", ())
        return BlobPayload()
    if kind == "video":
        video = section.child("video", _VIDEO)
        width = video.integer("width", 640, 1, MAX_DIMENSION)
        if width % 2:
            raise ConfigError(f"{video.at('width')}: 4:2:2 video needs an even width, got {width}")
        return VideoPayload(width=width, height=video.integer("height", 640, 1, MAX_DIMENSION),
                            fps=video.number("fps", 60.0, MIN_FPS, MAX_FPS),
                            pixel_format=video.string("pixelFormat", "yuv422p10le", PIXEL_FORMATS))
    audio = section.child("audio", _AUDIO)
    channels = audio.integer("channels", 2, 1, MAX_CHANNELS)
    rate = audio.integer("sampleRate", 48000, 0, 1 << 31)
    if rate not in SAMPLE_RATES:
        raise ConfigError(f"{audio.at('sampleRate')}: must be one of {', '.join(map(str, SAMPLE_RATES))}, got {rate}")
    audio_format = audio.string("format", "pcm_s24be", tuple(AUDIO_FORMATS))
    packet_time = audio.string("packetTime", "1ms", tuple(PACKET_TIMES))
    if rate not in PACKET_TIMES[packet_time]:
        allowed = ", ".join(name for name, rates in PACKET_TIMES.items() if rate in rates)
        raise ConfigError(f"{audio.at('packetTime')}: {packet_time} is not a packet time at {rate} Hz "
                          f"(allowed: {allowed})")
    return AudioPayload(channels=channels, sample_rate=rate, format=audio_format, packet_time=packet_time)


def _rdma(top: _Fields) -> RdmaOptions | None:
    if not top.has("options"):
        return None
    options = top.child("options", ("rdma",))
    if not options.has("rdma"):
        return None
    rdma = options.child("rdma", ("provider", "numEndpoints", "num_endpoints"))
    if rdma.has("numEndpoints") and rdma.has("num_endpoints"):
        raise ConfigError(f"{rdma.at('num_endpoints')}: give numEndpoints or num_endpoints, not both")
    key = "num_endpoints" if rdma.has("num_endpoints") else "numEndpoints"
    return RdmaOptions(provider=rdma.string("provider", "tcp", RDMA_PROVIDERS),
                       num_endpoints=rdma.integer(key, 1, 1, 8))


def _client(top: _Fields) -> ClientSettings | None:
    if not any(top.has(key) for key in _TOP[7:]):
        return None
    text = top.string("apiConnectionString", "")
    parse_connection_string(text, top.at("apiConnectionString"))
    timeout_us = top.integer("apiDefaultTimeoutMicroseconds", 1_000_000, 0, _MAX_TIMEOUT_US)
    return ClientSettings(api_version=top.string("apiVersion", "v1", ("v1",)), api_connection_string=text,
                          default_timeout=timeout_us / 1_000_000,
                          max_media_connections=top.integer("maxMediaConnections", 32, 1, _MAX_MEDIA_CONNECTIONS))


# -- consistency between sections ----------------------------------------------------------------------
def _check_consistent(config: ConnectionConfig) -> None:
    connection, payload = config.connection, config.payload
    if isinstance(connection, St2110Connection):
        _check_st2110(connection, payload)
    if isinstance(payload, BlobPayload):
        if not isinstance(connection, MultipointGroup):
            raise ConfigError("payload.blob: a blob travels in a multipointGroup connection, not st2110")
        if not config.max_payload_size:
            raise ConfigError("maxPayloadSize: a blob payload needs it (1.."
                              f"{MAX_PAYLOAD_SIZE} bytes), got 0")
    elif config.max_payload_size and config.max_payload_size < config.frame_size:
        what = "frame" if isinstance(payload, VideoPayload) else "packet"
        raise ConfigError(f"maxPayloadSize: must hold one {what} of the payload ({config.frame_size} bytes), "
                          f"got {config.max_payload_size}")
    if config.payload_size > MAX_PAYLOAD_SIZE:
        raise ConfigError(f"payload: one buffer would be {config.payload_size} bytes, the limit is {MAX_PAYLOAD_SIZE}")
    queue = config.buffer_queue_capacity * (config.payload_size + config.max_metadata_size)
    if queue > MAX_QUEUE_BYTES:
        raise ConfigError(f"bufferQueueCapacity: {config.buffer_queue_capacity} buffers of "
                          f"{config.payload_size + config.max_metadata_size} bytes is {queue} bytes of shared "
                          f"memory, the limit is {MAX_QUEUE_BYTES}")


def _check_st2110(connection: St2110Connection, payload: Payload) -> None:
    where = "connection.st2110.transport"
    if connection.transport == "st2110-30":
        if not isinstance(payload, AudioPayload):
            raise ConfigError(f"{where}: st2110-30 carries audio, but the payload is {_kind(payload)}")
        if payload.format not in ("pcm_s24be", "pcm_s16be"):
            raise ConfigError(f"payload.audio.format: st2110-30 carries pcm_s24be or pcm_s16be, got {payload.format}")
        size = payload.packet_size
        if size > ST2110_MAX_AUDIO_PAYLOAD:
            raise ConfigError(f"payload.audio.channels: {payload.channels} channels of {payload.format} in "
                              f"{payload.packet_time} packets is {size} bytes a packet, over ST 2110-10's "
                              f"{ST2110_MAX_AUDIO_PAYLOAD}")
        return
    if not isinstance(payload, VideoPayload):
        raise ConfigError(f"{where}: {connection.transport} carries video, but the payload is {_kind(payload)}")
    if connection.transport == "st2110-22" and payload.pixel_format != "yuv422p10le":
        raise ConfigError(f"payload.video.pixelFormat: st2110-22 takes yuv422p10le, got {payload.pixel_format}")


def _kind(payload: Payload) -> str:
    return {VideoPayload: "video", AudioPayload: "audio"}.get(type(payload), "blob")

def decode(source: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object in ``source``: bounded, no duplicate keys, no NaN or Infinity."""
    if isinstance(source, Mapping):
        text = _dump(source)
    elif isinstance(source, bytes | bytearray):
        if len(source) > MAX_JSON_BYTES:
            raise ConfigError(f"connection JSON: {len(source)} bytes, the limit is {MAX_JSON_BYTES}")
        try:
            text = bytes(source).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"connection JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    elif isinstance(source, str):
        text = source
    else:
        raise ConfigError(f"connection JSON: expected text or an object, got {type(source).__name__}")
    if len(text) > MAX_JSON_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_JSON_BYTES:
        raise ConfigError(f"connection JSON: over {MAX_JSON_BYTES} bytes")
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ConfigError("connection JSON: nested too deeply") from exc
    except ValueError as exc:   # JSONDecodeError, an integer of too many digits
        raise ConfigError(f"connection JSON: {_first_line(exc)}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"connection JSON: must be a JSON object, got {show(document)}")
    return document


def _dump(source: Mapping[str, Any]) -> str:
    try:
        return json.dumps(source, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"connection JSON: the object is not JSON ({_first_line(exc)})") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


