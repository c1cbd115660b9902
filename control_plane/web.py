"""The control plane's web page: the stream graph with live loss, jitter and bitrate, and media groups.

A thin aiohttp layer over the control plane's query API (:class:`StreamQuery`: the
``ListStreams`` answer ``msm streams`` prints, and a few counts) and, when it has one, its
group placer (``control.media``: ``ListPlacements`` with every node's counters, as
``msm streams`` prints them too). The page itself (``static/``) is plain HTML, JS and
SVG with no external fetches: it polls ``/api/streams`` and ``/api/media`` and keeps its own
short history, so the server holds no per-browser state. It builds every element with DOM
calls and puts what the API says in as text, never as markup: URNs, app and bridge names
are user input.

Routes::

    GET /             the page
    GET /static/...   its script and style sheet
    GET /api/streams  ListStreams as JSON (proto field names); 503 when it cannot be had.
                      Upstream URLs without credentials, viewers by session tag, never
                      by session id (checked again here, whatever the answer holds).
    GET /api/media    ListPlacements(with_stats) as JSON: every group's placement and every
                      node's groups, receivers, fabric links, bridges and app connections
                      (fabric addresses left out); one listing shared by the callers of
                      the same second; listed_at_ms says when it was made.
    GET /metrics      Prometheus text of the given registry (404 without one), with the
                      group placements' families (media_service.PlacementCollector) added
    GET /healthz      liveness, with a few counts
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import grpc
import prometheus_client
from aiohttp import web
from google.protobuf import json_format

from msm.protos import media_pb2 as mpb
from msm.protos import msm_pb2 as pb
from msm.runtime.hostport import format_host_port, parse_host_port
from msm.runtime.redact import redact_url, session_tag
from msm.sdk.errors import MsmError

from .media import MediaPlacer
from .media_service import PlacementCollector
from .view import list_media

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
# ListStreams asks every proxy with a 2 s timeout each; a page polling every
# second is better told "unavailable" than left hanging behind a wedged proxy.
LIST_TIMEOUT = 5.0
# Pages polling every second each would otherwise ask every proxy every second per browser:
# a listing younger than this is answered again (one answer kept, whatever the callers).
MEDIA_FRESH = 1.0

class StreamQuery(Protocol):
    """What the page asks of the control plane (``server.ControlPlane`` answers it)."""

    async def list_streams(self) -> pb.ListStreamsResponse: ...
    def counts(self) -> dict[str, int]: ...


CONTROL_KEY: web.AppKey[StreamQuery] = web.AppKey("control")
REGISTRY_KEY: web.AppKey[prometheus_client.CollectorRegistry | None] = web.AppKey("registry")
MEDIA_KEY: web.AppKey[MediaListing] = web.AppKey("media")


class MediaListing:
    """``/api/media``'s answer: asked of the placer at most once per :data:`MEDIA_FRESH` seconds."""

    def __init__(self, placer: MediaPlacer | None) -> None:
        self.placer = placer
        self.lock = asyncio.Lock()
        self.at = -MEDIA_FRESH
        self.body: dict[str, Any] = media_json(mpb.ListPlacementsReply())

    async def get(self) -> dict[str, Any]:
        if self.placer is None:
            return self.body
        async with self.lock:   # one listing at a time; the callers waiting get its answer
            loop = asyncio.get_running_loop()
            if loop.time() - self.at >= MEDIA_FRESH:
                body = media_json(await list_media(self.placer))
                body["listed_at_ms"] = int(time.time() * 1000)   # the page's frames/s are timed by it
                self.body, self.at = body, loop.time()
            return self.body


def media_json(reply: mpb.ListPlacementsReply) -> dict[str, Any]:
    """The media API's JSON: proto field names, defaults included (uint64s are strings, per proto3 JSON)."""
    body: dict[str, Any] = json_format.MessageToDict(reply, preserving_proto_field_name=True,
                                                     always_print_fields_with_no_presence=True)
    return body


def create_app(control: StreamQuery, *,
               registry: prometheus_client.CollectorRegistry | None = None) -> web.Application:
    app = web.Application()
    app[CONTROL_KEY] = control
    app[REGISTRY_KEY] = registry
    placer = getattr(control, "media", None)   # ControlPlane's MediaPlacer; a query without one has no groups
    if not isinstance(placer, MediaPlacer):
        placer = None
    app[MEDIA_KEY] = MediaListing(placer)
    if registry is not None and placer is not None:
        # /metrics shows the placements too; a second app on the same registry finds them there already.
        with contextlib.suppress(ValueError):
            registry.register(PlacementCollector(placer))
    app.router.add_get("/", _index)
    app.router.add_get("/api/streams", _streams)
    app.router.add_get("/api/media", _media)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_static("/static/", STATIC_DIR)
    return app


def _conceal(response: pb.ListStreamsResponse) -> pb.ListStreamsResponse:
    """A copy without credentials in URLs or session ids (tags in their place)."""
    safe = pb.ListStreamsResponse()
    safe.CopyFrom(response)
    for stream in safe.streams:
        stream.upstream_url = redact_url(stream.upstream_url)
        for viewer in stream.viewers:
            if viewer.session_id:
                viewer.session_tag = viewer.session_tag or session_tag(viewer.session_id)
                viewer.session_id = ""
    return safe


def streams_json(response: pb.ListStreamsResponse) -> dict[str, Any]:
    """The API's JSON: proto field names, defaults included (int64s are strings, per proto3 JSON)."""
    response = _conceal(response)
    body: dict[str, Any] = json_format.MessageToDict(response, preserving_proto_field_name=True,
                                                     always_print_fields_with_no_presence=True)
    return body


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _streams(request: web.Request) -> web.Response:
    control = request.app[CONTROL_KEY]
    # The boundary: whatever goes wrong asking the proxies is answered here, once.
    try:
        async with asyncio.timeout(LIST_TIMEOUT):
            response = await control.list_streams()
    except TimeoutError:
        return _error(503, f"the proxies did not answer within {LIST_TIMEOUT:g} s")
    except MsmError as exc:
        log.warning("listing streams failed: %s", exc.reason)
        return _error(exc.http_status, exc.reason)
    except (grpc.RpcError, grpc.aio.UsageError, OSError) as exc:
        log.warning("listing streams failed: %s", exc)
        return _error(503, f"a proxy is unavailable: {type(exc).__name__}")
    except Exception:
        log.exception("listing streams failed")
        return _error(500, "internal error listing streams (see the control plane's log)")
    return web.json_response(streams_json(response), headers={"Cache-Control": "no-store"})


async def _media(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(LIST_TIMEOUT + 1.0):   # each proxy has PROXY_TIMEOUT; this is the backstop
            body = await request.app[MEDIA_KEY].get()
    except TimeoutError:
        return _error(503, f"the proxies did not answer within {LIST_TIMEOUT:g} s")
    except MsmError as exc:
        log.warning("listing media groups failed: %s", exc.reason)
        return _error(exc.http_status, exc.reason)
    except Exception:
        log.exception("listing media groups failed")
        return _error(500, "internal error listing media groups (see the control plane's log)")
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    if registry is None:
        return _error(404, "no metrics registry here")
    return web.Response(body=prometheus_client.generate_latest(registry),
                        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    control = request.app[CONTROL_KEY]
    return web.json_response({"status": "ok", **control.counts()})


class WebServer:
    """Serves an app on one TCP address; ``start`` raises OSError when the port is taken
    (and ConfigError for an address that is not HOST:PORT)."""

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 1.0) -> None:
        self.app = app
        self.shutdown_timeout = shutdown_timeout
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def start(self, listen: str = "127.0.0.1:8080") -> None:
        where = parse_host_port(listen, what="the web listen address", default_host="0.0.0.0")
        host, port = where.host, where.port
        # No access log: the page polls every second and would drown the mesh's own log.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        try:
            # reuse_port stays off, so a port someone else listens on is an OSError (EADDRINUSE).
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.address = format_host_port(bound_host, bound_port)
        log.info("web page on http://%s/", self.address)

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
