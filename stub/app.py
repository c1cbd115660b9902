"""A whole stub: control-plane link, upstream manager and the viewer-facing RTSP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

from msm.protos import msm_pb2 as pb
from msm.sdk.rtsp_auth import ServerAuth, load_users

from .control import ControlClient
from .server import RTSPS_PORT, StubServer, tls_context
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
    rtsps_port: int = RTSPS_PORT


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
                                     on_stream_state=self._on_stream_state)
        self.server = StubServer(self.control, host=config.listen_host, port=config.listen_port,
                                 media_host=config.media_host, session_timeout=config.session_timeout,
                                 auth=_viewer_auth(config), tls_port=config.rtsps_port,
                                 tls=tls_context(config.tls_cert, config.tls_key) if config.tls_cert else None)

        self._control_task: asyncio.Task[None] | None = None

    def _on_stream_state(self, state: pb.StreamState) -> None:
        self.server.on_stream_state(state)

    def _on_upstream_event(self, event: pb.UpstreamEvent) -> None:
        self.control.send(pb.StubMessage(event=event))

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()
        self._control_task = asyncio.create_task(self.control.run(), name="stub-control")

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.control.connected.wait(), timeout)

    async def stop(self) -> None:
        await self.server.stop()
        await self.upstreams.close()
        if self._control_task is not None:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control_task
