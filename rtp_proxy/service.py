"""The proxy's DataPlane gRPC service and its registration with the control plane.

Errors: the servicer raises :class:`msm.sdk.errors.MsmError` leaves (``NotFound``,
``Refused``; ``PortRangeExhausted`` is a ``ResourceExhausted``, the native
engine's absence an ``Unavailable``) and answers each exactly once with
:func:`msm.runtime.grpcutil.abort`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias

import grpc

from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc
from msm.runtime.backoff import Backoff
from msm.runtime.grpcserver import GrpcServer
from msm.runtime.grpcutil import abort
from msm.runtime.metrics import MetricsServer
from msm.sdk.errors import MsmError, NotFound, Refused
from msm.security.authz import DATAPLANE_RULES, Authorizer
from msm.security.identity import Role
from msm.security.tls import TlsFiles, secure_channel, server_credentials

from .engine import EngineUnavailable
from .flows import LOCAL_CONTROL, Flow, FlowTable, Leg
from .metrics import proxy_registry
from .snapshot import FlowSnapshot, LegSnapshot
from .srtp import SrtpKey, SrtpKeyRefused, profiles

log = logging.getLogger(__name__)

# How often the legs that heard from their viewers are reported: well inside the
# shortest RTSP session timeout a stub announces (seconds), and one small message
# a second at most per proxy.
HEARD_INTERVAL = 1.0


def flow_stats(flow: Flow, node: str = "") -> pb.FlowStats:
    """The DataPlane ``FlowStats`` of ``flow``, from one :meth:`Flow.snapshot`."""
    stats = snapshot_stats(flow.snapshot(), node)
    stats.reports_out = True
    out = flow.out_info()
    if out is not None:
        stats.first_out.CopyFrom(pb.RtpPosition(seq=out.first_seq, rtptime=out.first_ts))
        stats.last_out.CopyFrom(pb.RtpPosition(seq=out.last_seq, rtptime=out.last_ts))
    return stats


def snapshot_stats(snap: FlowSnapshot, node: str = "") -> pb.FlowStats:
    host, port = snap.ingress
    return pb.FlowStats(
        flow_id=snap.flow_id,
        ingress=pb.Endpoint(host=host, rtp_port=port, rtcp_port=port + 1),
        packets_received=snap.packets_received,
        bytes_received=snap.bytes_received,
        packets_expected=snap.packets_expected,
        packets_lost=snap.packets_lost,
        jitter_ms=snap.jitter_ms,
        ssrc=snap.ssrc or 0,
        rtcp_received=snap.rtcp_received,
        dropped_invalid=snap.dropped_invalid,
        dropped_from_viewers=snap.dropped_from_viewers,
        source_changes=snap.source_changes,
        bitrate_bps=snap.bitrate_bps,
        reordered=snap.reordered,
        duplicates=snap.duplicates,
        fraction_lost=snap.fraction_lost,
        rtcp_errors=snap.rtcp_errors,
        rtcp_bye_dropped=snap.rtcp_bye_dropped,
        dropped_backlog=snap.dropped_backlog,
        dropped_wrong_source=snap.dropped_wrong_source,
        dropped_wrong_ssrc=snap.dropped_wrong_ssrc,
        node=node,
        labels=snap.labels,
        clock_rate=snap.clock_rate,
        packets_forwarded=snap.packets_forwarded,
        srtp=snap.srtp,
        srtp_errors=snap.srtp_errors,
        legs=[_leg_stats(snap.flow_id, leg) for leg in snap.legs],
    )


def _leg_stats(flow_id: str, leg: LegSnapshot) -> pb.LegStats:
    return pb.LegStats(
        leg_id=leg.leg_id,
        flow_id=flow_id,
        destination=pb.Endpoint(host=leg.rtp_addr[0], rtp_port=leg.rtp_addr[1], rtcp_port=leg.rtcp_addr[1]),
        enabled=leg.enabled,
        packets_sent=leg.packets_sent,
        bytes_sent=leg.bytes_sent,
        rtcp_sent=leg.rtcp_sent,
        send_errors=leg.send_errors,
        rtcp_received=leg.rtcp_received,
        has_report=leg.has_report,
        viewer_fraction_lost=leg.viewer_fraction_lost,
        viewer_packets_lost=leg.viewer_packets_lost,
        viewer_jitter_ms=leg.viewer_jitter_ms,
        rtt_ms=leg.rtt_ms,
        dropped_backlog=leg.dropped_backlog,
        labels=leg.labels,
        srtp=leg.srtp,
        mtu_exceeded=leg.mtu_exceeded,
        path_mtu=leg.path_mtu,
    )


def check_listen(listen: pb.Endpoint, media_host: str) -> None:
    """``Refused`` unless a flow may listen there: an IPv4 multicast group (outside the link-local
    control block) or the media host itself, on a port pair in 1024-65535."""
    try:
        ip = ipaddress.IPv4Address(listen.host)
    except ValueError:
        raise Refused(f"listen address must be an IPv4 address, not {listen.host[:64]!r}") from None
    if not (ip.is_multicast and ip not in LOCAL_CONTROL) and listen.host != media_host:
        raise Refused(f"a flow listens on a multicast group or the media host {media_host}, not {ip}")
    if not 1024 <= listen.rtp_port < 65535:
        raise Refused(f"listen port {listen.rtp_port} is outside 1024-65534")


def srtp_key(params: pb.SrtpParams) -> SrtpKey:
    """The key in ``params`` (``SrtpKeyRefused``, a ``Refused``, for a profile or lengths we cannot use)."""
    return SrtpKey(master_key=params.master_key, master_salt=params.master_salt, epoch=params.epoch,
                   profile=params.profile)


def srtp_profiles(table: FlowTable) -> tuple[str, ...]:
    """The SRTP profiles this proxy can do, best first (its hello tells the control plane):
    both with the Python engine; with the native one, GCM only if its libsrtp does it."""
    if table.engine != "native":
        return profiles()
    try:
        features = table.engine_features
    except EngineUnavailable:
        return ()
    return profiles(features) if "srtp" in features else ()


def check_profile(table: FlowTable, key: SrtpKey | None) -> None:
    """``SrtpKeyRefused`` for a key whose profile this proxy's engine cannot do."""
    if key is not None and key.profile not in (can := srtp_profiles(table)):
        raise SrtpKeyRefused(f"SRTP profile {key.profile} refused: this proxy's {table.engine} engine does "
                             f"{', '.join(can) or 'no SRTP'}")


Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class DataPlaneService(pb_grpc.DataPlaneServicer):
    """gRPC front of a :class:`FlowTable`. Errors are :class:`MsmError` answered by ``grpcutil.abort``."""

    def __init__(self, table: FlowTable, node: str) -> None:
        self.table = table
        self.node = node

    def _flow(self, flow_id: str) -> Flow:
        flow = self.table.flows.get(flow_id)
        if flow is None:
            raise NotFound(f"no flow {flow_id!r}")
        return flow

    async def AddFlow(self, request: pb.AddFlowRequest, context: Context) -> pb.AddFlowReply:
        try:
            if not request.flow_id:
                raise Refused("flow_id is required")
            if request.bind_host not in ("", self.table.host, self.table.alt_host):
                # The proxy serves its media address only (of either IP family): a caller must
                # not open ports on other interfaces (or all of them) of a host-network pod.
                raise Refused(f"bind_host must be the media host {self.table.host} (or empty)")
            known = request.flow_id in self.table.flows
            key = srtp_key(request.srtp) if request.HasField("srtp") else None
            if key is not None:
                self.table.check_srtp()
                check_profile(self.table, key)
            listen = None
            if request.HasField("listen"):
                check_listen(request.listen, self.table.host)
                listen = (request.listen.host, request.listen.rtp_port, request.source.host if request.ssm else "")
            try:
                flow = await self.table.add_flow(
                    request.flow_id, clock_rate=request.clock_rate, splice=request.splice,
                    labels=dict(request.labels), bind_host=request.bind_host, srtp=key, listen=listen)
            except OSError as exc:
                raise Refused(f"cannot bind: {exc}") from exc
            if request.HasField("source") and request.source.host:
                try:
                    await self._set_source(flow.flow_id, request.source)
                except MsmError:
                    if not known:
                        self.table.remove_flow(flow.flow_id)
                    raise
        except MsmError as exc:
            await abort(context, exc)
        host, port = flow.ingress
        return pb.AddFlowReply(ingress=pb.Endpoint(host=host, rtp_port=port, rtcp_port=port + 1))

    async def _set_source(self, flow_id: str, source: pb.SourceFilter) -> None:
        await self.table.set_source(flow_id, source.host, source.rtp_port, source.rtcp_port)

    async def SetFlowSource(self, request: pb.SetFlowSourceRequest, context: Context) -> pb.Empty:
        try:
            await self._set_source(request.flow_id, request.source)
        except MsmError as exc:
            await abort(context, exc)
        return pb.Empty()

    async def RemoveFlow(self, request: pb.RemoveFlowRequest, context: Context) -> pb.Empty:
        self.table.remove_flow(request.flow_id)  # idempotent
        return pb.Empty()

    async def AddLeg(self, request: pb.AddLegRequest, context: Context) -> pb.Empty:
        dest = request.destination
        try:
            if not dest.host or not 0 < dest.rtp_port < 65536 or not 0 < dest.rtcp_port < 65536:
                raise Refused("destination host and ports are required")
            flow = self._flow(request.flow_id)
            # Never towards this proxy itself (a loop) or a reflector's target.
            multicast = request.multicast_ttl > 0
            if request.multicast_ttl > 255:
                raise Refused(f"multicast TTL {request.multicast_ttl} is over 255")
            self.table.check_destination(dest.host, dest.rtp_port, dest.rtcp_port, multicast=multicast)
            flow.check_family(dest.host)
            key = srtp_key(request.srtp) if request.HasField("srtp") else None
            if key is not None:
                self.table.check_srtp()
                check_profile(self.table, key)
        except MsmError as exc:
            if isinstance(exc, Refused):
                log.warning("flow %s: leg %s refused: %s", request.flow_id, request.leg_id, exc.reason)
            await abort(context, exc)
        if multicast:
            flow.set_multicast(request.multicast_ttl)
        flow.set_leg(Leg(request.leg_id, (dest.host, dest.rtp_port), (dest.host, dest.rtcp_port),
                         enabled=request.enabled, labels=dict(request.labels), srtp=key))
        log.info("flow %s: leg %s -> %s:%d-%d (%s%s%s)", flow.flow_id, request.leg_id, dest.host,
                 dest.rtp_port, dest.rtcp_port, "enabled" if request.enabled else "disabled",
                 f", multicast ttl {request.multicast_ttl}" if multicast else "",
                 f", SRTP {key.profile} epoch {key.epoch}" if key is not None else "")
        return pb.Empty()

    async def Rekey(self, request: pb.RekeyRequest, context: Context) -> pb.Empty:
        """A newer SRTP key for a flow's ingress (``leg_id`` empty) or one of its SRTP legs."""
        try:
            flow = self._flow(request.flow_id)
            key = srtp_key(request.srtp)
            check_profile(self.table, key)
            if not request.leg_id:
                if flow.srtp is None:
                    raise Refused(f"flow {request.flow_id!r} does not receive SRTP")
                flow.set_ingress_key(key)
            else:
                leg = flow.legs.get(request.leg_id)
                if leg is None:
                    raise NotFound(f"no leg {request.leg_id!r} on flow {request.flow_id!r}")
                if leg.srtp is None:
                    raise Refused(f"leg {request.leg_id!r} does not send SRTP")
                flow.rekey_leg(request.leg_id, key)
        except MsmError as exc:
            await abort(context, exc)
        log.info("flow %s: %s rekeyed to SRTP epoch %d", request.flow_id,
                 f"leg {request.leg_id}" if request.leg_id else "ingress", key.epoch)
        return pb.Empty()

    async def UpdateLeg(self, request: pb.UpdateLegRequest, context: Context) -> pb.Empty:
        flow = self.table.flows.get(request.flow_id)
        if flow is None or request.leg_id not in flow.legs:
            await abort(context, NotFound(f"no leg {request.leg_id!r} on flow {request.flow_id!r}"))
        flow.enable_leg(request.leg_id, request.enabled)
        return pb.Empty()

    async def RemoveLeg(self, request: pb.RemoveLegRequest, context: Context) -> pb.Empty:
        flow = self.table.flows.get(request.flow_id)
        if flow is not None:
            flow.remove_leg(request.leg_id)
        return pb.Empty()

    def snapshot(self) -> pb.ListFlowsReply:
        self.table.sample_rates()
        return pb.ListFlowsReply(node=self.node, flows=[flow_stats(f, self.node) for f in self.table.flows.values()])

    async def ListFlows(self, request: pb.ListFlowsRequest, context: Context) -> pb.ListFlowsReply:
        return self.snapshot()

    async def WatchStats(self, request: pb.WatchStatsRequest, context: Context) -> AsyncIterator[pb.ListFlowsReply]:
        interval = request.interval_seconds if request.interval_seconds > 0 else 1.0
        interval = min(max(interval, 0.1), 60.0)
        while True:
            yield self.snapshot()
            await asyncio.sleep(interval)


# The generated gRPC module has no type annotations; these say what it is.
_control_plane_stub: Callable[[grpc.aio.Channel], Any] = pb_grpc.ControlPlaneStub
_add_dataplane: Callable[[pb_grpc.DataPlaneServicer, grpc.aio.Server], None] = (
    pb_grpc.add_DataPlaneServicer_to_server)


class ProxyAgent:
    """Keeps this proxy registered with the control plane, reconnecting with back-off.

    Forwarding never depends on this link: if the control plane goes away the
    flows keep running, and the agent keeps trying to come back.
    """

    def __init__(self, control_address: str, *, node: str, dataplane_address: str, media_host: str,
                 heartbeat: float = 5.0, tls: TlsFiles | None = None,
                 srtp_profiles: tuple[str, ...] = (),
                 heard: Callable[[], list[tuple[str, str]]] | None = None,
                 heard_interval: float = HEARD_INTERVAL) -> None:
        self.control_address = control_address
        self.tls = tls   # None: plaintext, which RtpProxy's caller chose explicitly
        self.hello = pb.ProxyHello(node=node, dataplane_address=dataplane_address,
                                   media_host=media_host, proxy_id=uuid.uuid4().hex,
                                   srtp_profiles=list(srtp_profiles))
        self.heartbeat = heartbeat
        # Legs whose viewers sent RTCP (FlowTable.take_heard): reported every heard_interval.
        self.heard = heard
        self.heard_interval = heard_interval
        self.registered = asyncio.Event()

    async def run(self) -> None:
        backoff = Backoff(first=0.2, maximum=5.0)
        while True:
            try:
                # Re-opened on every attempt: rotated certificate files are presented here.
                async with secure_channel(self.control_address, self.tls, role=Role.CONTROL_PLANE,
                                          insecure_ok=self.tls is None) as channel:
                    stub = _control_plane_stub(channel)
                    call = stub.RegisterProxy(self._messages())
                    async for ack in call:
                        if not self.registered.is_set():
                            log.info("proxy registered with control plane %s: %s",
                                     self.control_address, ack.message)
                        self.registered.set()
                        backoff.reset()
            except grpc.aio.AioRpcError as exc:
                log.warning("control plane %s unreachable (%s); retrying in %.1fs",
                            self.control_address, exc.code().name, backoff.delay)
            self.registered.clear()
            await backoff.wait()

    async def _messages(self) -> AsyncIterator[pb.ProxyMessage]:
        """Hello, then a heartbeat every ``heartbeat`` seconds and, when viewers sent RTCP,
        the legs they sent it on every ``heard_interval`` (their RTSP sessions stay alive)."""
        yield pb.ProxyMessage(hello=self.hello)
        loop = asyncio.get_running_loop()
        seq = 0
        step = min(self.heartbeat, self.heard_interval) if self.heard is not None else self.heartbeat
        next_beat = loop.time() + self.heartbeat
        while True:
            await asyncio.sleep(step)
            if self.heard is not None and (heard := self.heard()):
                yield pb.ProxyMessage(legs_heard=pb.LegsHeard(
                    legs=[pb.LegKey(flow_id=flow, leg_id=leg) for flow, leg in heard]))
            if loop.time() >= next_beat:
                next_beat += self.heartbeat
                seq += 1
                yield pb.ProxyMessage(heartbeat=pb.Heartbeat(seq=seq))


class RtpProxy:
    """A whole proxy: flow table + DataPlane gRPC server + registration agent."""

    def __init__(self, *, node: str = "local", media_host: str = "127.0.0.1",
                 grpc_listen: str = "127.0.0.1:9001", control_address: str | None = None,
                 port_range: tuple[int, int] = (30000, 39999), metrics_listen: str | None = None,
                 advertise: str = "", engine: str = "auto", tls: TlsFiles | None = None,
                 services: Sequence[Callable[[grpc.aio.Server], None]] = (), media_host_alt: str | None = None) -> None:
        self.node = node
        self.services = list(services)   # more servicers on the DataPlane port (same TLS and rules)
        # Mutual TLS on the DataPlane server and the registration link; None is plaintext,
        # which only an explicit --insecure should ask for (anyone could program flows).
        self.tls = tls
        self.advertise = advertise
        self.metrics_listen = metrics_listen
        self.metrics: MetricsServer | None = None
        self.media_host = media_host
        self.grpc_listen = grpc_listen
        self.control_address = control_address
        # native or python; flows also bound on media_host_alt (the other IP family; None: derived)
        self.table = FlowTable(host=media_host, port_range=port_range, engine=engine, alt_host=media_host_alt)
        self.service = DataPlaneService(self.table, node)
        self.server: GrpcServer | None = None
        self.address = ""
        self.agent: ProxyAgent | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.tls is not None:
            credentials = server_credentials(self.tls)   # reloads rotated files, no restart
            rules = [Authorizer(self.tls.identity().trust_domain, DATAPLANE_RULES)]   # control plane only
        else:
            credentials, rules = None, []
            log.warning("rtp proxy %s: DataPlane gRPC without TLS: anyone who reaches %s can program it",
                        self.node, self.grpc_listen)
        self.server = GrpcServer(self.grpc_listen, self._register, what="DataPlane gRPC", credentials=credentials,
                                 interceptors=rules)
        await self.server.start()   # a busy or bad address: ListenError (Unavailable) / ConfigError
        self.address = self.server.address
        log.info("rtp proxy %s: DataPlane gRPC on %s, media on %s, ports %d-%d", self.node,
                 self.address, self.media_host, *self.table.port_range)
        self._tasks.append(asyncio.create_task(self._sample_rates(), name="proxy-rates"))
        if self.control_address:
            # A wildcard listen address is not dialable: advertise the media host instead.
            host = self.address.rsplit(":", 1)[0]
            dial = self.advertise or (self.address if host not in ("0.0.0.0", "[::]", "::")
                                      else f"{self.media_host}:{self.address.rsplit(':', 1)[1]}")
            self.agent = ProxyAgent(self.control_address, node=self.node,
                                    dataplane_address=dial, media_host=self.media_host, tls=self.tls,
                                    srtp_profiles=srtp_profiles(self.table), heard=self.table.take_heard)
            self._tasks.append(asyncio.create_task(self.agent.run(), name="proxy-agent"))

    def _register(self, server: grpc.aio.Server) -> None:
        _add_dataplane(self.service, server)
        for add in self.services:
            add(server)

    async def start_metrics(self) -> None:
        """Serve Prometheus /metrics on ``metrics_listen`` (separate, so a busy port is named)."""
        if self.metrics_listen:
            self.metrics = MetricsServer(proxy_registry(self.table, self.node), default_host="0.0.0.0")
            await self.metrics.start(self.metrics_listen)

    async def _sample_rates(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.table.tick()

    async def stop(self, grace: float = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.server is not None:
            await self.server.stop(grace)
        self.table.close()
