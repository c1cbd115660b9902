"""Multicast out: viewers that ask ``RTP/AVP;multicast`` share one group the proxy sends once.

Four network namespaces the test creates (and deletes): ``mcp-*`` runs ``msm up`` and the
camera (GStreamer's RTSP server on its loopback); ``mca-*`` and ``mcb-*`` are viewer hosts;
``mcs-*`` holds the bridge (the switch) the other three are joined to by veth pairs. The
mesh's route ``cam`` allows multicast (``#multicast=on``), ``plain`` does not.

Multicast out. What it shows: DESCRIBE of ``cam`` announces the group (``c=IN IP4 239.../1``); ffmpeg
(``-rtsp_transport udp_multicast``) in one namespace and GStreamer's rtspsrc
(``protocols=udp-mcast``) in the other both decode the stream from the same group; the
proxy has ONE leg towards the group and sends each packet once (its leg counter equals
what the bridge port of the proxy's namespace carried to the group, counted with an nft
counter there); a multicast SETUP of ``plain`` is 461; the group's leg goes when the last
viewer leaves.

Multicast in: a route whose upstream is an SDP file (a GStreamer sender multicasting from a
viewer namespace) and one whose upstream is GStreamer's RTSP server offering multicast only;
each is received once by the proxy (the group joined) and played by ffmpeg over unicast, and
packets another host sends to the group are dropped by the flow's source check.

Needs root, ``ip``, ``nft``, ffmpeg and GStreamer (gst-launch-1.0 and the RTSP server for
/usr/bin/python3); skips, saying which, without them. Nothing touches the machine's own
network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.peers import FfmpegViewer, GstRtspServer, ffmpeg_available, gst_available

VENV_BIN = Path(sys.executable).parent
SUBNET = "10.231.7"
MESH_IP = f"{SUBNET}.1"
POOL = "239.255.231.0/28"
SOURCE_GROUP = "239.255.232.1"   # where the SDP file's sender multicasts
SOURCE_PORT = 5100
SENDER_IP = f"{SUBNET}.3"        # the second viewer namespace sends it
MC_SERVER_PORT = 8555            # ... and serves RTSP with multicast only there
FRAMES = 10


def _why_skip() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft", "gst-launch-1.0"):
        if not shutil.which(tool):
            return f"needs {tool} (apt-get install iproute2 nftables gstreamer1.0-tools)"
    return ffmpeg_available() or gst_available() or ""


pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120),
              pytest.mark.skipif(bool(_why_skip()), reason=_why_skip() or "ok")]


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10).stdout


@dataclass
class Net:
    mesh: str
    viewers: tuple[str, str]
    switch: str

    def exec(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    tag = uuid.uuid4().hex[:6]
    mesh, va, vb, switch = (f"mc{k}-{tag}" for k in "pabs")
    names = [mesh, va, vb, switch]
    try:
        for ns in names:
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _run("ip", "-n", switch, "link", "set", "br0", "up")
        for i, ns in enumerate((mesh, va, vb), start=1):
            _run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", f"p{i}", "netns", switch)
            _run("ip", "-n", switch, "link", "set", f"p{i}", "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            # Multicast joins (INADDR_ANY) and sends pick the interface by route.
            _run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        # Datagrams the proxy batches (UDP GSO) cross a veth as one frame; segmented here,
        # each is its own frame, as on a NIC, and the bridge counts datagrams.
        _run("ip", "-n", mesh, "link", "set", "eth0", "gso_max_segs", "1")
        # Count what leaves the mesh's namespace towards the pool: the proxy's copies.
        _run_input(["ip", "netns", "exec", switch, "nft", "-f", "-"],
                   f'table bridge mc {{\n counter out {{\n}}\n chain pre {{\n type filter hook prerouting priority 0;\n'
                   f' iifname "p1" ip daddr {POOL} udp dport 5004 counter name "out"\n }}\n}}\n')
        yield Net(mesh, (va, vb), switch)
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _run_input(cmd: list[str], text: str) -> None:
    subprocess.run(cmd, input=text, check=True, capture_output=True, text=True, timeout=10)


# The sender's stream: H.264 to a group, from the o= line's address (no source-filter: the group
# is joined for any sender, and the flow drops every packet from another).
SOURCE_SDP = f"""v=0
o=- 1 1 IN IP4 {SENDER_IP}
s=sender
c=IN IP4 {SOURCE_GROUP}/1
t=0 0
m=video {SOURCE_PORT} RTP/AVP 96
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1
"""


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _write(path: Path, text: str | None) -> None:
    """Write ``text`` to ``path``; None: remove it."""
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text)


@dataclass
class Mesh:
    proc: asyncio.subprocess.Process
    camera: GstRtspServer
    net: Net

    async def streams(self) -> list[dict[str, object]]:
        """``msm streams --json``'s rows, from a lighter client than ``msm`` (whose imports take
        seconds on a loaded machine): the control plane's ListStreams."""
        proc = await asyncio.create_subprocess_exec(
            *self.net.exec(self.net.mesh), sys.executable, "-c", _LIST_STREAMS,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        return list(json.loads(out))


# ingress rows (viewers, packets received) and viewer rows (one per leg, packets sent), by stream and track
_LIST_STREAMS = """
import json, grpc
from msm.protos import msm_pb2 as pb, msm_pb2_grpc as api
reply = api.ControlPlaneStub(grpc.insecure_channel("127.0.0.1:9000")).ListStreams(pb.ListStreamsRequest(), timeout=10)
rows = []
for st in reply.streams:
    for ts in st.tracks:
        track = f"{ts.track.index}:{ts.track.kind}"
        rows.append({"hop": "ingress", "stream": st.name, "track": track, "viewers": len(st.viewers),
                     "packets": ts.flow.packets_received})
        for flow in [ts.flow, *ts.relays]:
            rows += [{"hop": "viewer", "stream": st.name, "track": track, "leg": leg.leg_id,
                      "packets": leg.packets_sent} for leg in flow.legs if not leg.leg_id.startswith("relay@")]
print(json.dumps(rows))
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(net: Net) -> AsyncIterator[Mesh]:
    """``msm up`` in the mesh's namespace for the module's tests, its camera, and GStreamer's RTSP
    server offering multicast in the second viewer namespace. MSM_TEST_MULTICAST_ENGINE=python runs
    the proxy's Python data path (each path alone: test_each_data_path_...)."""
    engine = os.environ.get("MSM_TEST_MULTICAST_ENGINE", "native")
    camera = await GstRtspServer.start(prefix=net.exec(net.mesh))
    mc_server = await asyncio.create_subprocess_exec(
        *net.exec(net.viewers[1]), "/usr/bin/python3", "-c", MC_SERVER, SENDER_IP, str(MC_SERVER_PORT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    config = Path(f"/tmp/msm-mc-{net.mesh}.yaml")
    log_path = Path(f"/tmp/msm-mc-{net.mesh}.log")
    log = open(log_path, "w")   # noqa: SIM115, ASYNC230 - the mesh's log, shown on failure
    sdp_file = Path(f"/tmp/msm-mc-{net.mesh}.sdp")
    _write(sdp_file, SOURCE_SDP)
    _write(config, f"multicast_pool: {POOL}\nmulticast_ttl: 1\nroutes:\n"
           f"  cam: {{url: '{camera.url}', multicast: on}}\n  plain: '{camera.url}'\n"
           f"  sdpcam: 'file://{sdp_file}'\n"
           f"  mccam: {{url: 'rtsp://{SENDER_IP}:{MC_SERVER_PORT}/mc', transport: multicast}}\n")
    proc = await asyncio.create_subprocess_exec(
        *net.exec(net.mesh), str(VENV_BIN / "msm"), "up", "--insecure", "--config", str(config),
        "--rtsp-listen", f"{MESH_IP}:8554", "--media-host", MESH_IP,
        stdout=asyncio.subprocess.DEVNULL, stderr=log,
        env={**os.environ, "MSM_NO_NATIVE": "1" if engine == "python" else ""})
    try:
        assert mc_server.stdout is not None
        assert b"ready" in await asyncio.wait_for(mc_server.stdout.readline(), 10)
        for _ in range(100):
            probe = await asyncio.create_subprocess_exec(
                *net.exec(net.mesh), "bash", "-c", f"exec 3<>/dev/tcp/{MESH_IP}/8554",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            if await probe.wait() == 0:
                break
            assert proc.returncode is None, "msm up exited"
            await asyncio.sleep(0.1)
        yield Mesh(proc, camera, net)
    finally:
        proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
        log.close()
        print("msm up's log (shown when a test failed):\n" + _tail(log_path))
        for path in (log_path, config, sdp_file):
            _write(path, None)
        mc_server.terminate()
        await mc_server.wait()
        await camera.stop()


# One RTSP request from a viewer namespace, its answer (head and body) as text.
_RAW_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 8554), timeout=5)
s.sendall(sys.argv[2].encode())
data = b""
while b"\\r\\n\\r\\n" not in data:
    data += s.recv(4096) or sys.exit(data.decode())
head, _, body = data.partition(b"\\r\\n\\r\\n")
length = next((int(l.split(b":")[1]) for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length:")), 0)
while len(body) < length:
    body += s.recv(4096) or b"x" * length
print((head + b"\\r\\n\\r\\n" + body).decode(), end="")
"""


async def _rtsp(net: Net, ns: str, request: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *net.exec(ns), sys.executable, "-c", _RAW_CLIENT, MESH_IP, request, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    return out.decode(errors="replace")


def _sent(legs: list[dict[str, object]]) -> int:
    assert len(legs) == 1, legs
    return int(str(legs[0]["packets"]))


def _nft_count(net: Net) -> int:
    out = _run(*net.exec(net.switch), "nft", "-j", "list", "counter", "bridge", "mc", "out")
    counters = [o["counter"] for o in json.loads(out)["nftables"] if "counter" in o]
    return int(counters[0]["packets"])


def _video_legs(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The proxy's legs of the video track (``msm streams --json`` rows of hop ``viewer``)."""
    return [r for r in rows if r["hop"] == "viewer" and str(r["track"]).startswith("0:") and r["stream"] == "cam"]


@pytest.mark.asyncio(loop_scope="module")
async def test_multicast_viewers_share_one_copy(net: Net, mesh: Mesh) -> None:
    url = f"rtsp://{MESH_IP}:8554"
    described = await _rtsp(net, net.viewers[0], f"DESCRIBE {url}/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n")
    assert re.search(r"c=IN IP4 239\.255\.231\.\d+/1", described), described
    refused = await _rtsp(net, net.viewers[0],
                          f"SETUP {url}/plain/track0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP;multicast\r\n\r\n")
    assert refused.startswith("RTSP/1.0 461"), refused

    ffmpeg = await FfmpegViewer.start(f"{url}/cam", transport="udp_multicast", prefix=net.exec(net.viewers[0]))
    gst = await asyncio.create_subprocess_exec(
        *net.exec(net.viewers[1]), "gst-launch-1.0", "-e", "rtspsrc", f"location={url}/cam",
        "protocols=udp-mcast", "latency=0", "!", "rtph264depay", "!", "h264parse", "!", "avdec_h264", "!",
        "fakesink", "silent=false", "-v", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await ffmpeg.wait_frames(FRAMES, timeout=15)
        assert gst.stdout is not None
        decoded = 0
        output: list[str] = []
        while decoded < FRAMES:
            line = (await asyncio.wait_for(gst.stdout.readline(), 10)).decode(errors="replace")
            assert line, "gst-launch ended:\n" + "".join(output[-20:])
            output.append(line)
            decoded += "fakesink0: last-message = chain" in line
        rows = await mesh.streams()
        ingress = next(r for r in rows if r["hop"] == "ingress" and r["stream"] == "cam")
        legs = _video_legs(rows)
        assert ingress["viewers"] == 2 and len(legs) == 1, rows   # two viewers, one group, one leg
        before = _sent(legs)
        carried = _nft_count(net)
        # One copy: every datagram the bridge carried to the group is one the leg counted (its
        # count, read before and after, brackets the bridge's; a second copy would double it).
        after = _sent(_video_legs(await mesh.streams()))
        print(f"multicast: the group leg had sent {before} then {after} packets; the bridge carried "
              f"{carried} in between from the proxy to the group")
        assert 0 < before <= carried <= after, (before, carried, after)
    finally:
        gst.send_signal(signal.SIGINT)   # gst-launch -e: EOS, then rtspsrc's TEARDOWN
        try:
            await asyncio.wait_for(gst.wait(), 5)
        except TimeoutError:
            gst.kill()
            await gst.wait()
        await ffmpeg.stop()
    for _ in range(50):
        if not _video_legs(await mesh.streams()):
            break
        await asyncio.sleep(0.2)
    assert not _video_legs(await mesh.streams()), "the group's leg outlived its last viewer"


@pytest.mark.asyncio(loop_scope="module")
async def test_sdp_file_multicast_is_received_once_and_fanned_out(net: Net, mesh: Mesh) -> None:
    """Multicast in: a GStreamer sender multicasts H.264 as the route's SDP file says; the proxy
    joins the group and ffmpeg plays the route over unicast; packets another host sends to the
    same group are dropped by the flow's source check (counted)."""
    sender = await asyncio.create_subprocess_exec(
        *net.exec(net.viewers[1]), "gst-launch-1.0", "-q", "videotestsrc", "is-live=true", "!",
        "video/x-raw,width=320,height=240,framerate=25/1", "!", "x264enc", "tune=zerolatency",
        "speed-preset=ultrafast", "key-int-max=25", "bitrate=300", "!", "rtph264pay", "config-interval=1", "!",
        "udpsink", f"host={SOURCE_GROUP}", f"port={SOURCE_PORT}", "ttl-mc=1", "auto-multicast=false",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with FfmpegViewer(f"rtsp://{MESH_IP}:8554/sdpcam", transport="udp", frames=None,
                                prefix=net.exec(net.viewers[0])) as viewer:
            await viewer.wait_frames(FRAMES, timeout=20)
            # A spoofer on the group: the flow checks every packet's source.
            await _spoof(net, net.viewers[0])
            rows = await mesh.streams()
            await asyncio.sleep(0.3)
            assert await _dropped_wrong_source(net) >= SPOOFED
            ingress = next(r for r in rows if r["hop"] == "ingress" and r["stream"] == "sdpcam")
            legs = [r for r in rows if r["hop"] == "viewer" and r["stream"] == "sdpcam"]
            assert int(str(ingress["packets"])) > 0 and len(legs) == 1, rows
    finally:
        sender.terminate()
        await sender.wait()


SPOOFED = 20


async def _dropped_wrong_source(net: Net) -> int:
    """The proxy's count of packets the flows of ``sdpcam`` dropped for their source (its /metrics)."""
    script = ("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/metrics', "
              "timeout=5).read().decode())")
    proc = await asyncio.create_subprocess_exec(*net.exec(net.mesh), sys.executable, "-c", script,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    total = 0
    for line in out.decode().splitlines():
        if 'reason="wrong_source"' in line and 'stream="sdpcam"' in line and not line.startswith("#"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def _spoof(net: Net, ns: str) -> None:
    """RTP-looking datagrams to the source group from ``ns`` (not the declared sender)."""
    script = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
              f"[s.sendto(bytes([0x80, 96]) + bytes(10) + b'spoof', ('{SOURCE_GROUP}', {SOURCE_PORT})) "
              f"for _ in range({SPOOFED})]")
    proc = await asyncio.create_subprocess_exec(*net.exec(ns), sys.executable, "-c", script)
    assert await proc.wait() == 0


# GStreamer's RTSP server offering its stream over multicast only (gst-rtsp-server's
# set_protocols(UDP_MCAST) and an address pool): run by /usr/bin/python3 (GStreamer's gi).
MC_SERVER = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address(sys.argv[1])
server.set_service(sys.argv[2])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 ! "
                   "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=300 ! "
                   "rtph264pay name=pay0 pt=96 config-interval=1 )")
factory.set_shared(True)
factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP_MCAST)
pool = GstRtspServer.RTSPAddressPool()
pool.add_range("239.255.233.1", "239.255.233.9", 5200, 5298, 1)
factory.set_address_pool(pool)
server.get_mount_points().add_factory("/mc", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
"""


@pytest.mark.asyncio(loop_scope="module")
async def test_rtsp_server_multicast_is_received_once_and_fanned_out(net: Net, mesh: Mesh) -> None:
    """Multicast in from an RTSP server: the route's transport is multicast, the stub SETUPs the
    upstream RTP/AVP;multicast, the proxy joins the group the server answered and ffmpeg plays
    the route over unicast."""
    async with FfmpegViewer(f"rtsp://{MESH_IP}:8554/mccam", transport="udp", frames=None,
                            prefix=net.exec(net.viewers[0])) as viewer:
        await viewer.wait_frames(FRAMES, timeout=20)
        rows = await mesh.streams()
        ingress = next(r for r in rows if r["hop"] == "ingress" and r["stream"] == "mccam")
        assert int(str(ingress["packets"])) > 0, rows


# Both data paths on their own, in a namespace of the test's (a veth pair inside it): a
# multicast leg reaches a member once per packet (IP_MULTICAST_IF/TTL/LOOP on the flow's
# sockets), and a flow listening in a group forwards its declared source's packets only.
ENGINE_CHECK = """
import asyncio, socket, struct, sys
from msm.rtp_proxy.engine import Leg
from msm.rtp_proxy.flows import FlowTable

HOST, OTHER, GROUP_OUT, GROUP_IN = "10.9.9.1", "10.9.9.2", "239.255.240.1", "239.255.240.2"

def rtp(seq):
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 0x1234) + bytes(100)

def member(group, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((group, port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(HOST))
    s.settimeout(0.5)
    return s

def count(s):
    n = 0
    try:
        while True:
            s.recv(2048)
            n += 1
    except TimeoutError:
        return n

def send(source, dest, n):
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind((source, 0))
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
    for seq in range(n):
        tx.sendto(rtp(seq), dest)

async def main(engine):
    table = FlowTable(host=HOST, port_range=(31000, 31099), engine=engine)
    out = await table.add_flow("out", clock_rate=90000)
    await table.set_source("out", HOST)
    table.check_destination(GROUP_OUT, 5004, 5005, multicast=True)
    out.set_multicast(1)
    out.set_leg(Leg("group", (GROUP_OUT, 5004), (GROUP_OUT, 5005), enabled=True))
    rx = member(GROUP_OUT, 5004)
    send(HOST, out.ingress, 20)
    received_out = await asyncio.to_thread(count, rx)
    into = await table.add_flow("in", clock_rate=90000, listen=(GROUP_IN, 5300, ""))
    await table.set_source("in", OTHER)
    viewer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    viewer.bind((HOST, 0))
    viewer.settimeout(0.5)
    into.set_leg(Leg("viewer", viewer.getsockname(), (HOST, viewer.getsockname()[1] + 1), enabled=True))
    send(OTHER, (GROUP_IN, 5300), 10)
    send(HOST, (GROUP_IN, 5300), 7)
    received_in = await asyncio.to_thread(count, viewer)
    print(received_out, received_in, into.snapshot().dropped_wrong_source)
    table.close()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("engine", ["native", "python"])
def test_each_data_path_sends_to_a_group_and_listens_in_one(engine: str) -> None:
    ns = f"mce-{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")   # delivery to the namespace's own addresses
        _run("ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")   # d1: a silent far end
        _run("ip", "-n", ns, "link", "set", "d1", "up")
        for address in ("10.9.9.1/24", "10.9.9.2/24"):
            _run("ip", "-n", ns, "addr", "add", address, "dev", "d0")
        _run("ip", "-n", ns, "link", "set", "d0", "up", "multicast", "on")
        _run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "d0")
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", ENGINE_CHECK, engine],
                                capture_output=True, text=True, timeout=30, check=False,
                                env={**os.environ, "MSM_NO_NATIVE": "1" if engine == "python" else ""})
        assert result.returncode == 0, result.stderr[-2000:]
        sent_to_group, forwarded, dropped = map(int, result.stdout.split())
        # Each of the 20 packets once in the group; the declared sender's 10 forwarded, the 7 others dropped.
        assert (sent_to_group, forwarded, dropped) == (20, 10, 7), result.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
