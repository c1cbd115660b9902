"""The control plane's web page: its JSON API, and what a real browser draws from a live mesh.

The browser is Debian's headless Chromium, driven over the DevTools protocol
(CDP) with aiohttp's own websocket client. ``--dump-dom`` with a virtual time
budget was the simpler option, but virtual time runs the page's timers in a
burst while the mesh's statistics move in real time, so the plots it yields
say little; with CDP the page polls in real time for a few seconds and we
read the DOM (and can take a screenshot) whenever we like.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from msm.control_plane.links import ProxyLink
from msm.control_plane.media import MediaPlacer
from msm.control_plane.metrics import control_registry
from msm.control_plane.resolver import Route, StaticResolver
from msm.control_plane.server import ControlPlane
from msm.control_plane.store import StreamRecord, ViewerRecord
from msm.control_plane.upstream_state import UpstreamState
from msm.control_plane.web import WebServer, create_app
from msm.mesh import LocalMesh
from msm.protos import media_pb2 as mpb
from msm.protos import msm_pb2 as pb
from msm.runtime.redact import session_tag
from tests.peers import FfmpegViewer, GstRtspServer, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The page polls every second; the test asks for every 250 ms (?interval=) so the
# plots gain enough points in two seconds instead of eight.
POLL_MS = 250
MIN_POINTS = 8


# -- the API, against a control plane with no proxies --------------------------------------------------
@contextlib.asynccontextmanager
async def client_for(control: ControlPlane, **kwargs: Any) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = TestClient(TestServer(create_app(control, **kwargs)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_api_streams_is_empty_without_streams() -> None:
    async with client_for(ControlPlane(StaticResolver())) as client:
        response = await client.get("/api/streams")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"streams": []}


async def test_api_streams_uses_proto_field_names_and_prints_defaults() -> None:
    """...and shows no secret: the route's credentials and token are masked, the viewer is a tag."""
    control = ControlPlane(StaticResolver())
    stream = StreamRecord(route=Route(name="cam", url="rtsp://admin:SuperSecret@192.0.2.1/live?token=t0k"),
                          upstream_state=UpstreamState.PLAYING)
    stream.tracks.append(pb.Track(index=0, kind="video", clock_rate=90000, encoding="H264/90000"))
    control.planner.store.put_stream(stream)
    control.planner.store.put_viewer(ViewerRecord(stream_id="cam", session_id="s1", stub_id="gateway",
                                                  host="192.0.2.9", playing=True))
    async with client_for(control) as client:
        body = await (await client.get("/api/streams")).json()
    (info,) = body["streams"]
    assert info["name"] == "cam" and info["upstream_url"] == "rtsp://***@192.0.2.1/live?token=***"
    assert info["upstream_state"] == "playing" and info["upstream_sessions_opened"] == 0
    assert info["viewers"] == [{"session_id": "", "session_tag": session_tag("s1"), "host": "192.0.2.9",
                                "playing": True, "legs": []}]
    assert len(session_tag("s1")) == 8 and session_tag("s1") != session_tag("s2")
    assert "SuperSecret" not in json.dumps(body) and "t0k" not in json.dumps(body)
    (track,) = info["tracks"]
    assert track["track"]["clock_rate"] == 90000
    # No proxy flow yet: every counter is still there, at zero (64-bit ones as strings, per proto3 JSON).
    assert track["flow"]["packets_lost"] == "0" and track["flow"]["jitter_ms"] == 0
    assert "rtt_ms" not in json.dumps(body)   # optional, unset: absent rather than a made-up 0


async def test_api_streams_skips_an_unreachable_proxy() -> None:
    control = ControlPlane(StaticResolver())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}")
    control.planner.proxies["n1"] = ProxyLink(pb.ProxyHello(node="n1"), channel)
    try:
        async with client_for(control) as client:
            response = await client.get("/api/streams")
            assert response.status == 200 and await response.json() == {"streams": []}
    finally:
        await channel.close()


async def test_api_streams_answers_503_when_a_proxy_link_is_broken() -> None:
    control = ControlPlane(StaticResolver())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}")
    await channel.close()    # as after the proxy restarted: the old link's channel is closed
    control.planner.proxies["n1"] = ProxyLink(pb.ProxyHello(node="n1"), channel)
    async with client_for(control) as client:
        response = await client.get("/api/streams")
        assert response.status == 503
        body = await response.json()
        assert body["status"] == 503 and "proxy" in body["error"]


async def test_api_media_lists_placements_and_says_which_node_did_not_answer() -> None:
    """Without proxies: the group placed on node n1 is listed, and n1 with why it has no counters; a node whose
    link this control plane closed says so; a query with no placer lists nothing. Answers are shared for
    MEDIA_FRESH seconds."""
    control = ControlPlane(StaticResolver())
    await control.media.join("urn:test:<g>", "n1", "memif:tx", sender=True)
    await control.media.join("urn:test:<g>", "n1", "memif:rx", sender=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}")
    await channel.close()
    control.planner.proxies["n2"] = ProxyLink(pb.ProxyHello(node="n2"), channel)
    await control.media.join("urn:test:other", "n2", "memif:rx", sender=False)
    async with client_for(control, registry=control_registry(control)) as client:
        response = await client.get("/api/media")
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        metrics = await (await client.get("/metrics")).text()
        for line in ("msm_media_placed_groups 2.0", 'msm_media_placement_members{group="urn:test:<g>",node="n1",'
                     'role="sender"} 1.0', 'msm_media_placement_members{group="urn:test:other",node="n2",'
                     'role="receiver"} 1.0'):
            assert line in metrics.splitlines(), metrics
        body = await response.json()
        await control.media.leave("urn:test:other", "n2", "memif:rx", sender=False)
        assert await (await client.get("/api/media")).json() == body   # the same listing, within MEDIA_FRESH
    (placed, other) = body["groups"]
    assert placed["urn"] == "urn:test:<g>" and placed["sender_node"] == "n1" and placed["sender_member"] == "memif:tx"
    assert placed["receivers"] == [{"node": "n1", "members": 1, "provider": "", "linked": True, "error": ""}]
    assert other["urn"] == "urn:test:other" and other["sender_node"] == ""
    nodes = {n["node"]: n for n in body["nodes"]}
    assert nodes["n1"]["error"] == "no proxy registered for this node" and nodes["n1"]["stats"]["groups"] == []
    assert "closed" in nodes["n2"]["error"]
    async with client_for(FakeControl(pb.ListStreamsResponse())) as client:   # type: ignore[arg-type]
        assert await (await client.get("/api/media")).json() == {"groups": [], "nodes": []}


async def test_metrics_healthz_page_and_unknown_paths() -> None:
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("msm_web_test_hits", "a counter for the test", registry=registry).inc(3)
    async with client_for(ControlPlane(StaticResolver()), registry=registry) as client:
        metrics = await client.get("/metrics")
        assert metrics.status == 200
        assert metrics.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
        assert "msm_web_test_hits_total 3.0" in await metrics.text()

        health = await client.get("/healthz")
        assert health.status == 200
        assert await health.json() == {"status": "ok", "streams": 0, "proxies": 0, "stubs": 0}

        page = await client.get("/")
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
        assert '<script src="/static/app.js">' in html and "No streams yet" in html
        for asset in ("/static/app.js", "/static/style.css"):
            assert (await client.get(asset)).status == 200, asset

        for path in ("/nope", "/api/nope", "/static/nope.js", "/static/../web.py"):
            assert (await client.get(path)).status == 404, path
    async with client_for(ControlPlane(StaticResolver())) as client:
        assert (await client.get("/metrics")).status == 404


async def test_web_server_binds_port_zero_and_a_busy_port_is_an_error() -> None:
    control = ControlPlane(StaticResolver())
    server = WebServer(create_app(control))
    await server.start("127.0.0.1:0")
    try:
        host, port = server.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        async with aiohttp.ClientSession() as session, session.get(server.url + "healthz") as response:
            assert response.status == 200
        with pytest.raises(OSError):
            await WebServer(create_app(control)).start(server.address)
    finally:
        await server.stop()
    await server.stop()   # idempotent


# -- a real browser on a live mesh ----------------------------------------------------------------------
class Chromium:
    """Headless Chromium with one page, driven over CDP (one call at a time)."""

    def __init__(self, process: asyncio.subprocess.Process, profile: tempfile.TemporaryDirectory[str],
                 session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.process = process
        self.profile = profile
        self.session = session
        self.ws = ws
        self._ids = 0

    @classmethod
    async def start(cls, binary: str, timeout: float = 20.0) -> Chromium:
        profile = tempfile.TemporaryDirectory(prefix="msm-chromium-")
        process = await asyncio.create_subprocess_exec(
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "--window-size=1280,900", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", f"--user-data-dir={profile.name}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)   # its own process group: close() ends the renderers too
        session = aiohttp.ClientSession()
        try:
            # Chromium writes the port it chose to <profile>/DevToolsActivePort once it listens.
            port_file = Path(profile.name, "DevToolsActivePort")
            deadline = time.monotonic() + timeout
            while not (text := await asyncio.to_thread(_read, port_file)):
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not start (status {process.returncode})")
                await asyncio.sleep(0.1)
            port = int(text.split()[0])
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page = next(t for t in targets if t.get("type") == "page")
            ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        except BaseException:
            await session.close()
            await _end(process)
            profile.cleanup()
            raise
        return cls(process, profile, session, ws)

    async def call(self, method: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        self._ids += 1
        await self.ws.send_json({"id": self._ids, "method": method, "params": params})
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"DevTools connection closed ({message.type.name})")
                data = json.loads(message.data)
                if data.get("id") == self._ids:   # anything else is an event we did not ask for
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    result: dict[str, Any] = data["result"]
                    return result

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: str) -> None:
        result = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(Path(path).write_bytes, base64.b64decode(result["data"]))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.session.close()
        await _end(self.process)
        self.profile.cleanup()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


async def _end(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


# What the page shows, read from the DOM by the stable data-* attributes it draws.
DRAWN = """(() => {
  const all = (sel) => [...document.querySelectorAll(sel)];
  if (!document.getElementById("status")) return null;   // still loading
  return {
    polls: Number(document.body.dataset.polls),
    status: document.getElementById("status").dataset.state,
    empty: !document.getElementById("empty").hidden,
    streams: all("section.stream").map((s) => s.dataset.stream),
    source: all('svg.graph[data-stream="cam"] [data-node="source"]').map((n) => n.dataset.state),
    proxy: all('svg.graph[data-stream="cam"] [data-node="proxy"]').map((n) => n.dataset.proxyNode),
    viewers: all('svg.graph[data-stream="cam"] g.node.viewer').map((n) => n.dataset.viewer),
    playing: all('svg.graph[data-stream="cam"] g.node.viewer').map((n) => n.dataset.playing),
    edges: all('svg.graph[data-stream="cam"] [data-edge="proxy-viewer"]').map((n) => n.dataset.viewer),
    series: all('svg.chart[data-stream="cam"] polyline.series.ingress').map((p) => ({
      track: p.closest("svg").dataset.track, metric: p.dataset.metric, points: Number(p.dataset.points),
      drawn: p.getAttribute("points").trim().split(/\\s+/).filter(Boolean).length,
    })),
  };
})()"""


async def wait_drawn(browser: Chromium, ready: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        drawn: dict[str, Any] = await browser.evaluate(DRAWN)
        if drawn and ready(drawn):
            return drawn
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not draw what was expected in {timeout} s: {drawn}")
        await asyncio.sleep(0.25)


@pytest.fixture
def chromium() -> str:
    """The browser binary; requested before the mesh so a machine without it skips at once."""
    if CHROMIUM is None:
        reason = "chromium is not installed (apt-get install chromium)"
        print(f"skipping: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return CHROMIUM


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_browser_draws_the_stream_graph_and_live_plots(
        chromium: str, gst: GstRtspServer, mesh: LocalMesh) -> None:
    assert mesh.control is not None
    web = WebServer(create_app(mesh.control.control))
    await web.start("127.0.0.1:0")
    browser: Chromium | None = None
    viewers: list[FfmpegViewer] = []
    try:
        browser = await Chromium.start(chromium)
        await browser.open(f"{web.url}?interval={POLL_MS}")
        # Nobody has opened the stream yet: the page says so.
        drawn = await wait_drawn(browser, lambda d: d["polls"] >= 1, timeout=10)
        assert drawn["empty"] and drawn["streams"] == [] and drawn["status"] == "ok"

        for transport in ("udp", "tcp"):
            viewers.append(await FfmpegViewer.start(mesh.url("cam"), transport=transport))
        await asyncio.gather(*(v.wait_frames(10, timeout=30) for v in viewers))
        response = await mesh.control.control.ListStreams(pb.ListStreamsRequest(), None)
        (stream,) = response.streams
        sessions = sorted(v.session_tag for v in stream.viewers)   # the page shows tags, never session ids
        assert len(sessions) == 2 and all(len(t) == 8 for t in sessions)
        assert [v.session_id for v in stream.viewers] == ["", ""]

        def ready(d: dict[str, Any]) -> bool:
            return (sorted(d["viewers"]) == sessions and len(d["series"]) == 6
                    and all(s["points"] >= MIN_POINTS for s in d["series"]))

        drawn = await wait_drawn(browser, ready, timeout=15)
        assert drawn["status"] == "ok" and not drawn["empty"]
        assert drawn["streams"] == ["cam"]
        assert drawn["source"] == ["playing"]
        assert drawn["proxy"] == ["local"]
        assert drawn["playing"] == ["true", "true"]
        assert sorted(drawn["edges"]) == sessions
        # Two tracks (H.264 video, audio), three plots each, every line drawn with all its points.
        assert {(s["track"], s["metric"]) for s in drawn["series"]} == {
            (t, m) for t in ("0", "1") for m in ("bitrate", "loss", "jitter")}
        assert all(s["drawn"] == s["points"] for s in drawn["series"]), drawn["series"]

        bitrate = await browser.evaluate(
            """Number(document.querySelector('svg.graph[data-stream="cam"] [data-node="proxy"] '
               + '[data-track="0"]').dataset.bitrate)""")
        assert bitrate > 0
        if os.environ.get("MSM_WEB_SCREENSHOT"):   # e.g. MSM_WEB_SCREENSHOT=/tmp/msm-web.png
            await browser.screenshot(os.environ["MSM_WEB_SCREENSHOT"])
    finally:
        for viewer in viewers:
            await viewer.stop()
        if browser is not None:
            await browser.close()
        await web.stop()


# -- a multi-node mesh, drawn from a hand-built ListStreams answer (no peers, no proxies) ----------------
class FakeControl:
    """Just what the web app asks of the control plane: its query API (and, when given, its group placer)."""

    def __init__(self, response: pb.ListStreamsResponse, media: MediaPlacer | None = None) -> None:
        self.response = response
        self.media = media

    async def list_streams(self) -> pb.ListStreamsResponse:
        return self.response

    def counts(self) -> dict[str, int]:
        return {"streams": len(self.response.streams), "proxies": 0, "stubs": 0}


def relayed_streams() -> pb.ListStreamsResponse:
    """Stream cam sourced on node-a: viewer a1 there, node-b fed through leg relay@node-b, viewers b1, b2 on node-b.

    Both tracks are relayed to node-b, so the page must still draw one relay node for it.
    """
    def leg(leg_id: str, flow_id: str, packets: int, *, jitter: float | None = None) -> pb.LegStats:
        stats = pb.LegStats(leg_id=leg_id, flow_id=flow_id, enabled=True, packets_sent=packets,
                            bytes_sent=packets * 1200, destination=pb.Endpoint(host="10.0.0.9", rtp_port=5000))
        if jitter is not None:
            stats.has_report = True
            stats.viewer_jitter_ms = jitter
            stats.viewer_fraction_lost = 0.004
            stats.rtt_ms = 0.8
        return stats

    def flow(flow_id: str, node: str, bitrate: float, lost: int, jitter: float,
             legs: list[pb.LegStats]) -> pb.FlowStats:
        return pb.FlowStats(flow_id=flow_id, node=node, bitrate_bps=bitrate, packets_received=9000 - lost,
                            packets_expected=9000, packets_lost=lost, jitter_ms=jitter, legs=legs)

    tracks = [pb.Track(index=0, kind="video", clock_rate=90000, encoding="H264/90000"),
              pb.Track(index=1, kind="audio", clock_rate=8000, encoding="PCMU/8000")]
    response = pb.ListStreamsResponse()
    stream = response.streams.add(stream_id="cam-1", name="cam", upstream_url="rtsp://192.0.2.1/live",
                                  upstream_state="playing", upstream_sessions_opened=1)
    viewer_legs: dict[str, list[pb.LegStats]] = {"a1": [], "b1": [], "b2": []}
    for track in tracks:
        i = track.index
        source_id, relay_id = f"cam-1/{i}/1", f"cam-1/{i}/1@node-b"
        a1, b1, b2 = (leg(f"{s}/{i}", source_id if s == "a1" else relay_id, 4000 + 100 * n, jitter=1.5 if n else None)
                      for n, s in enumerate(("a1", "b1", "b2")))
        for session, stats in (("a1", a1), ("b1", b1), ("b2", b2)):
            viewer_legs[session].append(stats)
        source = flow(source_id, "node-a", 2.4e6 if i == 0 else 64e3, 9, 1.25,
                      [a1, leg("relay@node-b", source_id, 8500)])
        relay = flow(relay_id, "node-b", 2.3e6 if i == 0 else 63e3, 27, 3.5, [b1, b2])
        stream.tracks.add(track=track, flow=source, relays=[relay])
    for session, host in (("a1", "10.1.0.5"), ("b1", "10.2.0.7"), ("b2", "10.2.0.8")):
        stream.viewers.add(session_tag=session, host=host, playing=True, legs=viewer_legs[session])
    return response


# -- media groups, drawn from a real placer whose nodes answer with hand-built counters --------------------
HOSTILE_URN = 'urn:x:<img src=x onerror="document.body.dataset.pwned=1">&amp;'   # a URN is user input
TCP = "tcp;ofi_rxm"


class CannedNode:
    """A node's MediaPlane as the placer sees it: links are taken, ListGroups answers ``stats`` (where the
    receiver memif:c7, if there, takes 30 frames between two answers)."""

    def __init__(self, stats: mpb.ListGroupsReply) -> None:
        self.stats = stats

    async def open_link(self, *args: Any, **kwargs: Any) -> None: ...
    async def close_link(self, *args: Any, **kwargs: Any) -> None: ...
    async def expect(self, *args: Any, **kwargs: Any) -> None: ...
    async def forget(self, *args: Any, **kwargs: Any) -> None: ...

    async def list_groups(self) -> mpb.ListGroupsReply:
        for receiver in (r for g in self.stats.groups for r in g.receivers if r.name == "memif:c7"):
            receiver.frames += 30
        answer = mpb.ListGroupsReply()
        answer.CopyFrom(self.stats)
        return answer


def canned_media() -> dict[str, mpb.ListGroupsReply]:
    """cam on node-a (sender, a local receiver, a link to node-b), node-b (a receiver and a paced ST 2110
    egress), an app connection named with markup on node-a, and a group whose URN is markup."""
    def receiver(name: str, frames: int, drops: dict[str, int] | None = None) -> mpb.GroupReceiverStats:
        return mpb.GroupReceiverStats(name=name, frames=frames, bytes=frames * 5184000, drops=drops or {},
                                      has_latency=True, latency_p50_us=180.0, latency_p99_us=2400.0)

    a = mpb.ListGroupsReply(node="node-a", apps=1, endpoints=[mpb.FabricAddress(provider=TCP)])
    a.groups.add(urn="urn:cam", sender="memif:c1", frames_in=300, bytes_in=300 * 5184000,
                 receivers=[receiver("memif:c2", 297, {"no_space": 3}), receiver("node:node-b", 300)],
                 links=[mpb.GroupLinkStats(peer_node="node-b", provider=TCP, outgoing=True, frames=300,
                                           bytes=300 * 5184000, in_flight=2)])
    a.groups.add(urn=HOSTILE_URN, sender="memif:</td><script>", frames_in=5, bytes_in=500,
                 receivers=[receiver("memif:<b>x</b>", 5)])
    a.connections.add(connection="c2", app="<i>studio</i>", direction="rx", target="urn:cam", pid=41, uid=1000,
                      attached=True, frames=297, bytes=297 * 5184000, drops={"no_space": 3}, queue_depth=4,
                      has_latency=True, latency_p50_us=210.0, latency_p99_us=2600.0)
    b = mpb.ListGroupsReply(node="node-b", endpoints=[mpb.FabricAddress(provider=TCP)])
    b.groups.add(urn="urn:cam", sender="node:node-a", frames_in=300, bytes_in=300 * 5184000,
                 receivers=[receiver("memif:c7", 300), receiver("st2110:239.1.1.1:5004", 300)],
                 links=[mpb.GroupLinkStats(peer_node="node-a", provider=TCP, outgoing=False, frames=300)])
    b.bridges.add(name="<out>", direction="egress", group="urn:cam", address="239.1.1.1:5004", pacing="wide",
                  pacing_class="narrow", frames=300, bytes=300 * 5184000, packets=1300000, queue_depth=1)
    return {"node-a": a, "node-b": b}


async def media_placer() -> MediaPlacer:
    nodes = {name: CannedNode(stats) for name, stats in canned_media().items()}
    placer = MediaPlacer(nodes.get)
    for name in nodes:
        await placer.announce(name, f"proxy-{name}", {TCP: name.encode()})
    for urn, node, member, sender in (("urn:cam", "node-a", "memif:c1", True), ("urn:cam", "node-a", "memif:c2", False),
                                      ("urn:cam", "node-b", "memif:c7", False),
                                      (HOSTILE_URN, "node-a", "memif:</td><script>", True),
                                      (HOSTILE_URN, "node-a", "memif:<b>x</b>", False)):
        await placer.join(urn, node, member, sender=sender)
    return placer


MEDIA_DRAWN = """(() => {
  const all = (sel) => [...document.querySelectorAll(sel)];
  const media = document.getElementById("media");
  if (!media || media.dataset.polls === "0") return null;
  const rows = (sel) => all(sel).map((r) => [r.dataset.node, r.dataset.receiver || r.dataset.peer || "",
                                             r.dataset.frames || ""]);
  return {
    hidden: media.hidden,
    urns: all("#media .mgroup").map((g) => g.dataset.urn),
    titles: all("#media .mgroup h3").map((h) => h.textContent),
    senders: all('#media .mgroup [data-role="sender"]').map((b) => b.textContent),
    placed: all('#media .mgroup [data-role="receivers"]').map((b) => b.textContent),
    nodes: rows("#media .mgroup tr.mnode"),
    receivers: rows("#media .mgroup tr.mreceiver"),
    cells: Object.fromEntries(all("#media .mgroup tr.mreceiver").map((r) => [`${r.dataset.node} ${r.dataset.receiver}`,
      [...r.children].map((c) => c.textContent)])),
    links: all("#media tr.mlink").map((r) => [r.dataset.node, r.dataset.peer, r.lastChild.textContent]),
    bridges: all("#media tr[data-bridge]").map((r) => [r.dataset.bridge, r.dataset.node,
      r.querySelector('[data-role="pacing"]').textContent]),
    apps: all("#media tr[data-connection]").map((r) => [...r.children].map((c) => c.textContent)),
    nodeLines: all("#media .mnodes li").map((li) => li.textContent),
    injected: all("#media img, #media script, #media i, #media b b").length + (document.body.dataset.pwned ? 100 : 0),
  };
})()"""


def check_media_drawn(drawn: dict[str, Any]) -> None:
    assert not drawn["hidden"] and drawn["urns"] == ["urn:cam", HOSTILE_URN] and drawn["titles"] == drawn["urns"]
    assert drawn["injected"] == 0, drawn          # markup in names stayed text
    assert drawn["senders"] == ["memif:c1 on node node-a", "memif:</td><script> on node node-a"]
    assert drawn["placed"][0] == f"node-a (1 · local); node-b (1 · {TCP}, linked)"
    assert drawn["nodes"] == [["node-a", "", "300"], ["node-b", "", "300"], ["node-a", "", "5"]]
    assert ["node-a", "memif:<b>x</b>", "5"] in drawn["receivers"]
    # node, member, frames, frames/s (none moved between polls), bytes, drops, queue (the app connection's),
    # p50, p99
    cells = drawn["cells"]["node-a memif:c2"]
    assert cells[1:3] == ["→ memif:c2", "297"] and cells[3] in ("–", "0.0"), cells
    assert cells[4:9] == ["1.54 GB", "no_space 3", "4", "180 µs", "2.40 ms"], cells
    assert drawn["links"] == [["node-a", "node-b", f"{TCP} · linked"], ["node-b", "node-a", f"{TCP} · linked"]]
    assert drawn["bridges"] == [["<out>", "node-b", "wide: narrow"]]
    (app,) = drawn["apps"]
    assert app[:5] == ["node-a", "c2", "<i>studio</i>", "app receives", "urn:cam"] and app[-1] == "attached"
    assert drawn["nodeLines"] == [f"node-a {TCP} · 2 groups · 1 app", f"node-b {TCP} · 1 group · 0 apps"]


RELAYED = """(() => {
  const all = (sel) => [...document.querySelectorAll(sel)];
  if (!document.body || document.body.dataset.polls === "0") return null;
  const graph = 'svg.graph[data-stream="cam"]';
  const boxes = all(`${graph} g.node`).map((n) => ({
    node: n.dataset.node || n.dataset.viewer, r: n.getBoundingClientRect() }));
  const overlaps = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
    if (a.r.left < b.r.right && b.r.left < a.r.right && a.r.top < b.r.bottom && b.r.top < a.r.bottom) {
      overlaps.push([a.node, b.node]);
    }
  }));
  return {
    proxy: all(`${graph} [data-node="proxy"]`).map((n) => n.dataset.proxyNode),
    relays: all(`${graph} [data-node="relay"]`).map((n) => n.dataset.proxyNode),
    relayEdges: all(`${graph} [data-edge="proxy-relay"]`).map((n) => n.dataset.proxyNode),
    relayStats: all(`${graph} [data-node="relay"] [data-track]`).map((n) => ({
      track: n.dataset.track, loss: Number(n.dataset.loss), jitter: Number(n.dataset.jitter),
      bitrate: Number(n.dataset.bitrate) })),
    fedBy: Object.fromEntries(all(`${graph} g.node.viewer`).map((n) => [n.dataset.viewer, n.dataset.fedBy])),
    viewerEdges: all(`${graph} [data-edge="proxy-viewer"]`).map((n) => n.dataset.viewer),
    viewerCount: document.querySelector('section.stream[data-stream="cam"] [data-role="viewers"]').textContent,
    overlaps,
  };
})()"""


@pytest.mark.timeout(60)
async def test_browser_draws_relay_nodes_and_the_viewers_they_feed(chromium: str) -> None:
    """...and the media groups below them (media.js), names full of markup drawn as text."""
    control = FakeControl(relayed_streams(), await media_placer())
    web = WebServer(create_app(control))
    await web.start("127.0.0.1:0")
    browser: Chromium | None = None
    try:
        browser = await Chromium.start(chromium)
        await browser.open(f"{web.url}?interval={POLL_MS}")
        deadline = time.monotonic() + 10
        while not (drawn := await browser.evaluate(RELAYED)):
            assert time.monotonic() < deadline, "the page did not draw the stream"
            await asyncio.sleep(0.1)
        assert drawn["proxy"] == ["node-a"]
        assert drawn["relays"] == ["node-b"] and drawn["relayEdges"] == ["node-b"]
        assert drawn["fedBy"] == {"a1": "node-a", "b1": "node-b", "b2": "node-b"}
        assert sorted(drawn["viewerEdges"]) == ["a1", "b1", "b2"]   # relay@node-b is a hop, not a viewer
        assert drawn["viewerCount"] == "3/3"
        # The relay node shows each relayed track's ingress on node-b: 27 of 9000 lost, 3.5 ms jitter.
        assert drawn["relayStats"] == [
            {"track": "0", "loss": 0.3, "jitter": 3.5, "bitrate": 2_300_000},
            {"track": "1", "loss": 0.3, "jitter": 3.5, "bitrate": 63_000}]
        assert drawn["overlaps"] == []
        while not (media := await browser.evaluate(MEDIA_DRAWN)):
            assert time.monotonic() < deadline, "the page drew no media section"
            await asyncio.sleep(0.1)
        check_media_drawn(media)
        # frames/s, timed by the listings: 30 frames a listing, one listing a second at most (MEDIA_FRESH)
        deadline = time.monotonic() + 10
        while (fps := (await browser.evaluate(MEDIA_DRAWN))["cells"]["node-b memif:c7"][3]) == "–":
            assert time.monotonic() < deadline, "no frames/s drawn"
            await asyncio.sleep(0.1)
        assert 0 < float(fps) <= 30.5, fps
        if os.environ.get("MSM_WEB_SCREENSHOT"):   # written next to it, as <name>-relays.png
            await wait_drawn(browser, lambda d: d["polls"] >= MIN_POINTS, timeout=10)   # a few plot points
            shot = Path(os.environ["MSM_WEB_SCREENSHOT"])
            await browser.screenshot(str(shot.with_name(f"{shot.stem}-relays{shot.suffix}")))
    finally:
        if browser is not None:
            await browser.close()
        await web.stop()
