"""The local mesh: control plane, one RTP proxy and a gateway stub in one process.

They are wired exactly as in a cluster, over loopback gRPC; nothing here takes
a shortcut between components. A mesh that cannot start (a port in use, a
missing dependency) raises :class:`Unavailable` with a one-line message.

Every gRPC link is mutual TLS with certificates from a local CA in the state
directory (``msm.security.local``), re-issued at half their lifetime while the mesh
runs. ``insecure=True`` (``msm up --insecure``) is plaintext, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from msm.control_plane.metrics import control_registry
from msm.control_plane.multicast import DEFAULT_POOL, DEFAULT_TTL, MAX_GROUPS, MulticastPool
from msm.control_plane.planner import MAX_TRACKS, PlannerSettings
from msm.control_plane.resolver import Route, StaticResolver
from msm.control_plane.server import ControlPlaneServer
from msm.control_plane.web import WebServer, create_app
from msm.rtp_proxy.media.agent import MediaAgent
from msm.rtp_proxy.media.bridges import BridgeSet, BridgeSpec
from msm.rtp_proxy.media.metrics import MediaCollector, fill_stats
from msm.rtp_proxy.media.plane import MediaNode, add_media_plane
from msm.rtp_proxy.service import RtpProxy
from msm.runtime.grpcserver import ListenError
from msm.runtime.hostport import format_host_port
from msm.sdk.errors import MsmError, Unavailable
from msm.sdk.rtsp_server import MAX_SESSIONS_PER_CONNECTION
from msm.security.local import GATEWAY_POD, NAMESPACE, NODE, LocalPki
from msm.security.tls import TlsFiles
from msm.stub.app import Stub, StubCollector, StubConfig, check_config
from msm.stub.server import (
    HEADER_TIMEOUT,
    IDLE_CONNECTION_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    RTSPS_PORT,
    WRITE_TIMEOUT,
)

log = logging.getLogger(__name__)

GST_SOURCE = Path(__file__).with_name("gst_source.py")
SYSTEM_PYTHON = "/usr/bin/python3"   # Debian's, which has GStreamer's `gi` bindings


@dataclass(slots=True, kw_only=True)
class MeshConfig:
    rtsp_host: str = "127.0.0.1"
    rtsp_port: int = 8554
    control_listen: str = "127.0.0.1:9000"
    proxy_listen: str = "127.0.0.1:9001"
    media_host: str = "127.0.0.1"
    port_range: tuple[int, int] = (30000, 39999)
    routes: list[Route] = field(default_factory=list)
    demo: bool = False
    linger: float = 5.0
    session_timeout: int = 60
    metrics_listen: str | None = None   # the proxy's Prometheus /metrics (None: off)
    web_listen: str | None = None       # the control plane's page and /metrics (None: off)
    # Where the mesh CA and certificates live (None: a private temporary directory,
    # removed at stop, so a library user never shares or leaves keys behind).
    state_dir: Path | None = None
    # Plaintext gRPC: anyone on the machine could program the proxy or act as a stub.
    # Off by default; `msm up --insecure` only, loopback only.
    insecure: bool = False
    # The media SDK's agent on <state dir>/media/proxy.sock (groups of this one node).
    media: bool = True
    # The config file's media: section (msm.media_config): groups declared up front, ST 2110 bridges.
    media_groups: list[str] = field(default_factory=list)
    bridges: list[BridgeSpec] = field(default_factory=list)
    # The most tracks a source may have (the planner refuses more with 453).
    max_tracks: int = MAX_TRACKS
    # Multicast out (routes with multicast on): the groups' pool, their TTL, how many at once.
    multicast_pool: str = DEFAULT_POOL
    multicast_ttl: int = DEFAULT_TTL
    max_multicast_groups: int = MAX_GROUPS
    # Viewers of the gateway stub: Digest authentication from a users file (off without one),
    # RTSPS on rtsp_host:rtsps_port from a certificate and key (off without them), and the
    # server's bounds (defaults and reasons in stub/server.py).
    users_file: str = ""
    auth_realm: str = "msm"
    allow_basic: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    rtsps_port: int = RTSPS_PORT
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    max_sessions_per_connection: int = MAX_SESSIONS_PER_CONNECTION
    header_timeout: float = HEADER_TIMEOUT
    idle_timeout: float = IDLE_CONNECTION_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT


def planner_settings(cfg: MeshConfig) -> PlannerSettings:
    return PlannerSettings(linger=cfg.linger, max_tracks=cfg.max_tracks, multicast_pool=cfg.multicast_pool,
                           multicast_ttl=cfg.multicast_ttl, max_multicast_groups=cfg.max_multicast_groups)


def check_multicast(cfg: MeshConfig) -> None:
    """A multicast pool, TTL or bound the planner could not use: ConfigError, one line, before anything starts."""
    MulticastPool(cfg.multicast_pool, ttl=cfg.multicast_ttl, max_groups=cfg.max_multicast_groups)


def gateway_stub_config(cfg: MeshConfig, control_address: str = "", tls: TlsFiles | None = None) -> StubConfig:
    """The gateway stub's settings from the mesh's; ConfigError (one line) for a users file or
    RTSPS certificate that cannot be read, or a bound that is not positive."""
    config = StubConfig(
        control_address=control_address, listen_host=cfg.rtsp_host, listen_port=cfg.rtsp_port,
        media_host=cfg.media_host, node=NODE, stub_id="gateway", pod=GATEWAY_POD, namespace=NAMESPACE,
        session_timeout=cfg.session_timeout, tls=tls, users_file=cfg.users_file, auth_realm=cfg.auth_realm,
        allow_basic=cfg.allow_basic, tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, rtsps_port=cfg.rtsps_port,
        max_connections=cfg.max_connections, max_connections_per_client=cfg.max_connections_per_client,
        max_sessions_per_connection=cfg.max_sessions_per_connection, header_timeout=cfg.header_timeout,
        idle_timeout=cfg.idle_timeout, write_timeout=cfg.write_timeout)
    check_config(config)
    return config


class DemoSource:
    """The built-in test source: GStreamer's RTSP server with an H.264 + audio test pattern."""

    def __init__(self, path: str = "/demo") -> None:
        self.path = path
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drainer: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    async def start(self, timeout: float = 15.0) -> None:
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            raise Unavailable(f"the demo source needs {SYSTEM_PYTHON} with GStreamer (python3-gi)")
        self.process = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, str(GST_SOURCE), "--port", "0", "--bind", "127.0.0.1", "--path", self.path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        break
                    text = line.decode(errors="replace").strip()
                    if text.startswith("READY"):
                        self.port = int(text.split("port=")[1].split()[0])
                        break
        except TimeoutError:
            pass
        if not self.port:
            err = b""
            if self.process.stderr is not None and self.process.returncode is not None:
                err = await self.process.stderr.read()
            await self.stop()
            hint = " (install gir1.2-gst-rtsp-server-1.0 and GStreamer's plugins)" if err else ""
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
            raise Unavailable(f"demo source did not start: {last[0]}{hint}")
        # Drain its output so the pipe never fills and blocks it.
        self._drainer = asyncio.create_task(self._drain(), name="demo-source-drain")

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with contextlib.suppress(Exception):
            while await self.process.stdout.readline():
                pass

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 5.0)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class LocalMesh:
    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.resolver = StaticResolver()
        for route in config.routes:
            self.resolver.add(route)
        self.control: ControlPlaneServer | None = None
        self.proxy: RtpProxy | None = None
        self.stub: Stub | None = None
        self.demo: DemoSource | None = None
        self.web: WebServer | None = None
        self.pki: LocalPki | None = None
        self.media: MediaNode | None = None
        self.media_agent: MediaAgent | None = None
        self.bridges: BridgeSet | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @property
    def rtsp_base(self) -> str:
        assert self.stub is not None
        return f"rtsp://{format_host_port(self.config.rtsp_host, self.stub.port)}"

    @property
    def rtsps_base(self) -> str | None:
        """``rtsps://host:port`` of the gateway stub, or None without RTSPS."""
        if self.stub is None or self.stub.server.tls_server is None:
            return None
        return f"rtsps://{format_host_port(self.config.rtsp_host, self.stub.server.tls_port)}"

    def url(self, name: str) -> str:
        return f"{self.rtsp_base}/{name}"

    def _prepare_pki(self) -> LocalPki | None:
        if self.config.insecure:
            log.warning("msm up --insecure: gRPC between the components is plaintext and unauthenticated; "
                        "any local process can program the proxy or act as a stub")
            return None
        state_dir = self.config.state_dir
        if state_dir is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="msm-state-")
            state_dir = Path(self._scratch.name)
        pki = LocalPki(state_dir)
        try:
            pki.prepare()
        except OSError as exc:
            raise Unavailable(f"cannot use the state directory {state_dir}: {exc.strerror or exc}") from exc
        pki.start()
        return pki

    async def start(self) -> None:
        cfg = self.config
        try:
            self.pki = pki = self._prepare_pki()
            if cfg.demo:
                if shutil.which(SYSTEM_PYTHON) is None:
                    raise Unavailable(f"--demo needs {SYSTEM_PYTHON} with GStreamer")
                self.demo = DemoSource()
                await self.demo.start()
                self.resolver.add(Route(name="demo", url=self.demo.url))
            # One node: no relay legs, so SRTP (on by default for them) never applies here.
            self.control = ControlPlaneServer(
                self.resolver, listen=cfg.control_listen, tls=pki["control-plane"] if pki else None,
                settings=planner_settings(cfg))
            await _listening(self.control.start(), "control plane", cfg.control_listen)
            if cfg.web_listen:
                self.web = WebServer(create_app(self.control.control,
                                                registry=control_registry(self.control.control)))
                await _listening(self.web.start(cfg.web_listen), "web page", cfg.web_listen)
            # The media side's groups go through the control plane (it lists them on the page and to
            # `msm streams` over the MediaPlane beside the DataPlane); one node needs no fabric endpoint.
            media = self.media = MediaNode(NODE, tls=pki["proxy"] if pki else None) if cfg.media else None
            self.proxy = RtpProxy(node=NODE, media_host=cfg.media_host, grpc_listen=cfg.proxy_listen,
                                  control_address=self.control.address, port_range=cfg.port_range,
                                  metrics_listen=cfg.metrics_listen, tls=pki["proxy"] if pki else None,
                                  services=[lambda server: add_media_plane(media, server)] if media else [])
            await _listening(self.proxy.start(), "RTP proxy", cfg.proxy_listen)
            if cfg.metrics_listen:
                await _listening(self.proxy.start_metrics(), "proxy metrics", cfg.metrics_listen)
            if cfg.media:
                await self._start_media()
            self.stub = Stub(gateway_stub_config(cfg, self.control.address, pki["gateway"] if pki else None))
            if self.proxy.metrics is not None:
                # The gateway stub's bounds on the proxy's /metrics: one endpoint for the one node.
                self.proxy.metrics.registry.register(StubCollector(self.stub.server))
            where = format_host_port(cfg.rtsp_host, cfg.rtsp_port)
            if cfg.tls_cert:
                where += f" (or RTSPS on {format_host_port(cfg.rtsp_host, cfg.rtsps_port)})"
            await _listening(self.stub.start(), "RTSP", where)
            assert self.proxy.agent is not None
            await asyncio.wait_for(self.proxy.agent.registered.wait(), 10.0)
            await self.stub.wait_connected()
        except BaseException:
            await self.stop()
            raise

    async def _start_media(self) -> None:
        """The media agent under ``<state dir>/media`` (a private temporary directory without one)."""
        if self.config.state_dir is not None:
            root = self.config.state_dir
        else:
            if self._scratch is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="msm-state-")
            root = Path(self._scratch.name)
        assert self.media is not None and self.proxy is not None and self.proxy.agent is not None
        self.media_agent = MediaAgent(root / "media", self.media)
        await _listening(self.media_agent.start(), "media apps", str(root / "media"))
        self.bridges = bridges = BridgeSet(self.media, media_dir=root / "media")
        if self.proxy.metrics is not None:
            self.proxy.metrics.registry.register(MediaCollector(self.media, self.bridges, self.media_agent.snapshot))
        # The control plane's ListGroups carries the bridges and app connections, with or without /metrics.
        self.media.extra_stats = functools.partial(fill_stats, bridges=bridges, agent=self.media_agent.snapshot)
        await self.bridges.start(self.config.bridges, self.config.media_groups)
        # The bridges joined locally (one node: no links to wait for); the control plane learns them with
        # the node's announcement once the proxy has registered, not one call each before the banner.
        assert self.control is not None
        self.media.control = self.control.address
        self.media.start(self.proxy.agent.registered, self.proxy.agent.hello.proxy_id)

    async def stop(self) -> None:
        if self.bridges is not None:
            await self.bridges.stop()
            self.bridges = None
        if self.media_agent is not None:
            await self.media_agent.stop()
            self.media_agent = None
        if self.media is not None:
            await self.media.stop()
            self.media = None
        if self.stub is not None:
            await self.stub.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.web is not None:
            await self.web.stop()
        if self.control is not None:
            await self.control.stop()
        if self.demo is not None:
            await self.demo.stop()
        if self.pki is not None:
            await self.pki.stop()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    async def __aenter__(self) -> LocalMesh:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _listening(start: Awaitable[None], what: str, where: str) -> None:
    """Await a component's start; a failed bind becomes one Unavailable naming ``what`` and ``where``."""
    try:
        await start
    except ListenError as exc:
        raise Unavailable(f"cannot listen for {what} on {where}: {exc.why}") from exc
    except MsmError:
        raise
    except (OSError, RuntimeError) as exc:
        errno = getattr(exc, "errno", None)
        if errno:
            reason = os.strerror(errno).lower()
        elif "bind" in str(exc).lower():
            reason = "address already in use or not available"
        else:
            reason = str(exc)
        raise Unavailable(f"cannot listen for {what} on {where}: {reason}") from exc
