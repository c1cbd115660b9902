"""A whole stub: control-plane link, upstream manager, the viewer-facing RTSP server and its metrics.

Every bound of the viewer-facing server is a :class:`StubConfig` field whose default
is the server's (``stub/server.py`` says why each is what it is); each refusal or
close at a bound is counted in ``StubServer.limit_hits`` and exported by
:class:`StubCollector` as ``msm_stub_limit_hits_total{limit=...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from msm.protos import msm_pb2 as pb
from msm.runtime.metrics import MetricsServer
from msm.sdk.errors import ConfigError
from msm.sdk.rtsp_auth import ServerAuth, load_users
from msm.sdk.rtsp_server import MAX_SESSIONS_PER_CONNECTION
from msm.security.tls import TlsFiles

from .control import ControlClient
from .server import (
    HEADER_TIMEOUT,
    IDLE_CONNECTION_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    RTSPS_PORT,
    WRITE_TIMEOUT,
    StubServer,
    tls_context,
)
from .upstream import UpstreamManager

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class StubConfig:
    control_address: str = "127.0.0.1:9000"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8554
    media_host: str = "127.0.0.1"     # where this stub's UDP bridges bind
    node: str = "local"
    pod: str = ""
    namespace: str = ""
    pod_ip: str = ""
    stub_id: str = ""
    can_open_upstream: bool = True
    session_timeout: int = 60
    # Viewer authentication: off unless a users file (user:password lines) is given.
    users_file: str = ""
    auth_realm: str = "msm"
    # Basic sends the password in clear: only with RTSPS, and only when asked for.
    allow_basic: bool = False
    # RTSPS: off unless a certificate and its key are given (files, PEM).
    tls_cert: str = ""
    tls_key: str = ""
    rtsps_host: str = ""              # empty: listen_host
    rtsps_port: int = RTSPS_PORT
    # The stub's own certificate for the control plane (mutual TLS); None is plaintext,
    # which only an explicit --insecure chooses.
    tls: TlsFiles | None = None
    # Bounds of the viewer-facing server (defaults and reasons in stub/server.py).
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    max_sessions_per_connection: int = MAX_SESSIONS_PER_CONNECTION
    header_timeout: float = HEADER_TIMEOUT
    idle_timeout: float = IDLE_CONNECTION_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    # Prometheus /metrics of this stub (HOST:PORT); empty: not served.
    metrics_listen: str = ""


# Every name StubServer counts in limit_hits, so each series exists (at 0) before its first hit.
LIMITS = ("connections", "connections_per_client", "sessions_per_connection", "header_timeout",
          "idle_timeout", "write_backlog", "write_timeout")


class StubCollector(Collector):
    """The viewer-facing server's bounds, connections and sessions, read at scrape time."""

    def __init__(self, server: StubServer) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        hits = CounterMetricFamily("msm_stub_limit_hits", "Viewer connections refused or closed, and "
                                   "sessions refused, at one of the stub's bounds", labels=["limit"])
        counted = self.server.limit_hits
        for name in sorted(set(LIMITS) | set(counted)):
            hits.add_metric([name], counted[name])
        connections = GaugeMetricFamily("msm_stub_connections", "Open viewer RTSP/RTSPS connections")
        connections.add_metric([], len(self.server.connections))
        sessions = GaugeMetricFamily("msm_stub_sessions", "Viewer RTSP sessions")
        sessions.add_metric([], len(self.server.sessions))
        yield from (hits, connections, sessions)


def stub_registry(server: StubServer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StubCollector(server))
    return registry


def check_config(config: StubConfig) -> None:
    """ConfigError (one line, naming the setting) for settings the stub cannot run with.

    The users file and the RTSPS certificate are read here, so a bad one is a start-up
    error rather than a refusal of every viewer later.
    """
    for name in ("max_connections", "max_connections_per_client", "max_sessions_per_connection",
                 "header_timeout", "idle_timeout", "write_timeout"):
        if not getattr(config, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("RTSPS needs both a certificate (--tls-cert) and its key (--tls-key)")
    if config.tls_cert:
        tls_context(config.tls_cert, config.tls_key)
    if config.users_file:
        load_users(config.users_file)


def _viewer_auth(config: StubConfig) -> ServerAuth | None:
    """The viewers' authenticator from the users file; ``None`` (no authentication) without one."""
    if not config.users_file:
        return None
    return ServerAuth(load_users(config.users_file), config.auth_realm, allow_basic=config.allow_basic)


class Stub:
    def __init__(self, config: StubConfig) -> None:
        self.config = config
        register = pb.StubRegister(
            stub_id=config.stub_id or f"stub-{uuid.uuid4().hex[:8]}", node=config.node, pod=config.pod,
            namespace=config.namespace, pod_ip=config.pod_ip, can_open_upstream=config.can_open_upstream)
        self.upstreams = UpstreamManager(self._on_upstream_event)
        self.control = ControlClient(config.control_address, register, self.upstreams.handle,
                                     on_stream_state=self._on_stream_state, tls=config.tls,
                                     on_sessions_alive=self._on_sessions_alive)
        self.server = StubServer(
            self.control, host=config.listen_host, port=config.listen_port, media_host=config.media_host,
            session_timeout=config.session_timeout, auth=_viewer_auth(config),
            tls=tls_context(config.tls_cert, config.tls_key) if config.tls_cert else None,
            tls_host=config.rtsps_host or None, tls_port=config.rtsps_port,
            max_connections=config.max_connections, max_connections_per_client=config.max_connections_per_client,
            max_sessions_per_connection=config.max_sessions_per_connection,
            header_timeout=config.header_timeout, idle_timeout=config.idle_timeout,
            write_timeout=config.write_timeout)
        self.metrics: MetricsServer | None = None
        self._control_task: asyncio.Task[None] | None = None

    def _on_stream_state(self, state: pb.StreamState) -> None:
        self.server.on_stream_state(state)

    def _on_sessions_alive(self, alive: pb.SessionsAlive) -> None:
        self.server.sessions_alive(alive.session_ids)

    def _on_upstream_event(self, event: pb.UpstreamEvent) -> None:
        self.control.send(pb.StubMessage(event=event))

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()
        if self.config.metrics_listen:
            self.metrics = MetricsServer(stub_registry(self.server), what="stub metrics")
            await self.metrics.start(self.config.metrics_listen)
        self._control_task = asyncio.create_task(self.control.run(), name="stub-control")

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.control.connected.wait(), timeout)

    async def stop(self) -> None:
        await self.server.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        await self.upstreams.close()
        if self._control_task is not None:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control_task
