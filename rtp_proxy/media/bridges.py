"""ST 2110 bridges declared in configuration: streams on the network into groups, groups out to the network.

Video is ST 2110-20 (one frame a group frame); audio is ST 2110-30 / AES67 (L16, L24), whose group
frames are blocks of whole packets (:mod:`.aes67_bridge`): an audio ingress fills a lost packet with
silence and marks its block incomplete (``lost_packets``), an audio egress sends at its packet time.

A :class:`BridgeSpec` says what one bridge does; :class:`BridgeSet` runs them on a
:class:`~.plane.MediaNode`:

- **ingress**: an :class:`~.st2110_bridge.St2110Ingress` (unicast, or multicast with an
  optional source filter; from an SDP file or parameters) joins its group as the
  group's sender ``st2110-in:<name>`` and publishes every frame through the node.
  An incomplete frame is counted by reason (``lost_packets``, ``no_marker``,
  ``short_frame``) and handed on marked incomplete (``incomplete: pass``) or
  dropped (``incomplete: drop``);
- **egress**: an :class:`~.st2110_bridge.St2110Egress` joins its group as a receiver
  and sends each frame to its address, paced by the C :class:`~msm.ext.pacer.Pacer`
  (``pacing: wide`` by default; ``narrow``, ``linear``, or ``none`` for the egress's
  own even spread), and writes the SDP a receiver (ffmpeg, GStreamer) reads.

**The measured pacing class.** Each frame the pacer sends comes back as its
:class:`~msm.ext.pacer.FrameStats`: how many packets were late and by how much at
most. :class:`PacingMeter` turns that into ST 2110-21's two measures and hands them
to the analyser's :func:`~.st2110_timing.classify`: Cinst is at most the packets the
pacer lets leave together (its group, one more while catching up), VRX at most its
lead plus a group and at least the lead less the packets the latest one was late by.
That is the sender's view: it costs nothing per packet (a capture of our own
112k packets/s would cost as much CPU as the bridge), and it sees every frame, but
not what the network does after ``sendmmsg``; ``msm st2110 analyse`` on the
receiving side measures that (the e2e test checks the two agree).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from msm.ext import NativeUnavailable
from msm.sdk.errors import ConfigError, MsmError, ResourceExhausted
from msm.sdk.rfc4175 import packet_plan
from msm.sdk.st2110_sdp import AudioStream, VideoStream

from .aes67_bridge import Aes67Egress, Aes67Ingress, AudioBlock
from .groups import FrameInfo
from .pacing import Limits, default_lead, limits, schedule
from .plane import MediaNode
from .st2110_bridge import IngressFrame, St2110Egress, St2110Ingress
from .st2110_timing import CLASSES, classify

log = logging.getLogger(__name__)

__all__ = ["MAX_BRIDGES", "PACINGS", "BridgeSet", "BridgeSpec", "PacingMeter", "incomplete_reason", "paced_egress",
           "pacing_meter"]

#: Bridges per proxy: each holds a socket, a thread and up to three frames of packet
#: buffers (15 MB at 1080p 10-bit), and sends or receives 1.25 Gbit/s at 1080p30: 16 of
#: them fill a 20 Gbit/s NIC and more threads than a node has cores.
MAX_BRIDGES = 16
PACINGS = ("wide", "narrow", "linear", "none")
#: Frames the reported pacing class covers: the worst class of the last 10 s at 30 Hz
#: (a fixed-size window, so one bad second in the past does not mark the bridge forever).
CLASS_WINDOW = 300
#: How late a frame's first packet may be and the frame still go out in the slot after the last
#: one's (a share of the frame period); later, it goes in the first slot still ahead.
MAX_OVERDUE = Fraction(1, 4)
#: How far ahead of its arrival the first frame is scheduled (a share of the frame period): the
#: sender's jitter this egress absorbs, and the latency it adds (17 ms at 30 Hz).
MARGIN = Fraction(1, 2)
#: Frame periods without a frame that make the next one start over MARGIN ahead (a paused sender).
PAUSE = 3
#: The pacer's own lead time over a first packet's due time (ext/pacer.py SPIN_NS).
SPIN_NS = 20_000
#: The egress's MTU (RTP packet size), as GStreamer's rtpvrawpay mtu=1400.
MTU = 1400


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    """One bridge as configuration declares it."""

    name: str
    direction: str                  # "ingress" | "egress"
    group: str                      # the group's URN
    stream: VideoStream | AudioStream   # ingress: where it arrives (address, port, source); egress: where it goes
    incomplete: str = "pass"        # ingress: "pass" | "drop"
    pacing: str = "wide"            # video egress: one of PACINGS (audio: "none", sent at its packet time)
    sdp_out: Path | None = None     # egress: its SDP file (None: <media dir>/<name>.sdp; no media dir: none)
    sdp_in: Path | None = None      # the SDP file it was declared from, if any
    block_bytes: int = 0            # audio: the group frame's bytes, whole packets (0: one packet)
    nodes: tuple[str, ...] = ()     # the nodes whose proxy runs it (empty: every one)

    @property
    def transport(self) -> str:
        return "st2110-30" if isinstance(self.stream, AudioStream) else "st2110-20"


def incomplete_reason(reason: str) -> str:
    """A label for an ingress's incomplete-frame reason (its text carries counts)."""
    if "lost" in reason:
        return "lost_packets"
    if "marker" in reason:
        return "no_marker"
    return "short_frame"


class PacingMeter:
    """Wraps a :class:`~msm.ext.pacer.Pacer` as the egress's ``FramePacer`` and classifies every frame it
    sends (see the module's docstring for how)."""

    def __init__(self, pacer: Any, *, mode: str, packets: int, period_ns: Fraction, height: int, lead: int,
                 group: int) -> None:
        self.pacer, self.mode, self.lead, self.group = pacer, mode, lead, group
        self.limits: Limits = limits(period_ns, packets, height, linear=mode == "linear")
        self.trs_ns = float(schedule(period_ns, packets, mode, height, lead=lead).trs_ns)
        self.counts: Counter[str] = Counter({k: 0 for k in CLASSES})
        self.recent: deque[str] = deque(maxlen=CLASS_WINDOW)
        self.late_packets = 0
        self.max_late_ns = 0
        self.skipped_frames = 0
        self.send_errors = 0
        self.reason = ""
        self.next_frame: int | None = None
        self.max_overdue_ns = int(period_ns * MAX_OVERDUE)
        self.margin_ns = int(period_ns * MARGIN)
        self.pause_ns = int(period_ns * PAUSE)
        self.realigned = 0

    def send_frame(self, buf: Any, lengths: Any = None) -> object:
        """The egress's call: packets back to back and their lengths (C core), or a list of packets."""
        # Each frame in the slot after the last one's, even when its first packet is a little overdue
        # (the pacer catches up in a frame or two): letting the pacer skip a slot, as it would, leaves
        # the egress a frame behind a sender of the same rate for good, and a frame is lost later.
        # Further behind, the first slot still ahead. The first frame, and one after a pause (a stall,
        # a new stream), go MARGIN ahead of now, so a sender's jitter of up to MARGIN is absorbed by
        # the egress's queue.
        now = self.pacer.now()
        frame = self.next_frame
        overdue = now - self.pacer.packet_time(frame, 0) if frame is not None else 0
        if frame is None or overdue > self.max_overdue_ns:
            margin = self.margin_ns if frame is None or overdue > self.pause_ns else 0
            frame = self.pacer.frame_of(now + margin)
            while self.pacer.packet_time(frame, 0) < now + margin + SPIN_NS:
                frame += 1
            self.realigned += 1
        stats = self.pacer.send_frame(buf, lengths, frame=frame)
        self.next_frame = stats.frame + 1
        self.measure(stats.late_packets, stats.max_late_ns)
        self.skipped_frames += stats.skipped_frames
        self.send_errors += stats.send_errors
        return stats

    def measure(self, late_packets: int, max_late_ns: int) -> str:
        """One frame's class from its lateness (the pacer's FrameStats)."""
        cinst = self.group + (1 if late_packets else 0)
        behind = int(max_late_ns // self.trs_ns) if self.trs_ns else 0
        vrx_min = min(1, self.lead + 1 - behind)
        klass, reason = classify(cinst, vrx_min, self.lead + self.group, self.limits)
        self.counts[klass] += 1
        self.recent.append(klass)
        self.late_packets += late_packets
        self.max_late_ns = max(self.max_late_ns, max_late_ns)
        if klass != "narrow":
            self.reason = reason
        return klass

    @property
    def klass(self) -> str:
        """The worst class of the last :data:`CLASS_WINDOW` frames (``unknown`` before the first)."""
        recent = list(self.recent)   # a copy: the egress thread appends while a scrape reads
        return max(recent, key=CLASSES.index) if recent else "unknown"


def packets_per_frame(egress: St2110Egress) -> int:
    """The packets the egress cuts a frame into: the C core's equal packets (mode 3: 3,784 at 1080p 10-bit),
    else GPM in equal line slices (4,320), as its own ST 2110-21 pacer counts them. The schedule and the
    measured class (CMAX, VRX) follow the count."""
    slot = egress._slots[0] if egress.native and egress._slots else None   # st2110_bridge has no public count
    if slot is not None and getattr(slot, "mode", 0) == 3:
        return int(slot.max_packets)
    return len(packet_plan(egress.fmt, egress.mtu, egress.stream.packing, aligned=egress.aligned))


def pacing_meter(egress: St2110Egress, mode: str) -> PacingMeter:
    """A C pacer on the egress's socket, in ``mode``, with UDP GSO (measured: 1080p30 stays wide with it),
    wrapped to measure each frame's class (set it as the egress's ``pacer``)."""
    from msm.ext.pacer import GSO_GROUP, Pacer  # here: an unpaced egress does not need the C pacer

    stream, fmt = egress.stream, egress.fmt
    packets = packets_per_frame(egress)
    period = Fraction(1_000_000_000) / stream.rate
    group = GSO_GROUP[mode]
    lead = default_lead(mode, packets, fmt.height) - (group - 1 if mode != "wide" else 0)
    pacer = Pacer(egress.sock.fileno(), (stream.address, stream.port), period, packets, mode, height=fmt.height,
                  lead=lead, max_group=group, gso=True)
    return PacingMeter(pacer, mode=mode, packets=packets, period_ns=period, height=fmt.height, lead=lead,
                       group=group)


def paced_egress(stream: VideoStream, pacing: str) -> St2110Egress:
    """An egress of ``stream`` through a :func:`pacing_meter` in ``pacing`` (narrow, wide, linear); "" or none:
    each frame spread evenly over the frame period. ``NativeUnavailable`` when the C pacer is not built."""
    egress = St2110Egress(stream, mtu=MTU)
    try:
        if pacing and pacing != "none":
            egress.pacer = pacing_meter(egress, pacing)
    except BaseException:
        egress.close()
        raise
    return egress


class _Publisher:
    """What a video and an audio ingress share: each frame (block) into the group, counted."""

    io: Any
    frame_bytes: int

    def __init__(self, spec: BridgeSpec, media: MediaNode) -> None:
        self.spec, self.media = spec, media
        self.member = f"st2110-in:{spec.name}"
        self.seq = 0
        self.published = 0
        self.unpublished = 0
        self.incomplete: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def _publish(self, data: memoryview, timestamp: int, arrived_ns: int, key: str | None, reason: str | None) -> None:
        """``key``: the incomplete frame's counter (None: complete); ``reason``: what receivers are told."""
        if key is not None:
            self.incomplete[key] += 1
            if self.spec.incomplete == "drop":
                self.dropped[key] += 1
                return
        info = FrameInfo(self.seq, timestamp, b"", reason, arrived_ns)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        try:
            self.media.publish(self.spec.group, self.member, data, info)
        except MsmError:   # left the group meanwhile (stopping)
            self.unpublished += 1
            return
        self.published += 1

    def snapshot(self) -> dict[str, Any]:
        stats = self.io.stats()
        return {"frames": self.published, "bytes": self.published * self.frame_bytes,
                "packets": stats.get("packets", 0), "lost_packets": stats.get("lost", 0),
                "incomplete": dict(self.incomplete), "dropped": dict(self.dropped), "queue_depth": 0,
                "native": bool(getattr(self.io, "native", False)), "stats": stats}


class _Ingress(_Publisher):
    def __init__(self, spec: BridgeSpec, media: MediaNode) -> None:
        assert isinstance(spec.stream, VideoStream)
        super().__init__(spec, media)
        self.io = St2110Ingress(spec.stream, on_frame=self._frame, hand_on_incomplete=True)
        self.frame_bytes = self.io.fmt.frame_bytes

    def _frame(self, data: memoryview, frame: IngressFrame) -> None:
        reason = None if frame.complete else incomplete_reason(frame.reason)
        self._publish(data, frame.timestamp, frame.arrived_ns, reason, reason)


class _AudioIngress(_Publisher):
    """An AES67 stream into its group as blocks of ``spec.block_bytes``."""

    def __init__(self, spec: BridgeSpec, media: MediaNode) -> None:
        assert isinstance(spec.stream, AudioStream)
        super().__init__(spec, media)
        self.io = Aes67Ingress(spec.stream, on_block=self._block, block_bytes=spec.block_bytes)
        self.frame_bytes = self.io.block_bytes

    def _block(self, data: memoryview, block: AudioBlock) -> None:
        lost = block.lost
        self._publish(data, block.timestamp, block.arrived_ns, "lost_packets" if lost else None,
                      f"lost {lost} packets" if lost else None)


class _AudioEgress:
    """A group out as AES67, at its packet time, with its SDP written."""

    def __init__(self, spec: BridgeSpec, media_dir: Path | None) -> None:
        assert isinstance(spec.stream, AudioStream)
        self.spec = spec
        self.io = Aes67Egress(spec.stream)
        self.frame_bytes = spec.block_bytes or self.io.fmt.packet_bytes
        try:
            self.sdp_path = _write_sdp(self.io, spec, media_dir)
        except BaseException:
            self.io.close()
            raise

    def snapshot(self, media: MediaNode) -> dict[str, Any]:
        stats = self.io.stats()
        return {"frames": stats["blocks_sent"], "bytes": stats["packets_sent"] * self.io.fmt.packet_bytes,
                "packets": stats["packets_sent"],
                "dropped": {"egress_busy": stats["blocks_busy"], "wrong_size": stats["blocks_bad_size"]},
                "queue_depth": self.io.queued_bytes // self.frame_bytes, "sdp": str(self.sdp_path or ""),
                "native": False, "pacing_class": "unpaced", "stats": stats}


def _write_sdp(io: St2110Egress | Aes67Egress, spec: BridgeSpec, media_dir: Path | None) -> Path | None:
    """The egress's SDP file: ``writeSdp``, else <media dir>/<name>.sdp; without a media directory (a
    library user's BridgeSet), none."""
    path = spec.sdp_out or (media_dir / f"{spec.name}.sdp" if media_dir is not None else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_sdp(path)
    return path


class _Egress:
    def __init__(self, spec: BridgeSpec, media_dir: Path | None) -> None:
        assert isinstance(spec.stream, VideoStream)
        self.spec = spec
        self.io = St2110Egress(spec.stream, mtu=MTU)
        self.frame_bytes = self.io.fmt.frame_bytes
        self.meter: PacingMeter | None = None
        try:
            if spec.pacing != "none":
                self.meter = pacing_meter(self.io, spec.pacing)
                self.io.pacer = self.meter
            self.sdp_path = _write_sdp(self.io, spec, media_dir)
        except BaseException:
            self.io.close()
            raise

    def snapshot(self, media: MediaNode) -> dict[str, Any]:
        stats = self.io.stats()
        taken = 0
        with media.lock:
            group = media.groups.get(self.spec.group)
            receiver = group.receiver_stats.get(self.io.name) if group is not None else None
            if receiver is not None:
                taken = receiver.frames
        out: dict[str, Any] = {
            "frames": stats["frames_sent"], "bytes": stats["frames_sent"] * self.io.fmt.frame_bytes,
            "packets": self.io.counters["packets_sent"], "dropped": {"egress_busy": stats["frames_busy"]},
            "queue_depth": max(0, taken - stats["frames_sent"]), "sdp": str(self.sdp_path or ""),
            "native": self.io.native, "pacing_class": "unpaced", "stats": stats}
        if self.meter is not None:
            out.update(pacing_class=self.meter.klass, pacing_frames=dict(self.meter.counts),
                       pacing_reason=self.meter.reason, late_packets=self.meter.late_packets,
                       max_late_us=self.meter.max_late_ns / 1000.0, skipped_frames=self.meter.skipped_frames,
                       realigned=self.meter.realigned)
        return out


class BridgeSet:
    """The bridges of one proxy (at most ``max_bridges``), started from specs and stopped together."""

    def __init__(self, media: MediaNode, *, media_dir: Path | None = None, max_bridges: int = MAX_BRIDGES) -> None:
        self.media = media
        self.media_dir = media_dir
        self.max_bridges = max_bridges
        self.ingresses: dict[str, _Ingress | _AudioIngress] = {}
        self.egresses: dict[str, _Egress | _AudioEgress] = {}
        self.elsewhere: list[str] = []   # bridges of the config meant for other nodes (at most MAX_BRIDGES)

    def __len__(self) -> int:
        return len(self.ingresses) + len(self.egresses)

    async def start(self, specs: Sequence[BridgeSpec], groups: Sequence[str] = ()) -> None:
        """Declare ``groups`` and start every bridge meant for this node (its ``nodes``, or every node);
        on a failure the ones started are stopped again and the error (one line naming the bridge) raised."""
        with self.media.lock:
            for urn in groups:
                self.media.groups.ensure(urn)
        try:
            for spec in specs:
                if spec.nodes and self.media.node not in spec.nodes:
                    self.elsewhere.append(spec.name)
                    log.info("bridge %s: not for node %s (nodes: %s)", spec.name, self.media.node,
                             ", ".join(spec.nodes))
                    continue
                await self.add(spec)
        except BaseException:
            await self.stop()
            raise

    async def add(self, spec: BridgeSpec) -> None:
        if spec.name in self.ingresses or spec.name in self.egresses:
            raise ConfigError(f"bridge {spec.name!r}: a bridge of that name already runs")
        if len(self) >= self.max_bridges:
            raise ResourceExhausted(f"bridge {spec.name!r}: this proxy already runs {self.max_bridges} bridges")
        try:
            if spec.direction == "ingress":
                await self._add_ingress(spec)
            else:
                await self._add_egress(spec)
        except OSError as exc:
            where = f"{spec.stream.address}:{spec.stream.port}"
            raise ConfigError(f"bridge {spec.name!r}: cannot open {where}: {exc.strerror or exc}") from None
        except NativeUnavailable as exc:
            raise ConfigError(f"bridge {spec.name!r}: pacing {spec.pacing} needs the C core ({exc}); "
                              "pacing: none sends without it") from None
        except (ValueError, MsmError) as exc:
            raise ConfigError(f"bridge {spec.name!r}: {exc}") from None

    async def _add_ingress(self, spec: BridgeSpec) -> None:
        bridge = _AudioIngress(spec, self.media) if isinstance(spec.stream, AudioStream) else _Ingress(spec, self.media)
        try:
            await self.media.join_sender(spec.group, bridge.member, max_frame=bridge.frame_bytes)
        except BaseException:
            bridge.io.close()
            raise
        self.ingresses[spec.name] = bridge
        bridge.io.start()
        log.info("bridge %s: %s from %s:%d into group %s", spec.name, spec.transport, spec.stream.address,
                 spec.stream.port, spec.group)

    async def _add_egress(self, spec: BridgeSpec) -> None:
        bridge = (_AudioEgress(spec, self.media_dir) if isinstance(spec.stream, AudioStream)
                  else _Egress(spec, self.media_dir))
        try:
            await self.media.join_receiver(spec.group, bridge.io, max_frame=bridge.frame_bytes)
        except BaseException:
            bridge.io.close()
            raise
        self.egresses[spec.name] = bridge
        log.info("bridge %s: group %s out as %s to %s:%d (pacing %s), SDP %s", spec.name, spec.group,
                 spec.transport, spec.stream.address, spec.stream.port, spec.pacing, bridge.sdp_path)

    async def stop(self) -> None:
        """Leave every group and close every bridge (idempotent)."""
        for name, ingress in list(self.ingresses.items()):
            ingress.io.close()
            with contextlib.suppress(MsmError):
                await self.media.leave(ingress.spec.group, ingress.member)
            del self.ingresses[name]
        for name, egress in list(self.egresses.items()):
            with contextlib.suppress(MsmError):
                await self.media.leave(egress.spec.group, egress.io.name)
            egress.io.close()
            del self.egresses[name]

    def sdp_paths(self) -> dict[str, Path]:
        return {name: egress.sdp_path for name, egress in self.egresses.items() if egress.sdp_path is not None}

    def snapshot(self) -> list[dict[str, Any]]:
        """Per bridge: what it is and its counters (for metrics and ``msm streams``)."""
        # Copies of the tables: a scrape may come while start or stop changes them.
        out = [{**_describe(i.spec), **i.snapshot()} for i in list(self.ingresses.values())]
        out += [{**_describe(e.spec), **e.snapshot(self.media)} for e in list(self.egresses.values())]
        return out


def _describe(spec: BridgeSpec) -> dict[str, Any]:
    stream = spec.stream
    out = {"name": spec.name, "direction": spec.direction, "group": spec.group, "transport": spec.transport,
           "address": stream.address, "port": stream.port, "source": stream.source or "", "pacing": spec.pacing,
           "width": 0, "height": 0}
    if isinstance(stream, VideoStream):
        out.update(width=stream.fmt.width, height=stream.fmt.height)
    else:
        out.update(encoding=stream.encoding, rate=stream.rate, channels=stream.channels, ptime_us=stream.ptime_us)
    return out
