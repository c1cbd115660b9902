"""The control plane's gRPC face: a thin adapter over :class:`~.planner.Planner`.

:class:`ControlPlane` is the ``ControlPlane`` servicer: it turns each stub's
``Connect`` stream into a :class:`~.links.StubLink` and each proxy's
``RegisterProxy`` into a :class:`~.links.ProxyLink`, hands requests, results,
events and departures to the planner, and answers every request exactly once:
an :class:`~msm.sdk.errors.MsmError` becomes the reply's status
(``msm.protos.status.status_of``), anything else a 500. The decisions (pooling,
legs, relays, linger, restarts) are the planner's; the operator view is
:mod:`.view`'s.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeAlias

import grpc

from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc
from msm.protos.status import status_of
from msm.runtime.grpcserver import GrpcServer
from msm.runtime.grpcutil import abort
from msm.sdk.errors import MsmError, NotImplemented_, ProtocolError
from msm.security.authz import BOOTSTRAP_RULES, CONTROL_PLANE_RULES, Authorizer, check_name, peer_identity
from msm.security.identity import Identity
from msm.security.tls import TlsFiles, server_credentials

from .links import ProxyLink, StubLink
from .media import MediaPlacer
from .media_service import MediaControlService, MediaLink, add_media_control
from .planner import Planner, PlannerSettings
from .ports import Clock, DataPlane, StubInfo, StubPort
from .resolver import Resolver
from .store import Store
from .view import StreamView, list_streams, snapshot

log = logging.getLogger(__name__)

__all__ = ["ControlPlane", "ControlPlaneServer", "PlannerSettings", "ProxyLink", "StubLink"]

Handler = Callable[[StubInfo, Any], Awaitable[pb.ControlReply]]
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def with_linger(settings: PlannerSettings | None, linger: float | None) -> PlannerSettings:
    """``settings`` (defaults when None) with ``linger`` in it when one is given."""
    settings = settings or PlannerSettings()
    return settings if linger is None else replace(settings, linger=linger)


class Issuer(Protocol):
    """Issues workload certificates for ``IssueCertificate`` (``msm.security.issuer``)."""

    async def issue(self, request: pb.CertificateRequest, peer: str) -> pb.CertificateReply: ...


class ControlPlane(pb_grpc.ControlPlaneServicer):
    """With ``tls``, callers are mesh workloads (:class:`ControlPlaneServer` checks their role
    before a method runs) and each may speak only for itself: a stub for its own pod, a proxy
    for its own node; the control plane reaches proxies over mutual TLS with the same files.
    """

    def __init__(self, resolver: Resolver, *, linger: float | None = None, store: Store | None = None,
                 clock: Clock | None = None, tls: TlsFiles | None = None, issuer: Issuer | None = None,
                 settings: PlannerSettings | None = None) -> None:
        # ``linger`` (when given) overrides settings.linger: older callers pass it alone.
        self.planner = Planner(resolver, store=store, clock=clock, settings=with_linger(settings, linger))
        self.tls = tls
        # Our own trust domain: a caller's certificate must be of it (None: no TLS, no identities).
        self.trust_domain = tls.identity().trust_domain if tls is not None else None
        self.issuer = issuer
        self.media = MediaPlacer(self._media_port)   # multipoint groups across nodes
        self._handlers: dict[str, Handler] = {
            "describe": self._describe, "setup": self._setup, "play": self._play,
            "pause": self._pause, "teardown": self._teardown,
        }

    # -- the query API (web page, metrics, ListStreams) ------------------------------------------
    @property
    def streams(self) -> dict[str, StreamView]:
        return snapshot(self.planner.store)

    @property
    def stubs(self) -> Mapping[str, StubPort]:
        return self.planner.stubs

    @property
    def proxies(self) -> Mapping[str, DataPlane]:
        return self.planner.proxies

    async def list_streams(self) -> pb.ListStreamsResponse:
        return await list_streams(self.planner)

    def counts(self) -> dict[str, int]:
        return {"streams": len(self.planner.store.stream_ids()), "proxies": len(self.planner.proxies),
                "stubs": len(self.planner.stubs)}

    async def close(self) -> None:
        await self.planner.close()

    def _media_port(self, node: str) -> MediaLink | None:
        proxy = self.planner.proxies.get(node)
        return MediaLink(proxy) if isinstance(proxy, ProxyLink) and not proxy.closed else None

    # -- stubs ---------------------------------------------------------------------------------------
    async def Connect(self, request_iterator: AsyncIterator[pb.StubMessage],
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.ControlMessage]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "register" or not first.register.stub_id:
            await abort(context, ProtocolError("first message must be register"))
        identity: Identity | None = None
        if self.trust_domain is not None:
            try:   # a stub speaks only for its own pod: its certificate names it
                identity = peer_identity(context, self.trust_domain)
                check_name(identity, namespace=first.register.namespace, name=first.register.pod,
                           what="connect as stub")
            except MsmError as exc:
                log.warning("stub %r refused: %s", first.register.stub_id, exc.reason)
                await abort(context, exc)
        # With TLS the link's namespace and pod are the certificate's (they equal the claim,
        # checked above; taking them from the certificate keeps it so).
        link = StubLink(first.register, identity)
        old = self.planner.stub_connected(link)
        if isinstance(old, StubLink):
            old.close()
        log.info("stub %s connected (node %s, pod %s/%s)", link.stub_id, link.info.node,
                 link.info.namespace, link.info.pod)
        reader = self.planner.spawn(self._read_stub(link, request_iterator), f"stub-{link.stub_id}")
        try:
            while True:
                message = await link.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            link.close()
            if self.planner.stub_disconnected(link):
                log.info("stub %s disconnected", link.stub_id)

    async def _read_stub(self, link: StubLink, messages: AsyncIterator[pb.StubMessage]) -> None:
        planner = self.planner
        try:
            async for message in messages:
                kind = message.WhichOneof("kind")
                if kind == "request":
                    planner.spawn(self._serve(link, message.request), f"req-{message.request.request_id}")
                elif kind == "result":
                    link.resolve(message.result)
                elif kind == "event":
                    planner.spawn(planner.upstream_event(message.event), "upstream-event")
                elif kind == "viewer_gone":
                    gone = message.viewer_gone
                    planner.spawn(planner.viewer_gone(gone.session_id, gone.reason), "viewer-gone")
        except grpc.aio.AioRpcError:
            pass
        finally:
            link.close()

    async def _serve(self, link: StubLink, request: pb.StubRequest) -> None:
        """Answer one request; the one place its errors become a status."""
        kind = request.WhichOneof("kind") or ""
        try:
            handler = self._handlers.get(kind)
            if handler is None:
                raise NotImplemented_(f"unknown request {kind}")
            reply = await handler(link.info, getattr(request, kind))
            reply.status.code = 200
        except MsmError as exc:
            if exc.status >= 500:
                log.warning("request %s failed: %s", kind, exc.reason)
            reply = pb.ControlReply(status=status_of(exc))
        except Exception:   # a bug of ours: the viewer gets a 500 at once, not a time-out
            log.exception("request %s failed", kind)
            reply = pb.ControlReply(status=pb.Status(code=500, reason="internal error"))
        reply.request_id = request.request_id
        link.send(pb.ControlMessage(reply=reply))

    async def _describe(self, stub: StubInfo, request: pb.DescribeRequest) -> pb.ControlReply:
        return pb.ControlReply(describe=await self.planner.describe(stub, request))

    async def _setup(self, stub: StubInfo, request: pb.SetupRequest) -> pb.ControlReply:
        return pb.ControlReply(setup=await self.planner.setup(stub, request))

    async def _play(self, stub: StubInfo, request: pb.SessionRequest) -> pb.ControlReply:
        return pb.ControlReply(session=await self.planner.play(stub, request))

    async def _pause(self, stub: StubInfo, request: pb.SessionRequest) -> pb.ControlReply:
        return pb.ControlReply(session=await self.planner.pause(stub, request))

    async def _teardown(self, stub: StubInfo, request: pb.SessionRequest) -> pb.ControlReply:
        return pb.ControlReply(session=await self.planner.teardown(stub, request))

    # -- proxies ----------------------------------------------------------------------------------------
    async def RegisterProxy(self, request_iterator: AsyncIterator[pb.ProxyMessage],
                            context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.ProxyAck]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "hello" or not first.hello.dataplane_address:
            await abort(context, ProtocolError("first message must be hello"))
        hello = first.hello
        if self.trust_domain is not None:
            try:   # a proxy registers only its own node: its certificate names it
                check_name(peer_identity(context, self.trust_domain), name=hello.node,
                           what="register the proxy of node")
            except MsmError as exc:
                log.warning("proxy for node %r refused: %s", hello.node, exc.reason)
                await abort(context, exc)
        proxy = ProxyLink.connect(hello, self.tls)
        self.planner.proxy_registered(proxy)
        self.planner.spawn(self.media.proxy_registered(hello.node, hello.proxy_id), f"media-{hello.node}")
        log.info("proxy on node %s registered (DataPlane %s, media %s)", hello.node,
                 hello.dataplane_address, hello.media_host)
        yield pb.ProxyAck(message=f"registered node {hello.node}")
        try:
            async for message in request_iterator:   # heartbeats keep the stream open
                if message.WhichOneof("kind") == "legs_heard" and self.planner.proxies.get(hello.node) is proxy:
                    self._legs_heard(hello.node, message.legs_heard)
        except grpc.aio.AioRpcError:
            pass
        finally:
            if self.planner.proxies.get(hello.node) is proxy:
                log.warning("proxy on node %s went away; flows keep running there", hello.node)
                self.planner.spawn(self.media.node_gone(hello.node, hello.proxy_id), f"media-{hello.node}")

    def _legs_heard(self, node: str, heard: pb.LegsHeard) -> None:
        """Viewers sent RTCP on these legs of ``node``'s proxy: their stubs restart the sessions' timeouts."""
        for stub_id, sessions in self.planner.sessions_heard(node, heard.legs).items():
            stub = self.planner.stubs.get(stub_id)
            if isinstance(stub, StubLink):
                stub.send(pb.ControlMessage(sessions_alive=pb.SessionsAlive(session_ids=sessions)))

    # -- operator view --------------------------------------------------------------------------------------
    async def ListStreams(self, request: pb.ListStreamsRequest,
                          context: grpc.aio.ServicerContext[Any, Any] | None) -> pb.ListStreamsResponse:
        try:
            return await self.list_streams()
        except MsmError as exc:
            if context is None:   # called as a library (tests): the caller's boundary answers
                raise
            await abort(context, exc)

    # -- certificates ------------------------------------------------------------------------------------
    async def IssueCertificate(self, request: pb.CertificateRequest, context: Context) -> pb.CertificateReply:
        """Open to any caller that completes the TLS handshake: the issuer authenticates its token."""
        try:
            if self.issuer is None:
                raise NotImplemented_("this control plane issues no certificates")
            return await self.issuer.issue(request, context.peer())
        except MsmError as exc:
            await abort(context, exc)


class ControlPlaneServer:
    """The control plane's gRPC server (graceful start/stop).

    ``tls``: the control plane's certificate files: mutual TLS, callers authorised by
    role (``msm.security.authz.CONTROL_PLANE_RULES``), files reloaded when rotated.
    None is plaintext and lets anyone act as a stub or proxy: only an explicit
    ``--insecure`` should ask for it. ``issuer`` answers ``IssueCertificate``.

    ``bootstrap_listen``: a second port with server-only TLS that answers
    ``IssueCertificate`` and nothing else, for workloads that have no certificate yet
    (the main port requires one at the handshake). None: no such port.
    """

    def __init__(self, resolver: Resolver, *, listen: str = "127.0.0.1:9000", linger: float | None = None,
                 tls: TlsFiles | None = None, issuer: Issuer | None = None,
                 bootstrap_listen: str | None = None, settings: PlannerSettings | None = None) -> None:
        self.control = ControlPlane(resolver, tls=tls, issuer=issuer, settings=with_linger(settings, linger))
        self.tls = tls
        self.listen = listen
        self.bootstrap_listen = bootstrap_listen
        self.server: GrpcServer | None = None
        self.bootstrap: GrpcServer | None = None

    @property
    def address(self) -> str:
        return self.server.address if self.server is not None else ""

    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else 0

    async def start(self) -> None:
        credentials, rules = None, []
        if self.tls is not None:
            credentials = server_credentials(self.tls)
            rules = [Authorizer(self.tls.identity().trust_domain, CONTROL_PLANE_RULES)]
        else:
            log.warning("control plane gRPC on %s without TLS: anyone who reaches it can act as a stub "
                        "or a proxy", self.listen)
        server = GrpcServer(self.listen, self._register, what="control plane gRPC", credentials=credentials,
                            interceptors=rules)
        await server.start()   # a busy port or a bad address: ListenError / ConfigError, one line
        self.server = server
        if self.tls is not None and self.bootstrap_listen:
            bootstrap = GrpcServer(self.bootstrap_listen, self._register, what="certificate bootstrap gRPC",
                                   credentials=server_credentials(self.tls, require_client=False),
                                   interceptors=[Authorizer(self.tls.identity().trust_domain, BOOTSTRAP_RULES)])
            await bootstrap.start()
            self.bootstrap = bootstrap

    def _register(self, server: grpc.aio.Server) -> None:
        # The generated gRPC module has no annotations.
        pb_grpc.add_ControlPlaneServicer_to_server(self.control, server)  # type: ignore[no-untyped-call]
        add_media_control(MediaControlService(self.control.media, self.control.trust_domain), server)

    async def stop(self, grace: float = 1.0) -> None:
        if self.bootstrap is not None:
            await self.bootstrap.stop(grace)
        if self.server is not None:
            await self.server.stop(grace)
        await self.control.close()
