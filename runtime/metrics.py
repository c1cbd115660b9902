"""``GET /metrics`` and ``/healthz`` for one Prometheus registry, over aiohttp.

Shared by every component that serves its own metrics (the proxy, the stub); the
control plane serves them on its web page's app instead.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from .hostport import format_host_port, parse_host_port

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """Serves ``registry``; ``default_host`` fills in a listen address given as ``:PORT``."""

    def __init__(self, registry: CollectorRegistry, *, what: str = "metrics", default_host: str = "127.0.0.1") -> None:
        self.registry = registry
        self.what = what
        self.default_host = default_host
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def start(self, listen: str) -> None:
        address = parse_host_port(listen, what="--metrics-listen", default_host=self.default_host)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, address.host, address.port, reuse_address=True).start()
        bound = self.runner.addresses[0][1] if self.runner.addresses else address.port
        self.address = format_host_port(address.host, bound)
        log.info("%s on http://%s/metrics", self.what, self.address)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
