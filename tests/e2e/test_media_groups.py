"""Multipoint groups across nodes: one sender on node A, receivers on node B, frames over libfabric.

The real pieces, each as its own process where it would run in a cluster: two *nodes* are
network namespaces joined by a veth pair (as in test_multinode.py); node A runs the
control plane (mutual TLS, certificates from a CA the test makes) and A's proxy, node B
its proxy. Each proxy is ``msm-proxy``'s own start-up (``rtp_proxy.main.start_proxy``:
DataPlane + MediaPlane on one mTLS port, fabric endpoints announced at registration) run
by this file as a small driver (``python -m tests.e2e.test_media_groups PROXY-FLAGS``)
that also plays the apps: on A a frame source joins the group as sender and publishes
frames through ``MediaNode.publish``; on B a collecting receiver joins. The driver
answers JSON commands on stdin, one per line.

What it shows: 32 frames of 3 MB cross from A to B over ``tcp;ofi_rxm`` byte-exact, with
their sequence numbers, timestamps and metadata, on ONE link placed by the control plane
(B's receiver and a second one there share it; a receiver on A gets the frames locally);
B's last receiver leaving closes the link on both proxies. A proxy naming another node
in Join, a proxy programming another proxy's MediaPlane, and callers without a mesh
certificate are all refused. A second test runs two proxies on one host, where the
receiver asks for ``shm`` and gets it.

Needs root and ``ip``, and libfabric's tcp and shm providers (``msm.ext._fabric`` built);
skips, saying what is missing, without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TRUST_DOMAIN = "cluster.local"
CONTROL_PORT, PROXY_PORT = 9000, 9001
URN = "urn:msm:group:studio-1"
FRAMES, FRAME_SIZE = 32, 3 * 1024 * 1024
CREDITS = 4
TCP, SHM = "tcp;ofi_rxm", "shm"
ANSWER_TIMEOUT = 20.0


def frame_payload(seq: int) -> bytes:
    return random.Random(seq).randbytes(FRAME_SIZE)


def frame_row(seq: int) -> list[Any]:
    """What a receiver reports of a frame: seq, timestamp, metadata, payload digest, incomplete."""
    return [seq, 90000 + 3000 * seq, f"frame-{seq}".encode().hex(), hashlib.sha256(frame_payload(seq)).hexdigest(),
            None]


# -- the driver: one proxy and its apps, in a node's namespace ------------------------------------------


class Collector:
    """A local receiving app: remembers what each frame was."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[list[Any]] = []

    def deliver(self, payload: memoryview, info: Any) -> str | None:
        self.rows.append([info.seq, info.timestamp, info.metadata.hex(), hashlib.sha256(payload).hexdigest(),
                          info.incomplete])
        return None


async def _command(media: Any, proxy: Any, collectors: dict[str, Collector], cmd: dict[str, Any]) -> Any:
    from google.protobuf.json_format import MessageToDict


    op = cmd["op"]
    if op == "ready":
        await proxy.agent.registered.wait()
        await media.announce()
        return True
    if op == "join":
        if cmd["role"] == "sender":
            placement = await media.join_sender(cmd["urn"], cmd["member"], provider=cmd.get("provider", ""))
        else:
            collectors[cmd["member"]] = Collector(cmd["member"])
            placement = await media.join_receiver(cmd["urn"], collectors[cmd["member"]],
                                                  provider=cmd.get("provider", ""))
        return MessageToDict(placement, preserving_proto_field_name=True)
    if op == "leave":
        await media.leave(cmd["urn"], cmd["member"])
        return True
    if op == "publish":
        return await _publish(media, cmd["urn"], cmd["member"], cmd["frames"])
    if op == "received":
        with media.lock:
            return list(collectors[cmd["member"]].rows)
    if op == "groups":
        return MessageToDict(media.list_groups(), preserving_proto_field_name=True)
    if op == "call":
        return await _raw_call(proxy, cmd)
    raise ValueError(f"unknown op {op}")


async def _publish(media: Any, urn: str, member: str, frames: int) -> dict[str, Any]:
    """The frame source: each frame once every other node has a credit free for it. A frame no one
    took is offered again (shm's first send to a new peer can be refused while the provider maps
    it, counted as busy); how often is reported."""
    from msm.rtp_proxy.media.groups import FrameInfo

    taken, again = [], 0
    for seq in range(frames):
        info = FrameInfo(seq=seq, timestamp=90000 + 3000 * seq, metadata=f"frame-{seq}".encode())
        for _ in range(5000):   # up to about 5 s
            if media.can_send(urn):
                count = media.publish(urn, member, memoryview(frame_payload(seq)), info)
                if count:
                    taken.append(count)
                    break
                again += 1
            await asyncio.sleep(0.001)
    return {"taken": taken, "again": again}


async def _raw_call(proxy: Any, cmd: dict[str, Any]) -> str:
    """A call as this proxy (``as``: "proxy") or with no certificate ("anonymous"); the status code's name."""
    import grpc

    from msm.protos import media_pb2 as mpb
    from msm.protos import media_pb2_grpc as mpb_grpc
    from msm.security.identity import Role
    from msm.security.tls import secure_channel

    if cmd["as"] == "anonymous":   # the mesh's CA trusted, but no client certificate to show
        creds = grpc.ssl_channel_credentials(root_certificates=proxy.tls.ca.read_bytes())
        channel = grpc.aio.secure_channel(cmd["target"], creds, options=[
            ("grpc.ssl_target_name_override", f"{cmd['server']}.{TRUST_DOMAIN}")])
    else:
        role, name = (Role.PROXY, cmd["server_node"]) if cmd["service"] == "MediaPlane" else (Role.CONTROL_PLANE, "")
        channel = secure_channel(cmd["target"], proxy.tls, role=role, name=name)
    async with channel:
        try:
            if cmd["service"] == "MediaPlane":
                await mpb_grpc.MediaPlaneStub(channel).OpenGroupLink(mpb.OpenGroupLinkRequest(
                    urn=URN, peer_node="evil", provider=TCP, peer_address=b"x" * 16, link_id=1), timeout=5)
            elif cmd.get("method") == "ListPlacements":
                await mpb_grpc.MediaControlStub(channel).ListPlacements(mpb.ListPlacementsRequest(), timeout=5)
            else:
                await mpb_grpc.MediaControlStub(channel).Join(mpb.GroupJoin(
                    urn=URN, node=cmd["node"], member="memif:evil", role=mpb.GROUP_ROLE_SENDER), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return "OK"


async def drive(argv: list[str]) -> None:
    from msm.rtp_proxy.main import parse_args, port_range, start_proxy
    from msm.runtime.process import setup_logging
    from msm.security.tls import TlsFiles

    opts = parse_args(argv)
    setup_logging(opts.log_level)
    proxy, media = await start_proxy(opts, port_range(opts.port_range), TlsFiles(opts.tls_dir))
    collectors: dict[str, Collector] = {}
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            try:
                answer = {"ok": True, "result": await _command(media, proxy, collectors, cmd)}
            except Exception as exc:   # the test wants to see refusals, not a dead driver
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                          "code": getattr(exc, "grpc_code", "")}
            print(json.dumps(answer), flush=True)
    finally:
        await media.stop()
        await proxy.stop()


# -- the test's side: namespaces, certificates, processes -----------------------------------------------


def _why_skip() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip"):
        return "needs ip (apt-get install iproute2)"
    if not (VENV_BIN / "msm-control-plane").exists():
        return f"needs {VENV_BIN / 'msm-control-plane'} (pip install -e . in the venv)"
    try:
        from msm.ext import fabric
    except ImportError as exc:
        return f"msm.ext.fabric: {exc}"
    offered = fabric.providers()
    if TCP not in offered or SHM not in offered:
        return f"libfabric's tcp;ofi_rxm and shm providers are needed (offered: {', '.join(offered) or 'none'})"
    return ""


SKIP = _why_skip()
pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(60),
              pytest.mark.skipif(bool(SKIP), reason=SKIP)]


def sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"


class Driver:
    """One proxy driver process; :meth:`ask` sends a command and waits for its answer."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put(raw.decode(errors="replace"))

    def _answer(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.popen.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(queue.Empty):
                answer: dict[str, Any] = json.loads(self.lines.get(timeout=0.2))
                return answer
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no answer to {cmd['op']} (exit {self.popen.poll()}):\n"
                                     f"{tail(self.log)}")

    def ask(self, timeout: float = ANSWER_TIMEOUT, **cmd: Any) -> Any:
        answer = self._answer(cmd, timeout)
        assert answer["ok"], (cmd, answer, tail(self.log))
        return answer["result"]

    def refused(self, **cmd: Any) -> dict[str, Any]:
        answer = self._answer(cmd, ANSWER_TIMEOUT)
        assert not answer["ok"], (cmd, answer)
        return answer


def tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


class Mesh:
    """Namespaces, a CA, the control plane and proxy drivers; everything goes in :meth:`close`."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="msm-media-groups-"))
        self.suffix = secrets.token_hex(3)
        self.octet = secrets.randbelow(250) + 1
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        from msm.security.ca import CertificateAuthority

        self.ca = CertificateAuthority.create(self.tmp / "ca", TRUST_DOMAIN)

    def files(self, role: str, name: str = "") -> Path:
        from msm.security.identity import Identity, Role
        from msm.security.tls import TlsFiles

        directory = self.tmp / f"tls-{role}-{name}"
        issued = self.ca.issue(Identity(TRUST_DOMAIN, "msm-system", f"msm-{role}", Role(role), name))
        TlsFiles(directory).write(ca_pem=self.ca.trust_bundle_pem, chain_pem=issued.chain_pem,
                                  key_pem=issued.key_pem)
        return directory

    def netns(self, name: str) -> str:
        netns = f"msmg{name}-{self.suffix}"   # g: groups (test_multinode.py names its nodes msmA-*, msmB-*)
        sh("ip", "netns", "add", netns)
        self.namespaces.append(netns)
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        return netns

    def two_nodes(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """Namespaces A and B on one veth link; (netns, ip) of each."""
        a, b = self.netns("A"), self.netns("B")
        sh("ip", "-n", a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", b)
        nodes = ((a, f"10.201.{self.octet}.1"), (b, f"10.201.{self.octet}.2"))
        for (netns, ip), link in zip(nodes, ("veth-a", "veth-b"), strict=True):
            sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", link)
            sh("ip", "-n", netns, "link", "set", link, "up")
        return nodes

    def spawn(self, name: str, netns: str, argv: list[str], *, stdio: bool = False) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            popen = subprocess.Popen(["ip", "netns", "exec", netns, *argv], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE if stdio else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if stdio else out, stderr=out)
        self.procs.append(popen)
        return popen

    def control_plane(self, netns: str, ip: str) -> str:
        listen = f"{ip}:{CONTROL_PORT}"
        self.spawn("control-plane", netns, [str(VENV_BIN / "msm-control-plane"), "--listen", listen,
                                            "--tls-dir", str(self.files("control-plane")), "--web-listen", "",
                                            "--trust-domain", TRUST_DOMAIN])
        return listen

    def proxy(self, node: str, netns: str, ip: str, control: str, *, providers: str, port: int = PROXY_PORT,
              fabric_port: int = 0) -> Driver:
        argv = [sys.executable, "-m", "tests.e2e.test_media_groups", "--node", node, "--listen", f"{ip}:{port}",
                "--media-host", ip, "--control", control, "--metrics-listen", "", "--tls-dir",
                str(self.files("proxy", node)), "--trust-domain", TRUST_DOMAIN, "--fabric-provider", providers,
                "--fabric-address", f"{ip}:{fabric_port}", "--fabric-max-frame", str(4 << 20),
                "--fabric-credits", str(CREDITS), "--fabric-peers", "2",
                "--port-range", f"{31000 + port}-{31100 + port}"]
        driver = Driver(node, self.spawn(node, netns, argv, stdio=True), self.tmp / f"{node}.log")
        driver.ask(op="ready", timeout=30)
        return driver

    def close(self) -> None:
        for popen in self.procs:
            if popen.poll() is None:
                popen.terminate()
        for popen in self.procs:
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                popen.kill()
        for netns in self.namespaces:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=20, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    built = Mesh()
    try:
        yield built
    finally:
        built.close()


def received_all(driver: Driver, member: str, count: int, timeout: float = 20.0) -> list[list[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows: list[list[Any]] = driver.ask(op="received", member=member)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def group_of(driver: Driver) -> dict[str, Any]:
    groups = driver.ask(op="groups").get("groups", [])
    return next((g for g in groups if g["urn"] == URN), {})


def test_frames_cross_nodes_once_per_node_over_tcp(mesh: Mesh) -> None:
    (netns_a, ip_a), (netns_b, ip_b) = mesh.two_nodes()
    control = mesh.control_plane(netns_a, ip_a)
    a = mesh.proxy("node-a", netns_a, ip_a, control, providers=TCP)
    b = mesh.proxy("node-b", netns_b, ip_b, control, providers=TCP)
    a.ask(op="join", role="sender", urn=URN, member="memif:camera")
    a.ask(op="join", role="receiver", urn=URN, member="memif:monitor")       # on the sender's node: local
    b.ask(op="join", role="receiver", urn=URN, member="memif:encoder")
    placement = b.ask(op="join", role="receiver", urn=URN, member="memif:recorder")
    assert placement["sender_node"] == "node-a"
    nodes = {r["node"]: r for r in placement["receivers"]}
    assert nodes["node-b"]["members"] == 2 and nodes["node-b"]["provider"] == TCP and nodes["node-b"]["linked"]

    sent = a.ask(op="publish", urn=URN, member="memif:camera", frames=FRAMES)
    assert sent == {"taken": [2] * FRAMES, "again": 0}   # the local monitor and ONE copy for node B
    expected = [frame_row(seq) for seq in range(FRAMES)]
    for driver, member in ((b, "memif:encoder"), (b, "memif:recorder"), (a, "memif:monitor")):
        assert received_all(driver, member, FRAMES) == expected, member

    sending, receiving = group_of(a), group_of(b)
    assert [(link["peer_node"], link.get("outgoing", False)) for link in sending["links"]] == [("node-b", True)]
    assert int(sending["links"][0]["frames"]) == FRAMES
    assert receiving["sender"] == "node:node-a" and int(receiving["frames_in"]) == FRAMES
    assert {r["name"] for r in receiving["receivers"]} == {"memif:encoder", "memif:recorder"}

    b.ask(op="leave", urn=URN, member="memif:encoder")
    assert group_of(a)["links"]                        # the recorder still needs the link
    b.ask(op="leave", urn=URN, member="memif:recorder")
    assert "links" not in group_of(a) and group_of(b) == {}   # B's last receiver: the link is gone on both ends
    assert a.ask(op="publish", urn=URN, member="memif:camera", frames=1)["taken"] == [1]   # the monitor alone


def test_callers_speak_only_for_themselves(mesh: Mesh) -> None:
    (netns_a, ip_a), (netns_b, ip_b) = mesh.two_nodes()
    control = mesh.control_plane(netns_a, ip_a)
    a = mesh.proxy("node-a", netns_a, ip_a, control, providers=TCP)
    b = mesh.proxy("node-b", netns_b, ip_b, control, providers=TCP)
    # B's proxy joining as if it were A's: PERMISSION_DENIED, and nothing is placed.
    assert b.ask(op="call", service="MediaControl", target=control, node="node-a", **{"as": "proxy"}) \
        == "PERMISSION_DENIED"
    # Where every group is placed is for operators, not for proxies.
    assert b.ask(op="call", service="MediaControl", method="ListPlacements", target=control, node="node-b",
                 **{"as": "proxy"}) == "PERMISSION_DENIED"
    # A proxy programming another proxy: only the control plane may.
    assert b.ask(op="call", service="MediaPlane", target=f"{ip_a}:{PROXY_PORT}", server_node="node-a",
                 **{"as": "proxy"}) == "PERMISSION_DENIED"
    # No certificate at all: the handshake itself fails (the server requires one).
    for target, server in ((control, "control-plane"), (f"{ip_a}:{PROXY_PORT}", "node-a.proxy")):
        assert b.ask(op="call", service="MediaControl", target=target, server=server, node="node-b",
                     **{"as": "anonymous"}) in ("UNAVAILABLE", "UNAUTHENTICATED")
    assert group_of(a) == {}
    # A refused join leaves nothing behind: the sender slot is still free for A's own app.
    a.ask(op="join", role="sender", urn=URN, member="memif:camera")
    answer = b.refused(op="join", role="sender", urn=URN, member="memif:other")
    assert "already has a sender" in answer["error"] and group_of(b) == {}


def test_one_host_over_shm(mesh: Mesh) -> None:
    netns = mesh.netns("H")
    ip = "127.0.0.1"
    control = mesh.control_plane(netns, ip)
    a = mesh.proxy("host-a", netns, ip, control, providers=f"{TCP},{SHM}", port=PROXY_PORT)
    b = mesh.proxy("host-b", netns, ip, control, providers=f"{TCP},{SHM}", port=PROXY_PORT + 10)
    a.ask(op="join", role="sender", urn=URN, member="memif:camera")
    placement = b.ask(op="join", role="receiver", urn=URN, member="memif:viewer", provider=SHM)
    assert {r["node"]: r["provider"] for r in placement["receivers"]} == {"host-b": SHM}
    sent = a.ask(op="publish", urn=URN, member="memif:camera", frames=FRAMES)
    assert sent["taken"] == [1] * FRAMES and sent["again"] <= 2
    assert received_all(b, "memif:viewer", FRAMES) == [frame_row(seq) for seq in range(FRAMES)]
    assert [(link["peer_node"], link["provider"]) for link in group_of(a)["links"]] == [("host-b", SHM)]


# -- what operators see: the control plane's page, its /api/media and `msm streams` --------------------------
HOSTILE = 'urn:x:<img src=x onerror="document.body.dataset.pwned=1">&amp;'   # a URN is user input
SHOWN_FRAMES = 6
TINY_SIZE = (64, 16)   # an ST 2110-20 egress's frames: 2,560 bytes, sent paced in a few ms each


async def _end_app(app: asyncio.subprocess.Process) -> None:
    app.kill()
    await app.wait()


async def _in_process_proxy(mesh: Mesh, node: str, control: str) -> tuple[Any, Any]:
    """``msm-proxy``'s own start-up in this process (DataPlane + MediaPlane on one mTLS port, a tcp endpoint
    on loopback), registered and announced."""
    from msm.rtp_proxy.main import parse_args, port_range, start_proxy
    from msm.security.tls import TlsFiles

    tls = mesh.files("proxy", node)
    opts = parse_args(["--node", node, "--listen", "127.0.0.1:0", "--media-host", "127.0.0.1", "--control", control,
                       "--metrics-listen", "", "--tls-dir", str(tls), "--trust-domain", TRUST_DOMAIN,
                       "--fabric-provider", TCP, "--fabric-address", "127.0.0.1:0", "--fabric-max-frame",
                       str(1 << 20), "--fabric-credits", str(CREDITS), "--fabric-peers", "2"])
    proxy, media = await start_proxy(opts, port_range(opts.port_range), TlsFiles(tls))
    await asyncio.wait_for(proxy.agent.registered.wait(), 10)
    await media.announce()
    return proxy, media


def _operator_state(mesh: Mesh) -> Path:
    """A state directory holding an operator certificate, as `msm streams` reads it."""
    from msm.security.identity import Identity, Role
    from msm.security.tls import TlsFiles

    state = mesh.tmp / "state"
    issued = mesh.ca.issue(Identity(TRUST_DOMAIN, "msm-system", "msm-operator", Role.OPERATOR, ""))
    TlsFiles(state / "certs" / "operator").write(ca_pem=mesh.ca.trust_bundle_pem, chain_pem=issued.chain_pem,
                                                 key_pem=issued.key_pem)
    return state


def _msm_streams(control: str, state: Path, *extra: str) -> str:
    """`msm streams` itself (its main, in a thread of this process: no second interpreter to start)."""
    import io

    from msm.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["streams", "--control", control, "--state-dir", str(state), "--metrics-listen", "127.0.0.1:1",
                     *extra])
    assert code == 0, out.getvalue()
    return out.getvalue()


async def test_page_api_and_msm_streams_show_groups_of_every_node(mesh: Mesh) -> None:
    """A group with its sender and a receiver on node A and a receiver on node B (linked over tcp), an ST 2110
    egress on B and an app's connection on A: the control plane's /api/media (what the page draws) and
    `msm streams` show both nodes' counters, the link, the bridge's measured pacing class and the connection;
    node A's /metrics the link. A hostile URN and member names are carried as data (test_web's browser test
    checks the page draws such names as text)."""
    import aiohttp

    from msm.control_plane.metrics import control_registry
    from msm.control_plane.resolver import StaticResolver
    from msm.control_plane.server import ControlPlaneServer
    from msm.control_plane.web import WebServer, create_app
    from msm.rtp_proxy.media.agent import MediaAgent
    from msm.rtp_proxy.media.bridges import BridgeSet, BridgeSpec
    from msm.rtp_proxy.media.groups import FrameInfo
    from msm.rtp_proxy.media.metrics import MediaCollector
    from msm.rtp_proxy.media.st2110_timing import CLASSES
    from msm.sdk.rfc4175 import VideoFormat
    from msm.sdk.st2110_sdp import VideoStream
    from msm.security.tls import TlsFiles

    server = ControlPlaneServer(StaticResolver(), listen="127.0.0.1:0",
                                tls=TlsFiles(mesh.files("control-plane")))
    await server.start()
    web = WebServer(create_app(server.control, registry=control_registry(server.control)))
    started: list[tuple[Any, Any]] = []
    cleanup: list[Callable[[], Awaitable[None] | None]] = []
    try:
        await web.start("127.0.0.1:0")
        for node in ("node-a", "node-b"):
            started.append(await _in_process_proxy(mesh, node, server.address))
        (_, a), (_, b) = started
        monitor, encoder, odd = Collector("memif:monitor"), Collector("memif:encoder"), Collector("memif:<b>x</b>")
        await a.join_sender(URN, "memif:camera")
        await a.join_receiver(URN, monitor)
        await b.join_receiver(URN, encoder)
        # Node B: an ST 2110-20 egress of the group, paced (wide); node A: the media agent and an app holding
        # a receiving connection. Each proxy's collector hands ListGroups its bridges and agent, as msm-proxy's.
        tiny = VideoFormat("YCbCr-4:2:2", 10, *TINY_SIZE)
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cleanup.append(sink.close)
        sink.bind(("127.0.0.1", 0))
        bridges = BridgeSet(b)
        cleanup.append(bridges.stop)
        await bridges.add(BridgeSpec("out<1>", "egress", URN, VideoStream("127.0.0.1", sink.getsockname()[1],
                                                                           tiny, rate=Fraction(100))))
        MediaCollector(b, bridges)
        agent = MediaAgent(mesh.tmp / "media", a, dir_mode=0o700)
        await agent.start()
        cleanup.append(agent.stop)
        scraped = MediaCollector(a, agent=agent.snapshot)
        app = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "tests" / "sdk_app.py"), "hold", "--urn", URN, "--direction", "rx",
            env={**os.environ, "MSM_PROXY": f"unix:{agent.socket_path}"}, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        cleanup.append(lambda: _end_app(app))
        assert app.stdout is not None and await app.stdout.readline() == b"ready\n"
        await a.join_sender(HOSTILE, "memif:</td><script>")
        await a.join_receiver(HOSTILE, odd)
        for seq in range(SHOWN_FRAMES):
            for _ in range(500):
                if a.can_send(URN):
                    break
                await asyncio.sleep(0.01)
            assert a.publish(URN, "memif:camera", memoryview(bytes(tiny.frame_bytes)), FrameInfo(seq, seq)) == 3
            a.publish(HOSTILE, "memif:</td><script>", memoryview(b"x" * 100), FrameInfo(seq, seq))
            await asyncio.sleep(0.02)   # two frame times of the egress (100 frames/s): it is never busy
        for _ in range(500):   # until node B's receiver has them all and its egress has sent them
            if [br.frames for br in b.list_groups().bridges] == [SHOWN_FRAMES] and len(encoder.rows) == SHOWN_FRAMES:
                break
            await asyncio.sleep(0.01)

        async with aiohttp.ClientSession() as session:
            async with session.get(web.url + "api/media") as response:
                assert response.status == 200
                body = await response.json()
            async with session.get(web.url) as response:
                html = await response.text()
            async with session.get(web.url + "metrics") as response:
                placed_metrics = (await response.text()).splitlines()
        assert f'msm_media_placement_linked{{group="{URN}",node="node-b",provider="{TCP}"}} 1.0' in placed_metrics
        assert '<script src="/static/media.js">' in html and 'id="media"' in html
        placed = {p["urn"]: p for p in body["groups"]}
        assert placed[URN]["sender_node"] == "node-a" and placed[URN]["sender_member"] == "memif:camera"
        assert {(r["node"], r["linked"]) for r in placed[URN]["receivers"]} == {("node-a", True), ("node-b", True)}
        assert placed[HOSTILE]["sender_member"] == "memif:</td><script>"   # data, as given
        nodes = {n["node"]: n for n in body["nodes"]}
        assert sorted(nodes) == ["node-a", "node-b"] and all(n["error"] == "" for n in nodes.values())
        (conn,) = nodes["node-a"]["stats"]["connections"]
        groups = {(node, g["urn"]): g for node, n in nodes.items() for g in n["stats"]["groups"]}
        sending, receiving = groups[("node-a", URN)], groups[("node-b", URN)]
        assert int(sending["frames_in"]) == SHOWN_FRAMES and int(receiving["frames_in"]) == SHOWN_FRAMES
        assert {r["name"]: int(r["frames"]) for r in sending["receivers"]} == {
            "memif:monitor": SHOWN_FRAMES, "node:node-b": SHOWN_FRAMES, f"memif:{conn['connection']}": SHOWN_FRAMES}
        rx = next(r for r in receiving["receivers"] if r["name"] == "memif:encoder")
        assert int(rx["frames"]) == SHOWN_FRAMES and rx["has_latency"]
        assert 0 < rx["latency_p50_us"] <= rx["latency_p99_us"]
        (link,) = sending["links"]
        assert link["peer_node"] == "node-b" and link["outgoing"] and int(link["frames"]) == SHOWN_FRAMES
        assert int(groups[("node-a", HOSTILE)]["frames_in"]) == SHOWN_FRAMES
        assert all(e["address"] == "" for n in nodes.values() for e in n["stats"]["endpoints"])
        (bridge,) = nodes["node-b"]["stats"]["bridges"]
        assert (bridge["name"], bridge["direction"], bridge["group"]) == ("out<1>", "egress", URN)
        assert bridge["pacing"] == "wide"
        assert int(bridge["frames"]) == SHOWN_FRAMES and bridge["pacing_class"] in CLASSES, bridge
        assert (conn["direction"], conn["target"], conn["attached"]) == ("rx", URN, True), conn
        assert int(conn["frames"]) == SHOWN_FRAMES and nodes["node-a"]["stats"]["apps"] == 1, conn

        # Node A's /metrics (its collector's families): the fabric link out to B, beside the group's.
        samples = {(m.name, m.labels.get("group"), m.labels.get("peer")): m.value
                   for family in scraped.collect() for m in family.samples}
        assert samples[("msm_media_link_frames_total", URN, "node-b")] == SHOWN_FRAMES
        assert samples[("msm_media_link_in_flight_frames", URN, "node-b")] == 0
        assert samples[("msm_media_connection_queue_depth", None, None)] == int(conn["queue_depth"])
        # Frames published in the proxy (no memif sender to share) reach the app as copies, counted.
        assert samples[("msm_media_connection_copied_frames_total", None, None)] == SHOWN_FRAMES
        assert samples[("msm_media_connection_copied_bytes_total", None, None)] == SHOWN_FRAMES * tiny.frame_bytes
        assert samples[("msm_media_connection_by_reference_frames_total", None, None)] == 0

        state = _operator_state(mesh)
        table = await asyncio.to_thread(_msm_streams, server.address, state)
        lines = table.splitlines()
        assert any(line.startswith(URN) and "memif:camera on node-a" in line for line in lines), table
        encoder_line = next(line for line in lines if "-> memif:encoder" in line)
        assert encoder_line.split()[2:4] == ["node-b", str(SHOWN_FRAMES)], table
        assert any("=> node node-b (tcp;ofi_rxm, linked)" in line for line in lines), table
        bridge_line = next(line for line in lines if line.startswith("out<1>"))
        assert bridge_line.split()[1:3] == ["node-b", "egress"] and f"wide: {bridge['pacing_class']}" in bridge_line
        assert any(line.startswith(conn["connection"]) and URN in line for line in lines), table
        rows = json.loads(await asyncio.to_thread(_msm_streams, server.address, state, "--json"))
        shown = {(r["node"], r.get("receiver")): r["frames"] for r in rows if r["hop"] == "media-receiver"}
        assert shown[("node-b", "memif:encoder")] == SHOWN_FRAMES
        assert shown[("node-a", "memif:<b>x</b>")] == SHOWN_FRAMES
        assert any(r["hop"] == "media-group" and r["group"] == HOSTILE for r in rows)
    finally:
        for step in reversed(cleanup):
            done = step()
            if done is not None:
                await done
        for proxy, media in started:
            await media.stop()
            await proxy.stop()
        await web.stop()
        await server.stop()


async def test_a_listing_is_bounded_and_survives_a_broken_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """ListGroups lists at most MAX_LISTED_RECEIVERS receivers and MAX_LISTED_CONNECTIONS connections (the rest
    counted in left_out); a source of bridges and connections that fails leaves them out, not the groups."""
    from msm.rtp_proxy.media import metrics, plane
    from msm.rtp_proxy.media.metrics import MediaCollector

    monkeypatch.setattr(plane, "MAX_LISTED_RECEIVERS", 3)
    monkeypatch.setattr(metrics, "MAX_LISTED_CONNECTIONS", 2)
    node = plane.MediaNode("n")
    for urn in ("urn:a", "urn:b"):
        for i in range(2):
            await node.join_receiver(urn, Collector(f"memif:{urn}-{i}"))
    snapshot = {"apps": 3, "connections": [{"connection": f"c{i}", "frames": "7", "drops": {"x": None}}
                                           for i in range(3)] + ["not a connection"]}
    MediaCollector(node, agent=lambda: snapshot)
    reply = node.list_groups()
    assert [len(g.receivers) for g in reply.groups] == [2, 1] and reply.apps == 3
    assert [(c.connection, c.frames, dict(c.drops)) for c in reply.connections] == [("c0", 7, {"x": 0}),
                                                                                     ("c1", 7, {"x": 0})]
    assert reply.left_out == 1 + 1   # one receiver, one connection
    MediaCollector(node, agent=lambda: {"connections": 5})   # an agent's answer of the wrong shape
    reply = node.list_groups()
    assert len(reply.groups) == 2 and not reply.connections and node.stats_errors == 1


async def test_only_the_expected_link_from_its_peer_gets_in() -> None:
    """In one process over loopback: a known peer on another link id, or another known peer on the
    right id, is dropped and counted; the expected link's frames get in."""
    from msm.rtp_proxy.media.groups import FrameInfo
    from msm.rtp_proxy.media.plane import MediaNode, open_endpoints

    nodes = [MediaNode(name, endpoints=open_endpoints([TCP], "127.0.0.1", max_frame=1 << 20, credits=2,
                                                      max_peers=2)) for name in ("a", "b", "mallory")]
    a, b, mallory = nodes
    try:
        for node in nodes:
            node.start()
        address = {node.node: node.endpoints[TCP].local_address() for node in nodes}
        sink = Collector("memif:rx")
        await b.join_receiver(URN, sink)
        b.expect(URN, "a", TCP, address["a"], 7)
        b.endpoints[TCP].add_peer(address["mallory"])   # known to b (another group's sender, say)
        for sender, link_id in ((a, 8), (mallory, 7), (a, 7)):
            await sender.join_sender(URN, "memif:tx")
            sender.open_link(URN, "b", TCP, address["b"], link_id)
            for _ in range(500):   # until b has granted credit and the frame went
                if sender.publish(URN, "memif:tx", memoryview(b"x" * 1000), FrameInfo(link_id, 0)):
                    break
                await asyncio.sleep(0.01)
            sender.close_link(URN, "b")
        for _ in range(200):
            if sink.rows and sum(b.inbound.dropped.values()) == 2:
                break
            await asyncio.sleep(0.01)
        assert [row[0] for row in sink.rows] == [7]
        assert dict(b.inbound.dropped) == {"unknown_link": 1, "wrong_peer": 1}
        assert b.list_groups().dropped == {"unknown_link": 1, "wrong_peer": 1}
    finally:
        for node in nodes:
            await node.stop()


if __name__ == "__main__":
    asyncio.run(drive(sys.argv[1:]))
