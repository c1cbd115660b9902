"""The control plane: resolves streams, pools upstream sessions, programs proxies.

One upstream session per stream is shared by every viewer: the first DESCRIBE
opens it (through the stub next to the source), the first SETUP creates the
proxy flows and SETUPs the upstream towards them, each viewer's SETUP adds a
*disabled* leg, PLAY enables it, PAUSE disables only that viewer's legs, and the
last TEARDOWN closes the upstream after a linger.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc

from .resolver import Asker, NotFound, Resolver, Route

log = logging.getLogger(__name__)

# Replies and commands queued for one stub. A stub reads them as fast as gRPC
# delivers; a backlog this deep means the stub is wedged, and we drop the link
# rather than grow without bound.
STUB_OUTBOX = 1024
COMMAND_TIMEOUT = 15.0   # an upstream DESCRIBE/SETUP through a stub (connect + reply)
PROXY_TIMEOUT = 5.0      # one DataPlane call on loopback or the node network


class Reject(Exception):
    """A request fails with an RTSP status the stub passes on to the viewer."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StubLink:
    def __init__(self, register: pb.StubRegister) -> None:
        self.info = register
        self.stub_id = register.stub_id
        self.outbox: asyncio.Queue[pb.ControlMessage | None] = asyncio.Queue(STUB_OUTBOX)
        self.pending: dict[int, asyncio.Future[pb.CommandResult]] = {}
        self._ids = itertools.count(1)
        self.closed = False

    def send(self, message: pb.ControlMessage) -> None:
        if self.closed:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            log.error("stub %s is not reading its control stream; dropping it", self.stub_id)
            self.close()

    async def command(self, timeout: float = COMMAND_TIMEOUT, **kind: object) -> pb.CommandResult:
        command_id = next(self._ids)
        future: asyncio.Future[pb.CommandResult] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        self.send(pb.ControlMessage(command=pb.ControlCommand(command_id=command_id, **kind)))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Reject(504, f"stub {self.stub_id} did not answer in {timeout:.0f}s") from None
        finally:
            self.pending.pop(command_id, None)

    def resolve(self, result: pb.CommandResult) -> None:
        future = self.pending.get(result.command_id)
        if future is not None and not future.done():
            future.set_result(result)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Reject(503, f"stub {self.stub_id} disconnected"))
        # Wake the writer even when the queue is full.
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(None)


@dataclass
class ProxyLink:
    hello: pb.ProxyHello
    channel: grpc.aio.Channel
    api: pb_grpc.DataPlaneStub

    @property
    def node(self) -> str:
        return self.hello.node


@dataclass
class FlowRef:
    proxy: ProxyLink
    flow_id: str
    ingress: pb.Endpoint


@dataclass
class Viewer:
    session_id: str
    stub_id: str
    host: str
    node: str = ""
    legs: dict[int, str] = field(default_factory=dict)   # track index -> leg id
    flows: dict[int, FlowRef] = field(default_factory=dict)   # track index -> flow feeding it
    playing: bool = False


@dataclass
class Stream:
    route: Route
    sdp: str | None = None
    tracks: list[pb.Track] = field(default_factory=list)
    upstream_stub: str | None = None
    flows: dict[int, FlowRef] = field(default_factory=dict)          # on the source's node
    # Per other node: one flow per track there, fed by ONE leg from the source
    # flow; that node's proxy fans out to its own viewers.
    relays: dict[tuple[str, int], FlowRef] = field(default_factory=dict)
    viewers: dict[str, Viewer] = field(default_factory=dict)
    playing: bool = False
    upstream_state: str = "idle"
    opened: int = 0
    generation: int = 0
    linger: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def stream_id(self) -> str:
        return self.route.name


class ControlPlane(pb_grpc.ControlPlaneServicer):
    def __init__(self, resolver: Resolver, *, linger: float = 5.0) -> None:
        self.resolver = resolver
        self.linger = linger
        self.stubs: dict[str, StubLink] = {}
        self.proxies: dict[str, ProxyLink] = {}
        self.streams: dict[str, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- supervision -----------------------------------------------------------
    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for proxy in self.proxies.values():
            await proxy.channel.close()

    # -- stubs -------------------------------------------------------------------
    async def Connect(self, request_iterator: AsyncIterator[pb.StubMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ControlMessage]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "register" or not first.register.stub_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be register")
            return
        link = StubLink(first.register)
        old = self.stubs.get(link.stub_id)
        if old is not None:
            old.close()
        self.stubs[link.stub_id] = link
        log.info("stub %s connected (node %s, pod %s/%s)", link.stub_id, link.info.node,
                 link.info.namespace, link.info.pod)
        reader = self._spawn(self._read_stub(link, request_iterator), f"stub-{link.stub_id}")
        try:
            while True:
                message = await link.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            link.close()
            if self.stubs.get(link.stub_id) is link:
                del self.stubs[link.stub_id]
                log.info("stub %s disconnected", link.stub_id)
                self._spawn(self._stub_gone(link.stub_id), f"stub-gone-{link.stub_id}")

    async def _read_stub(self, link: StubLink, messages: AsyncIterator[pb.StubMessage]) -> None:
        try:
            async for message in messages:
                kind = message.WhichOneof("kind")
                if kind == "request":
                    self._spawn(self._serve(link, message.request), f"req-{message.request.request_id}")
                elif kind == "result":
                    link.resolve(message.result)
                elif kind == "event":
                    self._upstream_event(message.event)
                elif kind == "viewer_gone":
                    self._spawn(self._viewer_gone(message.viewer_gone), "viewer-gone")
        except grpc.aio.AioRpcError:
            pass
        finally:
            link.close()

    async def _serve(self, link: StubLink, request: pb.StubRequest) -> None:
        kind = request.WhichOneof("kind")
        handlers: dict[str, Callable[..., Awaitable[pb.ControlReply]]] = {
            "describe": self._describe, "setup": self._setup, "play": self._play,
            "pause": self._pause, "teardown": self._teardown,
        }
        try:
            if kind not in handlers:
                raise Reject(501, f"unknown request {kind}")
            reply = await handlers[kind](link, getattr(request, kind))
            reply.status.code = reply.status.code or 200
        except Reject as exc:
            reply = pb.ControlReply(status=pb.Status(code=exc.code, reason=exc.reason))
        except NotFound as exc:
            reply = pb.ControlReply(status=pb.Status(code=404, reason=str(exc)))
        except grpc.aio.AioRpcError as exc:
            log.warning("request %s: proxy call failed: %s", kind, exc.details())
            reply = pb.ControlReply(status=pb.Status(code=503, reason=f"proxy: {exc.details()}"))
        except Exception:   # a bug of ours: the viewer gets a 500 at once, not a time-out
            log.exception("request %s failed", kind)
            reply = pb.ControlReply(status=pb.Status(code=500, reason="internal error"))
        reply.request_id = request.request_id
        link.send(pb.ControlMessage(reply=reply))

    # -- the stream graph ----------------------------------------------------------
    def _stream(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise Reject(404, f"unknown stream {stream_id!r}")
        return stream

    def _upstream_link(self, stream: Stream) -> StubLink:
        candidates = [s for s in self.stubs.values() if s.info.can_open_upstream]
        route = stream.route
        if route.pod:
            # The stub in the source's own pod reaches it locally (ARCHITECTURE: step 2).
            candidates = [s for s in candidates
                          if (s.info.pod, s.info.namespace) == (route.pod, route.namespace)] or candidates
        if route.node:
            candidates = [s for s in candidates if s.info.node == route.node] or candidates
        if not candidates:
            raise Reject(503, "no stub can reach the source")
        return candidates[0]

    def _proxy_for(self, node: str) -> ProxyLink:
        proxy = self.proxies.get(node) or next(iter(self.proxies.values()), None)
        if proxy is None:
            raise Reject(503, "no RTP proxy registered")
        return proxy

    async def _open(self, stream: Stream) -> None:
        link = self._upstream_link(stream)
        stream.upstream_state = "connecting"
        result = await link.command(open=pb.OpenUpstream(
            stream_id=stream.stream_id, url=stream.route.url, transport=stream.route.transport))
        if result.status.code != 200:
            stream.upstream_state = "down"
            raise Reject(result.status.code or 502, result.status.reason or "upstream failed")
        stream.sdp = result.sdp
        stream.tracks = list(result.tracks)
        stream.upstream_stub = link.stub_id
        stream.opened += 1
        stream.generation += 1
        stream.upstream_state = "described"
        log.info("stream %s: upstream %s opened (%d tracks)", stream.stream_id,
                 stream.route.url, len(stream.tracks))

    async def _setup_upstream(self, stream: Stream) -> None:
        link = self.stubs.get(stream.upstream_stub or "")
        if link is None:
            raise Reject(503, "the stub holding the upstream session is gone")
        proxy = self._proxy_for(link.info.node)
        flows: dict[int, FlowRef] = {}
        try:
            for track in stream.tracks:
                flow_id = f"{stream.stream_id}/{track.index}/{stream.generation}"
                reply = await proxy.api.AddFlow(pb.AddFlowRequest(
                    flow_id=flow_id, clock_rate=track.clock_rate, splice=True,
                    labels={"stream": stream.stream_id, "track": str(track.index), "kind": track.kind},
                ), timeout=PROXY_TIMEOUT)
                flows[track.index] = FlowRef(proxy, flow_id, reply.ingress)
            result = await link.command(setup=pb.SetupUpstream(
                stream_id=stream.stream_id, track_indexes=list(flows),
                destinations=[f.ingress for f in flows.values()]))
            if result.status.code != 200:
                raise Reject(result.status.code or 502, result.status.reason or "upstream SETUP failed")
        except BaseException:
            for ref in flows.values():
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await ref.proxy.api.RemoveFlow(pb.RemoveFlowRequest(flow_id=ref.flow_id),
                                                   timeout=PROXY_TIMEOUT)
            raise
        stream.flows = flows
        stream.upstream_state = "ready"

    def _schedule_linger(self, stream: Stream) -> None:
        self._cancel_linger(stream)
        stream.linger = self._spawn(self._linger(stream), f"linger-{stream.stream_id}")

    def _cancel_linger(self, stream: Stream) -> None:
        if stream.linger is not None and stream.linger is not asyncio.current_task():
            stream.linger.cancel()
        stream.linger = None

    async def _linger(self, stream: Stream) -> None:
        await asyncio.sleep(self.linger)
        async with stream.lock:
            if stream.viewers or stream.sdp is None:
                return
            stream.linger = None
            await self._close_stream(stream, "no viewers")

    async def _close_stream(self, stream: Stream, why: str) -> None:
        log.info("stream %s: closing upstream (%s)", stream.stream_id, why)
        link = self.stubs.get(stream.upstream_stub or "")
        if link is not None:
            with contextlib.suppress(Reject):
                await link.command(close=pb.CloseUpstream(stream_id=stream.stream_id))
        for ref in [*stream.relays.values(), *stream.flows.values()]:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await ref.proxy.api.RemoveFlow(pb.RemoveFlowRequest(flow_id=ref.flow_id),
                                               timeout=PROXY_TIMEOUT)
        stream.relays = {}
        stream.sdp = None
        stream.tracks = []
        stream.flows = {}
        stream.playing = False
        stream.upstream_stub = None
        stream.upstream_state = "closed"

    # -- requests --------------------------------------------------------------------
    async def _describe(self, link: StubLink, request: pb.DescribeRequest) -> pb.ControlReply:
        route = await self.resolver.resolve(
            request.url, Asker(namespace=link.info.namespace, original_dst=request.original_dst))
        stream = self.streams.get(route.name)
        if stream is None or stream.route != route:
            stream = self.streams[route.name] = Stream(route)
        async with stream.lock:
            if stream.sdp is None:
                await self._open(stream)
            if not stream.viewers:
                # A DESCRIBE that is never followed by SETUP must not pin the upstream.
                self._schedule_linger(stream)
            return pb.ControlReply(describe=pb.DescribeReply(
                stream_id=stream.stream_id, sdp=stream.sdp or "", tracks=stream.tracks))

    async def _setup(self, link: StubLink, request: pb.SetupRequest) -> pb.ControlReply:
        stream = self._stream(request.stream_id)
        async with stream.lock:
            if stream.sdp is None:
                await self._open(stream)
            if request.track_index >= len(stream.tracks):
                raise Reject(404, f"stream {stream.stream_id} has no track {request.track_index}")
            self._cancel_linger(stream)
            if not stream.flows:
                await self._setup_upstream(stream)
            viewer = stream.viewers.get(request.session_id)
            if viewer is None:
                viewer = stream.viewers[request.session_id] = Viewer(
                    request.session_id, link.stub_id, request.viewer_host, node=link.info.node)
            ref = await self._flow_for(stream, request.track_index, viewer.node)
            leg_id = f"{request.session_id}/{request.track_index}"
            await ref.proxy.api.AddLeg(pb.AddLegRequest(
                flow_id=ref.flow_id, leg_id=leg_id, destination=request.destination,
                enabled=viewer.playing,
                labels={"session": request.session_id, "viewer": request.viewer_host,
                        "namespace": link.info.namespace, "pod": link.info.pod},
            ), timeout=PROXY_TIMEOUT)
            viewer.legs[request.track_index] = leg_id
            viewer.flows[request.track_index] = ref
            log.info("stream %s: viewer %s (%s) set up track %d -> %s:%d", stream.stream_id,
                     request.session_id, request.viewer_host, request.track_index,
                     request.destination.host, request.destination.rtp_port)
            return pb.ControlReply(setup=pb.SetupReply(
                stream_id=stream.stream_id, track_index=request.track_index, source=ref.ingress))

    async def _flow_for(self, stream: Stream, index: int, node: str) -> FlowRef:
        """The flow a viewer on ``node`` is fed from: the source flow on the source's
        node, else a relay flow on the viewer's node (created once per node and track)."""
        source = stream.flows[index]
        proxy = self.proxies.get(node)
        if proxy is None or proxy is source.proxy:
            return source
        relay = stream.relays.get((node, index))
        if relay is not None:
            return relay
        track = stream.tracks[index]
        flow_id = f"{stream.stream_id}/{index}/{stream.generation}@{node}"
        reply = await proxy.api.AddFlow(pb.AddFlowRequest(
            flow_id=flow_id, clock_rate=track.clock_rate, splice=True,
            labels={"stream": stream.stream_id, "track": str(index), "kind": track.kind, "hop": "relay"},
        ), timeout=PROXY_TIMEOUT)
        relay = FlowRef(proxy, flow_id, reply.ingress)
        try:
            await source.proxy.api.AddLeg(pb.AddLegRequest(
                flow_id=source.flow_id, leg_id=f"relay@{node}", destination=reply.ingress, enabled=True,
                labels={"session": f"relay@{node}", "viewer": f"proxy {node}"},
            ), timeout=PROXY_TIMEOUT)
        except BaseException:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await proxy.api.RemoveFlow(pb.RemoveFlowRequest(flow_id=flow_id), timeout=PROXY_TIMEOUT)
            raise
        stream.relays[(node, index)] = relay
        log.info("stream %s: track %d relayed %s -> %s", stream.stream_id, index, source.proxy.node, node)
        return relay

    async def _drop_unused_relays(self, stream: Stream) -> None:
        used = {(v.node, i) for v in stream.viewers.values() for i in v.legs}
        for (node, index), relay in list(stream.relays.items()):
            if (node, index) in used:
                continue
            del stream.relays[(node, index)]
            source = stream.flows.get(index)
            with contextlib.suppress(grpc.aio.AioRpcError):
                if source is not None:
                    await source.proxy.api.RemoveLeg(pb.RemoveLegRequest(
                        flow_id=source.flow_id, leg_id=f"relay@{node}"), timeout=PROXY_TIMEOUT)
                await relay.proxy.api.RemoveFlow(pb.RemoveFlowRequest(flow_id=relay.flow_id),
                                                 timeout=PROXY_TIMEOUT)

    def _viewer(self, stream: Stream, session_id: str) -> Viewer:
        viewer = stream.viewers.get(session_id)
        if viewer is None:
            raise Reject(454, f"session {session_id} is not set up on {stream.stream_id}")
        return viewer

    async def _enable(self, stream: Stream, viewer: Viewer, tracks: list[int], enabled: bool) -> None:
        for index, leg_id in viewer.legs.items():
            if tracks and index not in tracks:
                continue
            ref = viewer.flows.get(index)
            if ref is not None:
                await ref.proxy.api.UpdateLeg(pb.UpdateLegRequest(
                    flow_id=ref.flow_id, leg_id=leg_id, enabled=enabled), timeout=PROXY_TIMEOUT)

    async def _play(self, link: StubLink, request: pb.SessionRequest) -> pb.ControlReply:
        stream = self._stream(request.stream_id)
        async with stream.lock:
            viewer = self._viewer(stream, request.session_id)
            if not stream.flows:
                raise Reject(455, "stream is not set up")
            await self._enable(stream, viewer, list(request.track_indexes), True)
            viewer.playing = True
            if not stream.playing:
                upstream = self.stubs.get(stream.upstream_stub or "")
                if upstream is None:
                    raise Reject(503, "the stub holding the upstream session is gone")
                result = await upstream.command(play=pb.PlayUpstream(stream_id=stream.stream_id))
                if result.status.code != 200:
                    raise Reject(result.status.code or 502, result.status.reason or "upstream PLAY failed")
                stream.playing = True
                stream.upstream_state = "playing"
            return pb.ControlReply(session=pb.SessionReply(range="npt=now-"))

    async def _pause(self, link: StubLink, request: pb.SessionRequest) -> pb.ControlReply:
        stream = self._stream(request.stream_id)
        async with stream.lock:
            viewer = self._viewer(stream, request.session_id)
            await self._enable(stream, viewer, list(request.track_indexes), False)
            viewer.playing = False
            return pb.ControlReply(session=pb.SessionReply())

    async def _teardown(self, link: StubLink, request: pb.SessionRequest) -> pb.ControlReply:
        stream = self._stream(request.stream_id)
        async with stream.lock:
            viewer = stream.viewers.get(request.session_id)
            if viewer is not None:
                await self._drop_viewer(stream, viewer, list(request.track_indexes))
            return pb.ControlReply(session=pb.SessionReply())

    async def _drop_viewer(self, stream: Stream, viewer: Viewer, tracks: list[int]) -> None:
        for index in list(viewer.legs):
            if tracks and index not in tracks:
                continue
            leg_id = viewer.legs.pop(index)
            ref = viewer.flows.pop(index, None)
            if ref is not None:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await ref.proxy.api.RemoveLeg(pb.RemoveLegRequest(flow_id=ref.flow_id, leg_id=leg_id),
                                                  timeout=PROXY_TIMEOUT)
        if not viewer.legs:
            stream.viewers.pop(viewer.session_id, None)
            log.info("stream %s: viewer %s left (%d remain)", stream.stream_id, viewer.session_id,
                     len(stream.viewers))
        await self._drop_unused_relays(stream)
        if not stream.viewers:
            self._schedule_linger(stream)

    async def _viewer_gone(self, gone: pb.ViewerGone) -> None:
        for stream in list(self.streams.values()):
            async with stream.lock:
                viewer = stream.viewers.get(gone.session_id)
                if viewer is not None:
                    log.info("stream %s: viewer %s gone (%s)", stream.stream_id, gone.session_id, gone.reason)
                    await self._drop_viewer(stream, viewer, [])

    async def _stub_gone(self, stub_id: str) -> None:
        for stream in list(self.streams.values()):
            async with stream.lock:
                for viewer in [v for v in stream.viewers.values() if v.stub_id == stub_id]:
                    await self._drop_viewer(stream, viewer, [])
                if stream.upstream_stub == stub_id and stream.sdp is not None:
                    await self._close_stream(stream, f"stub {stub_id} disconnected")

    def _upstream_event(self, event: pb.UpstreamEvent) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        state = pb.UpstreamEvent.State.Name(event.state).lower()
        if state != stream.upstream_state:
            log.info("stream %s: upstream %s%s", stream.stream_id, state,
                     f" ({event.detail})" if event.detail else "")
        stream.upstream_state = state
        if event.cause == pb.UpstreamEvent.RECONNECTED:
            stream.opened += 1
        if state in ("down", "playing"):
            message = pb.ControlMessage(stream_state=pb.StreamState(
                stream_id=stream.stream_id, upstream_up=state == "playing"))
            for stub_id in {v.stub_id for v in stream.viewers.values()}:
                link = self.stubs.get(stub_id)
                if link is not None:
                    link.send(message)

    # -- proxies ------------------------------------------------------------------------
    async def RegisterProxy(self, request_iterator: AsyncIterator[pb.ProxyMessage],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProxyAck]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "hello" or not first.hello.dataplane_address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be hello")
            return
        hello = first.hello
        channel = grpc.aio.insecure_channel(hello.dataplane_address)
        proxy = ProxyLink(hello, channel, pb_grpc.DataPlaneStub(channel))
        old = self.proxies.get(hello.node)
        self.proxies[hello.node] = proxy
        if old is not None and old.hello.proxy_id != hello.proxy_id:
            log.warning("proxy on node %s restarted; its streams are reset", hello.node)
            self._spawn(self._proxy_restarted(old), f"proxy-restart-{hello.node}")
        log.info("proxy on node %s registered (DataPlane %s, media %s)", hello.node,
                 hello.dataplane_address, hello.media_host)
        yield pb.ProxyAck(message=f"registered node {hello.node}")
        try:
            async for _ in request_iterator:
                pass   # heartbeats keep the stream open
        except grpc.aio.AioRpcError:
            pass
        finally:
            if self.proxies.get(hello.node) is proxy:
                log.warning("proxy on node %s went away; flows keep running there", hello.node)

    async def _proxy_restarted(self, old: ProxyLink) -> None:
        for stream in list(self.streams.values()):
            async with stream.lock:
                if any(ref.proxy is old for ref in [*stream.flows.values(), *stream.relays.values()]):
                    for viewer in list(stream.viewers.values()):
                        viewer.legs.clear()
                    stream.viewers.clear()
                    stream.flows = {}
                    await self._close_stream(stream, "proxy restarted")
        await old.channel.close()

    # -- operator view ----------------------------------------------------------------------
    async def ListStreams(self, request: pb.ListStreamsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListStreamsResponse:
        flows: dict[str, pb.FlowStats] = {}
        for proxy in list(self.proxies.values()):
            try:
                reply = await proxy.api.ListFlows(pb.ListFlowsRequest(), timeout=2.0)
            except grpc.aio.AioRpcError:
                continue
            flows.update((f.flow_id, f) for f in reply.flows)
        legs = {leg.leg_id: leg for f in flows.values() for leg in f.legs}
        response = pb.ListStreamsResponse()
        for stream in self.streams.values():
            info = response.streams.add(
                stream_id=stream.stream_id, name=stream.route.name, upstream_url=stream.route.url,
                upstream_state=stream.upstream_state, upstream_sessions_opened=stream.opened)
            for track in stream.tracks:
                ref = stream.flows.get(track.index)
                stats = flows.get(ref.flow_id) if ref else None
                relays = [flows[r.flow_id] for (_, index), r in sorted(stream.relays.items())
                          if index == track.index and r.flow_id in flows]
                info.tracks.add(track=track, flow=stats or pb.FlowStats(), relays=relays)
            for viewer in stream.viewers.values():
                info.viewers.add(session_id=viewer.session_id, host=viewer.host, playing=viewer.playing,
                                 legs=[legs[leg] for leg in viewer.legs.values() if leg in legs])
        return response


class ControlPlaneServer:
    """The control plane's gRPC server (graceful start/stop)."""

    def __init__(self, resolver: Resolver, *, listen: str = "127.0.0.1:9000", linger: float = 5.0) -> None:
        self.control = ControlPlane(resolver, linger=linger)
        self.listen = listen
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a busy port is an error
        pb_grpc.add_ControlPlaneServicer_to_server(self.control, self.server)
        port = self.server.add_insecure_port(self.listen)
        if port == 0:
            raise OSError(f"cannot listen on {self.listen} (in use?)")
        await self.server.start()
        self.address = f"{self.listen.rsplit(':', 1)[0]}:{port}"
        log.info("control plane gRPC on %s", self.address)

    async def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
        await self.control.close()
