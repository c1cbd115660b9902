"""The values of an MCM connection (see :mod:`msm.sdk.mcm_config`, which reads them from JSON).

Frozen dataclasses, the tables of formats MCM accepts, the sizes they imply and the way back to
JSON (:meth:`ConnectionConfig.to_dict`). Timeouts and delays are seconds as a float; exact media
timing is integer nanoseconds; sizes are bytes.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from msm.sdk.errors import ConfigError

__all__ = [
    "AUDIO_FORMATS", "MAX_JSON_BYTES", "MAX_PAYLOAD_SIZE", "MAX_QUEUE_BYTES", "MAX_QUEUE_CAPACITY",
    "PACKET_TIMES", "PIXEL_FORMATS", "SAMPLE_RATES", "TRANSPORTS",
    "AudioPayload", "BlobPayload", "ClientSettings", "ConnectionConfig", "Direction", "MultipointGroup",
    "RdmaOptions", "St2110Connection", "VideoPayload", "audio_packet_size", "did_you_mean",
    "parse_connection_string", "show", "video_frame_size",
]

Direction = Literal["tx", "rx"]

# A connection config is well under 1 KiB; 64 KiB bounds what parsing a wrong file (a video
# dumped where the JSON should be) costs, and json.loads builds objects ~10x the text.
MAX_JSON_BYTES = 64 * 1024
MIN_QUEUE_CAPACITY, MAX_QUEUE_CAPACITY = 2, 128   # MCM's documented range for the buffer queue
# The largest frame is 8K (7680x4320) yuv422p10le: 132,710,400 bytes; 256 MiB leaves room.
MAX_PAYLOAD_SIZE = 256 << 20
MAX_METADATA_SIZE = 1 << 20
# capacity x (payload + metadata) is shared memory the proxy maps per connection.
MAX_QUEUE_BYTES = 4 << 30
MAX_CONN_CREATION_DELAY_MS = 60_000
MAX_DIMENSION = 16384
# Slow enough for a slide show; the exact rate is found with denominators up to 1001, so
# anything slower would round to 0 frames a second.
MIN_FPS, MAX_FPS = 0.01, 240.0
MAX_CHANNELS = 64          # ST 2110-30 level C: up to 64 channels (at 125 us)
MAX_URN = 256
# ST 2110-10's standard UDP size limit is 1460 octets; less the 12-byte RTP header.
ST2110_MAX_AUDIO_PAYLOAD = 1460 - 12

TRANSPORTS = ("st2110-20", "st2110-22", "st2110-30")
TRANSPORT_PIXEL_FORMATS = ("yuv422p10rfc4175",)
PIXEL_FORMATS = ("yuv422p10le", "v210", "yuv422p10rfc4175")
PACINGS = ("", "narrow", "wide", "linear")
RDMA_PROVIDERS = ("tcp", "verbs")
AUDIO_FORMATS = {"pcm_s24be": 3, "pcm_s16be": 2, "pcm_s8": 1}   # bytes per sample
SAMPLE_RATES = (44100, 48000, 96000)
# packet time -> samples per channel in one packet, per sample rate it is allowed with.
PACKET_TIMES: dict[str, dict[int, int]] = {
    **{name: {48000: n, 96000: 2 * n} for name, n in
       (("1ms", 48), ("125us", 6), ("250us", 12), ("333us", 16), ("4ms", 192), ("80us", 4))},
    "1.09ms": {44100: 48}, "0.14ms": {44100: 6}, "0.09ms": {44100: 4},
}
_NTSC_BASES = (24, 30, 48, 60, 120, 240)   # frame rates that come as N*1000/1001 (29.97, 59.94...)


# -- frame and packet sizes ------------------------------------------------------------------------
def video_frame_size(pixel_format: str, width: int, height: int) -> int:
    """Bytes of one frame: ``yuv422p10le`` is 16-bit planar 4:2:2 (4 bytes a pixel), ``v210``
    packs 6 pixels in 16 bytes with each line padded to 128 bytes (48 pixels), and
    ``yuv422p10rfc4175`` is RFC 4175's 5-byte pixel group of 2 pixels."""
    if pixel_format == "yuv422p10le":
        return width * height * 4
    if pixel_format == "v210":
        return (width + 47) // 48 * 128 * height
    if pixel_format == "yuv422p10rfc4175":
        return width * height * 5 // 2
    raise ConfigError(f"payload.video.pixelFormat: must be one of {', '.join(PIXEL_FORMATS)}, got {pixel_format!r}")


def audio_packet_size(audio_format: str, channels: int, samples: int) -> int:
    """Bytes of one packet of ``samples`` per channel, interleaved."""
    return AUDIO_FORMATS[audio_format] * channels * samples


# -- the values ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class St2110Connection:
    """``connection.st2110``: an SMPTE ST 2110 stream. ``ip_addr`` is the destination (tx) or the
    multicast group or unicast source (rx); ``multicast_source_ip_addr`` filters an rx group's
    source ("" for none). ``transport_pixel_format`` is set for ST 2110-20 only."""

    transport: str = "st2110-20"
    ip_addr: str
    port: int
    multicast_source_ip_addr: str = ""
    pacing: str = ""
    payload_type: int = 112
    transport_pixel_format: str | None = None

    @property
    def is_multicast(self) -> bool:
        return ipaddress.IPv4Address(self.ip_addr).is_multicast


@dataclass(frozen=True, slots=True, kw_only=True)
class MultipointGroup:
    """``connection.multipointGroup``: the mesh's own fan-out group, named by ``urn``."""

    urn: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RdmaOptions:
    """``options.rdma``: the libfabric bridge between proxies."""

    provider: str = "tcp"
    num_endpoints: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoPayload:
    width: int = 640
    height: int = 640
    fps: float = 60.0
    pixel_format: str = "yuv422p10le"

    @property
    def frame_rate(self) -> Fraction:
        """The exact rate: 29.97 is 30000/1001, 59.94 is 60000/1001 (as MCM's FFmpeg plugin writes them)."""
        for base in _NTSC_BASES:
            exact = Fraction(base * 1000, 1001)
            if abs(self.fps - float(exact)) < 0.006:
                return exact
        return Fraction(self.fps).limit_denominator(1001)

    @property
    def frame_size(self) -> int:
        return video_frame_size(self.pixel_format, self.width, self.height)

    @property
    def frame_period_ns(self) -> int:
        return round(Fraction(10**9) / self.frame_rate)


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioPayload:
    channels: int = 2
    sample_rate: int = 48000
    format: str = "pcm_s24be"
    packet_time: str = "1ms"

    @property
    def samples_per_packet(self) -> int:
        return PACKET_TIMES[self.packet_time][self.sample_rate]

    @property
    def packet_size(self) -> int:
        return audio_packet_size(self.format, self.channels, self.samples_per_packet)

    @property
    def packet_time_ns(self) -> int:
        """The packet's real duration: ``333us`` at 48 kHz is 16 samples, 333,333 ns."""
        return round(Fraction(self.samples_per_packet * 10**9, self.sample_rate))


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobPayload:
    """``payload.blob``: opaque buffers of at most ``maxPayloadSize`` bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """The MCM client fields a connection file may carry; ``default_timeout`` is in seconds."""

    api_version: str = "v1"
    api_connection_string: str = ""
    default_timeout: float = 1.0
    max_media_connections: int = 32

    @property
    def proxy(self) -> tuple[str, int] | None:
        """``(host, port)`` from ``Server=HOST; Port=PORT``, or None when not given."""
        return parse_connection_string(self.api_connection_string, "apiConnectionString")

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"apiVersion": self.api_version}
        if self.api_connection_string:
            document["apiConnectionString"] = self.api_connection_string
        document["apiDefaultTimeoutMicroseconds"] = round(self.default_timeout * 1_000_000)
        document["maxMediaConnections"] = self.max_media_connections
        return document


Connection = St2110Connection | MultipointGroup
Payload = VideoPayload | AudioPayload | BlobPayload


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionConfig:
    """One parsed connection; ``max_payload_size`` 0 means "computed from the payload"."""

    direction: Direction
    connection: Connection
    payload: Payload
    buffer_queue_capacity: int = 16
    max_payload_size: int = 0
    max_metadata_size: int = 0
    conn_creation_delay: float = 0.0   # seconds before the first buffer (MCM: connCreationDelayMilliseconds)
    rdma: RdmaOptions | None = None
    client: ClientSettings | None = None

    @property
    def frame_size(self) -> int:
        """Bytes the payload implies for one buffer: a video frame, an audio packet, or for a blob
        ``maxPayloadSize``."""
        if isinstance(self.payload, VideoPayload):
            return self.payload.frame_size
        if isinstance(self.payload, AudioPayload):
            return self.payload.packet_size
        return self.max_payload_size

    @property
    def payload_size(self) -> int:
        """The size of each payload buffer: ``maxPayloadSize`` when given, else :attr:`frame_size`."""
        return self.max_payload_size or self.frame_size

    @property
    def frame_period_ns(self) -> int | None:
        """Nanoseconds between buffers: a frame period, a packet time, or None for blobs."""
        if isinstance(self.payload, VideoPayload):
            return self.payload.frame_period_ns
        if isinstance(self.payload, AudioPayload):
            return self.payload.packet_time_ns
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, in MCM's names and units; ``parse_connection(c.to_dict(),
        direction=c.direction) == c``."""
        document: dict[str, Any] = {
            "bufferQueueCapacity": self.buffer_queue_capacity, "maxPayloadSize": self.max_payload_size,
            "maxMetadataSize": self.max_metadata_size,
            "connCreationDelayMilliseconds": round(self.conn_creation_delay * 1000)}
        if self.client is not None:
            document.update(self.client.to_dict())
        document["connection"] = _connection_dict(self.connection)
        if self.rdma is not None:
            document["options"] = {"rdma": {"provider": self.rdma.provider, "numEndpoints": self.rdma.num_endpoints}}
        document["payload"] = _payload_dict(self.payload)
        return document


def _connection_dict(connection: Connection) -> dict[str, Any]:
    if isinstance(connection, MultipointGroup):
        return {"multipointGroup": {"urn": connection.urn}}
    st2110: dict[str, Any] = {"transport": connection.transport, "ipAddr": connection.ip_addr,
                              "port": connection.port}
    if connection.multicast_source_ip_addr:
        st2110["multicastSourceIpAddr"] = connection.multicast_source_ip_addr
    if connection.pacing:
        st2110["pacing"] = connection.pacing
    st2110["payloadType"] = connection.payload_type
    if connection.transport_pixel_format is not None:
        st2110["transportPixelFormat"] = connection.transport_pixel_format
    return {"st2110": st2110}


def _payload_dict(payload: Payload) -> dict[str, Any]:
    if isinstance(payload, VideoPayload):
        return {"video": {"width": payload.width, "height": payload.height, "fps": payload.fps,
                          "pixelFormat": payload.pixel_format}}
    if isinstance(payload, AudioPayload):
        return {"audio": {"channels": payload.channels, "sampleRate": payload.sample_rate,
                          "format": payload.format, "packetTime": payload.packet_time}}
    return {"blob": {}}


def show(value: object) -> str:
    """A short description of a JSON value for an error message (never the whole value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else text[:40] + "..."
    return "an array" if isinstance(value, list) else "an object"


def did_you_mean(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if not close:
        close = [name for name in allowed if name.lower() == key.lower()]
    return f" (did you mean {close[0]!r}?)" if close else f" (expected {', '.join(allowed)})"


_CONNECTION_STRING = re.compile(r"\s*Server\s*=\s*([^;\s]+)\s*;\s*Port\s*=\s*(\d{1,5})\s*;?\s*", re.IGNORECASE)


def parse_connection_string(text: str, where: str) -> tuple[str, int] | None:
    if not text:
        return None
    match = _CONNECTION_STRING.fullmatch(text)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise ConfigError(f"{where}: must be 'Server=HOST; Port=PORT', got {show(text)}")
    return match.group(1), int(match.group(2))
