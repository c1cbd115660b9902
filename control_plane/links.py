"""The gRPC side of the control plane's seams: a connected stub, a registered proxy.

:class:`StubLink` is one stub's ``Connect`` stream: replies, commands and stream
states queue in its outbox; commands are matched to their results by id
(``msm.runtime.correlator``). :class:`ProxyLink` is one proxy's ``DataPlane``
client. Both are where gRPC failures become :class:`~msm.sdk.errors.MsmError`
s, once: a failed command result raises the error of the status the stub sent
(an upstream 404 stays a 404), a failed proxy call is ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import grpc

from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc
from msm.protos.status import error_of
from msm.runtime.correlator import Correlator
from msm.runtime.grpcutil import error_from_rpc
from msm.sdk.errors import ConfigError, Unavailable, UpstreamError
from msm.security.identity import Identity, Role
from msm.security.tls import TlsFiles, secure_channel

from .ports import LinkClosed, StubInfo

log = logging.getLogger("msm.control_plane.server")

__all__ = ["ProxyLink", "StubLink", "stub_info"]

# Replies and commands queued for one stub. A stub reads them as fast as gRPC
# delivers; a backlog this deep means the stub is wedged, and we drop the link
# rather than grow without bound.
STUB_OUTBOX = 1024
# Commands waiting for a stub's result: one per stream being opened, set up, played
# or closed through it at once; past this the stub is not answering.
STUB_PENDING = 256
COMMAND_TIMEOUT = 15.0   # an upstream DESCRIBE/SETUP through a stub (connect + reply)
PROXY_TIMEOUT = 5.0      # one DataPlane call on loopback or the node network
LIST_TIMEOUT = 2.0       # ListFlows for the operator view: a slow proxy is skipped
# Channels replaced after a certificate rotation, left to finish their calls (each ends
# within PROXY_TIMEOUT). One per rotation, and rotations are hours apart; past this many
# the oldest is closed at once rather than keeping channels without bound.
MAX_DRAINING = 4

T = TypeVar("T")


def stub_info(register: pb.StubRegister, identity: Identity | None = None) -> StubInfo:
    """What the planner knows of a stub. With ``identity`` (its verified certificate) the
    namespace and pod are the certificate's, never the stub's claim: they choose routes
    (the resolver's :class:`~.resolver.Asker`) and the stub next to a source."""
    namespace, pod = (identity.namespace, identity.name) if identity is not None else (register.namespace,
                                                                                        register.pod)
    return StubInfo(stub_id=register.stub_id, node=register.node, namespace=namespace,
                    pod=pod, can_open_upstream=register.can_open_upstream)


class StubLink:
    """One stub's control stream (a :class:`~.ports.StubPort`)."""

    def __init__(self, register: pb.StubRegister, identity: Identity | None = None) -> None:
        self.register = register
        self._info = stub_info(register, identity)
        self.stub_id = register.stub_id
        self.outbox: asyncio.Queue[pb.ControlMessage | None] = asyncio.Queue(STUB_OUTBOX)
        self.commands: Correlator[pb.CommandResult] = Correlator(
            limit=STUB_PENDING, timeout=COMMAND_TIMEOUT, peer=f"stub {self.stub_id}")
        self.closed = False

    @property
    def info(self) -> StubInfo:
        return self._info

    def send(self, message: pb.ControlMessage) -> None:
        if self.closed:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            log.error("stub %s is not reading its control stream; dropping it", self.stub_id)
            self.close()

    async def command(self, command: pb.ControlCommand) -> pb.CommandResult:
        """Send ``command`` (numbered here) and wait for its result; a failed result raises its error."""
        if self.closed:
            raise Unavailable(f"stub {self.stub_id} disconnected")

        def send(command_id: int) -> None:
            numbered = pb.ControlCommand()
            numbered.CopyFrom(command)
            numbered.command_id = command_id
            self.send(pb.ControlMessage(command=numbered))

        result = await self.commands.call(send)
        if result.status.code == 0:
            raise UpstreamError(f"stub {self.stub_id} answered a command without a status")
        if result.status.code >= 300:
            raise error_of(result.status)
        return result

    def resolve(self, result: pb.CommandResult) -> None:
        self.commands.resolve(result.command_id, result)

    async def open(self, stream_id: str, url: str, transport: str) -> tuple[str, list[pb.Track]]:
        result = await self.command(pb.ControlCommand(
            open=pb.OpenUpstream(stream_id=stream_id, url=url, transport=transport)))
        return result.sdp, list(result.tracks)

    async def setup(self, stream_id: str, track_indexes: list[int],
                    destinations: list[pb.Endpoint]) -> list[pb.SourceFilter]:
        result = await self.command(pb.ControlCommand(setup=pb.SetupUpstream(
            stream_id=stream_id, track_indexes=track_indexes, destinations=destinations)))
        return list(result.sources)

    async def play(self, stream_id: str) -> None:
        await self.command(pb.ControlCommand(play=pb.PlayUpstream(stream_id=stream_id)))

    async def close_upstream(self, stream_id: str) -> None:
        await self.command(pb.ControlCommand(close=pb.CloseUpstream(stream_id=stream_id)))

    def stream_state(self, stream_id: str, upstream_up: bool) -> None:
        self.send(pb.ControlMessage(stream_state=pb.StreamState(stream_id=stream_id, upstream_up=upstream_up)))

    def close(self) -> None:
        """End the link: every waiting command fails, and the writer wakes up to finish."""
        if self.closed:
            return
        self.closed = True
        self.commands.fail_all(Unavailable(f"stub {self.stub_id} disconnected"))
        # Wake the writer even when the queue is full.
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(None)


class ProxyLink:
    """One proxy's DataPlane API (a :class:`~.ports.DataPlane`).

    A channel's credentials are read once, when it is made, and it presents them at every
    reconnect: after the TLS files rotate, a long-lived channel would show the old
    certificate until it expires and then fail. So with ``tls`` each call first compares
    the files' stamp with the channel's and, when they changed, opens a new channel for
    this and later calls; the old one closes once its calls are done (``MAX_DRAINING``).
    """

    def __init__(self, hello: pb.ProxyHello, channel: grpc.aio.Channel, tls: TlsFiles | None = None) -> None:
        self.hello = hello
        self.tls = tls
        self._stamp = tls.stamp() if tls is not None else ()
        self._unusable: tuple[tuple[int, int, int], ...] = ()   # a stamp whose files could not be read
        self._draining: list[tuple[grpc.aio.Channel, asyncio.Task[None]]] = []   # bounded: MAX_DRAINING
        self._use(channel)
        self.closed = False
        self.reopened = 0   # channels replaced after the TLS files changed

    @classmethod
    def connect(cls, hello: pb.ProxyHello, tls: TlsFiles | None = None) -> ProxyLink:
        """A channel to the proxy's DataPlane; with ``tls`` the server must prove it is the
        proxy of node ``hello.node`` (its certificate's name), else plaintext (explicitly chosen)."""
        return cls(hello, cls._open(hello, tls), tls)

    @staticmethod
    def _open(hello: pb.ProxyHello, tls: TlsFiles | None) -> grpc.aio.Channel:
        return secure_channel(hello.dataplane_address, tls, role=Role.PROXY, name=hello.node,
                              insecure_ok=tls is None)

    def _use(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        # The generated gRPC module has no annotations.
        self.api = pb_grpc.DataPlaneStub(channel)  # type: ignore[no-untyped-call]

    def _refresh(self) -> None:
        """A new channel when the TLS files changed since this one was made."""
        if self.tls is None:
            return
        stamp = self.tls.stamp()
        if stamp in (self._stamp, self._unusable):
            return
        try:
            channel = self._open(self.hello, self.tls)
        except ConfigError as exc:   # mid-rotation or broken: keep the channel we have
            self._unusable = stamp
            log.warning("proxy on node %s: TLS files changed but cannot be used yet: %s", self.node, exc.reason)
            return
        old = self.channel
        self._stamp = stamp
        self._use(channel)
        self.reopened += 1
        log.info("proxy on node %s: new channel with the rotated TLS files", self.node)
        self._draining = [(c, t) for c, t in self._draining if not t.done()]
        if len(self._draining) >= MAX_DRAINING:   # the oldest: its calls are cancelled now
            self._drain(*self._draining.pop(0), grace=None)
        self._drain(old, None, grace=PROXY_TIMEOUT)

    def _drain(self, channel: grpc.aio.Channel, previous: asyncio.Task[None] | None, grace: float | None) -> None:
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(channel.close(grace), name=f"close channel to {self.node}")
        self._draining.append((channel, task))

    @property
    def node(self) -> str:
        return self.hello.node

    @property
    def proxy_id(self) -> str:
        return self.hello.proxy_id

    @property
    def srtp_profiles(self) -> tuple[str, ...]:
        """The SRTP profiles the proxy said it can do (empty: an older proxy, AES_CM_128_HMAC_SHA1_80 only)."""
        return tuple(self.hello.srtp_profiles)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        if self.closed:
            raise LinkClosed(f"the link to the proxy on node {self.node} is closed")
        self._refresh()
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            # Its own answer (a refused leg is INVALID_ARGUMENT), or Unavailable.
            raise error_from_rpc(exc, f"proxy on node {self.node}") from None
        except grpc.aio.UsageError as exc:
            raise LinkClosed(f"the link to the proxy on node {self.node} is broken: {exc}") from None
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"proxy on node {self.node}") from None

    async def add_flow(self, flow_id: str, clock_rate: int, labels: Mapping[str, str],
                       source: pb.SourceFilter | None = None, srtp: pb.SrtpParams | None = None,
                       bind_host: str = "", listen: pb.Endpoint | None = None,
                       ssm: bool = False) -> pb.Endpoint:
        # SRTP keys travel only on this channel (mutual TLS) and are never logged.
        request = pb.AddFlowRequest(flow_id=flow_id, clock_rate=clock_rate, splice=True, labels=labels,
                                    source=source, srtp=srtp, bind_host=bind_host, listen=listen, ssm=ssm)
        reply: pb.AddFlowReply = await self._call(lambda: self.api.AddFlow(request, timeout=PROXY_TIMEOUT))
        return reply.ingress

    async def set_flow_source(self, flow_id: str, source: pb.SourceFilter) -> None:
        request = pb.SetFlowSourceRequest(flow_id=flow_id, source=source)
        await self._call(lambda: self.api.SetFlowSource(request, timeout=PROXY_TIMEOUT))

    async def remove_flow(self, flow_id: str) -> None:
        request = pb.RemoveFlowRequest(flow_id=flow_id)
        await self._call(lambda: self.api.RemoveFlow(request, timeout=PROXY_TIMEOUT))

    async def add_leg(self, flow_id: str, leg_id: str, destination: pb.Endpoint, *, enabled: bool,
                      labels: Mapping[str, str], srtp: pb.SrtpParams | None = None,
                      multicast_ttl: int = 0) -> None:
        request = pb.AddLegRequest(flow_id=flow_id, leg_id=leg_id, destination=destination, enabled=enabled,
                                   labels=labels, srtp=srtp, multicast_ttl=multicast_ttl)
        await self._call(lambda: self.api.AddLeg(request, timeout=PROXY_TIMEOUT))

    async def rekey(self, flow_id: str, leg_id: str, srtp: pb.SrtpParams) -> None:
        request = pb.RekeyRequest(flow_id=flow_id, leg_id=leg_id, srtp=srtp)
        await self._call(lambda: self.api.Rekey(request, timeout=PROXY_TIMEOUT))

    async def update_leg(self, flow_id: str, leg_id: str, *, enabled: bool) -> None:
        request = pb.UpdateLegRequest(flow_id=flow_id, leg_id=leg_id, enabled=enabled)
        await self._call(lambda: self.api.UpdateLeg(request, timeout=PROXY_TIMEOUT))

    async def remove_leg(self, flow_id: str, leg_id: str) -> None:
        request = pb.RemoveLegRequest(flow_id=flow_id, leg_id=leg_id)
        await self._call(lambda: self.api.RemoveLeg(request, timeout=PROXY_TIMEOUT))

    async def list_flows(self) -> list[pb.FlowStats]:
        request = pb.ListFlowsRequest()
        reply: pb.ListFlowsReply = await self._call(lambda: self.api.ListFlows(request, timeout=LIST_TIMEOUT))
        return list(reply.flows)

    async def close(self) -> None:
        self.closed = True
        await self.channel.close()
        draining, self._draining = self._draining, []
        for channel, task in draining:   # their calls end now: the link is gone
            task.cancel()
            await channel.close()
