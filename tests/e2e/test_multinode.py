"""Two Kubernetes nodes on one machine, built from network namespaces, and a PLAY across them.

The journey of a PLAY (docs/architecture.md) end to end, with every component as its own
process, each where it would run in a cluster:

* two *nodes*: network namespaces ``msmA-*`` and ``msmB-*`` joined by a veth pair (the
  node network), forwarding, each routing the other's pod CIDR through it. Everything a
  node runs on its host network runs inside its namespace: node A holds the (fake)
  Kubernetes API server, the control plane and A's RTP proxy; node B its RTP proxy.
* *pods*: one network namespace each, set up as a container runtime does: the real
  ``loopback``, ``bridge`` and ``host-local`` plugins (Debian's containernetworking-plugins)
  run on the node, then ``msm-cni`` chained after the bridge, exactly as ``msm-cni install``
  deploys it. It reads each pod through the API server (kubeconfig) and installs the
  redirect in annotated pods only.
* the Kubernetes API: ``python -m tests.fake_kube`` serving the hand-written objects in
  ``tests/data/k8s/mn_*.json`` (Pods, the ``camera-svc`` Service, its EndpointSlice). The
  test plays the kubelet and the EndpointSlice controller: pods are created Pending, get
  their IPs from the CNI result, and the camera's EndpointSlice appears (over the control
  plane's watch) once the camera pod runs.
* a *camera* pod (node A) running GStreamer's RTSP server on :554; *viewer* pods running
  plain ffmpeg (and ffprobe) against ``rtsp://10.96.0.10:554/test`` (the Service's ClusterIP): two on
  node B (UDP and TCP-interleaved) and one on node A (UDP). Every annotated pod runs
  ``msm-stub`` as UID 1337, as the webhook injects it.

The trust chain as the chart sets it up, with nothing in plaintext: a mesh CA made as Helm's
``genCAWithKey`` makes it (a CN only, so the control plane is told its trust domain), given
to the control plane alone; the control plane serves mutual TLS on 9000 and certificate
bootstrap on 9002; each proxy and each stub starts with a projected service-account token
minted by the API server (node-bound for the proxies' service account, pod-bound for the
stubs) and the trust bundle, and gets its certificate through ``IssueCertificate`` (the API
server reviews the token). No component is given ``--insecure``. The test reads the mesh with
certificates of its own from the same CA (an operator's for ``msm streams``).

What it shows: every viewer decodes frames; the camera sees one RTSP client and one
session; exactly one RTP leg per track crosses from node A to node B (seen in the
proxies' flow tables and on the wire: the UDP node A sends to node B goes to B's relay
ports only, and nothing on node A sends to node B's pods); node B's proxy fans out to both
of its viewers; every hop (camera -> A, A -> B, each viewer leg) has packet counts in
``msm streams --json``. The relay flows between the nodes are SRTP with no SRTP errors, and
on the node network (tshark on node A's veth and bridge) every packet of the A -> B leg
carries the camera's RTP header, a payload that is not the camera's and 10 bytes more (the
HMAC-SHA1-80 tag). A pod without the annotation keeps no redirect: its connection to
the ClusterIP goes out of the pod and reaches no stub.

Needs root, ``ip``, ``nft``, ``nsenter``, ``setpriv``, /usr/lib/cni, GStreamer's RTSP
server for /usr/bin/python3, ffmpeg, and a venv UID 1337 can run; skips, saying what is
missing, without them. Never touches the machine's own network namespace: every address
used is inside namespaces the test creates and deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from msm.cli import render_table
from tests.fake_kube import helm_mesh_ca
from tests.peers import (
    SYSTEM_PYTHON,
    FfmpegViewer,
    GstRtspServer,
    ffmpeg_available,
    ffprobe_streams,
    gst_available,
)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SYSTEM_CNI = Path("/usr/lib/cni")
K8S = REPO / "tests" / "data" / "k8s"
STUB_UID = 1337
NAMESPACE = "media"
CLUSTER_IP = "10.96.0.10"
SERVICE = "camera-svc"
STREAM_URL = f"rtsp://{CLUSTER_IP}:554/test"
FRAMES = 30
API_PORT = 6443
CONTROL_PORT = 9000
PROXY_PORT = 9001
BOOTSTRAP_PORT = 9002
STARTUP_TIMEOUT = 20.0
ADMIN_TIMEOUT = 10.0
TRUST_DOMAIN = "cluster.local"
MESH_NAMESPACE = "msm-system"
PROXY_ACCOUNT = "msm-proxy"
TOKEN_AUDIENCE = "msm"
SRTP_TAG = 10   # AES_CM_128_HMAC_SHA1_80 adds an 80-bit tag to every RTP packet


def _why_skip() -> str:
    """What the machine lacks (cheap checks, at collection)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    for tool in ("ip", "nft", "nsenter", "setpriv", "tshark"):
        if not shutil.which(tool):
            return f"needs {tool} (apt-get install iproute2 nftables util-linux tshark)"
    for plugin in ("loopback", "bridge", "host-local"):
        if not (SYSTEM_CNI / plugin).exists():
            return f"needs {SYSTEM_CNI / plugin} (apt-get install containernetworking-plugins)"
    for command in ("msm", "msm-control-plane", "msm-proxy", "msm-stub"):
        if not (VENV_BIN / command).exists():
            return f"needs {VENV_BIN / command} (pip install -e . in the venv)"
    return ffmpeg_available() or ""


def _why_skip_peers() -> str:
    """What the machine lacks that takes a process to find out (checked when the test runs)."""
    reason = gst_available()
    if reason:
        return reason
    probe = subprocess.run(
        ["setpriv", f"--reuid={STUB_UID}", f"--regid={STUB_UID}", "--clear-groups",
         sys.executable, "-c", "import grpc, msm.stub.main"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"UID {STUB_UID} (the stub's) cannot run {sys.executable} from {REPO}: {tail}"
    return ""


SKIP = _why_skip()
if SKIP:
    print(f"tests/e2e/test_multinode.py skipped: {SKIP}")
pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(60),
              pytest.mark.skipif(bool(SKIP), reason=SKIP)]


# -- plumbing ------------------------------------------------------------------------------------


def sh(*argv: str, check: bool = True, input: str | None = None, timeout: float = 20,
       env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def checkout_env() -> dict[str, str]:
    """The components run as installed (the venv's console scripts, no PYTHONPATH), so a
    package the install leaves out fails here as it would in ``msm up`` or an image."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONUNBUFFERED": "1"}


def in_ns(netns: str) -> list[str]:
    """The prefix that runs a command in a namespace (``ip netns exec`` execs it: signals reach it)."""
    return ["ip", "netns", "exec", netns]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


@dataclass
class Node:
    name: str           # Kubernetes node name
    netns: str
    ip: str             # on the node network
    pod_cidr: str
    link: str           # its end of the node network


@dataclass
class Pod:
    name: str
    node: Node
    netns: str
    annotated: bool
    container_id: str = field(default_factory=lambda: secrets.token_hex(16))
    ip: str = ""
    bridge_result: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)   # the chain's final result


class KubeAdmin:
    """The fake API server's stdin/stdout command channel (see tests/fake_kube.py)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.popen.stdout is not None
        for raw in self.proc.popen.stdout:
            self.lines.put(raw.decode(errors="replace").strip())

    def answer(self, timeout: float = ADMIN_TIMEOUT) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"fake API server did not answer in {timeout:.0f}s:\n{self.proc.tail()}") from None
        assert reply.get("ok"), reply
        return reply

    def command(self, **command: Any) -> dict[str, Any]:
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.popen.stdin.flush()
        return self.answer()

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.command(op="put", object=obj)


def template(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((K8S / name).read_text())
    return data


def pod_object(pod: Pod) -> dict[str, Any]:
    """The Pod as the API server holds it once scheduled (Pending: no IP yet)."""
    if pod.name == "camera":
        obj = template("mn_pod_camera.json")
    elif pod.annotated:
        obj = template("mn_pod_viewer.json")
    else:
        obj = template("mn_pod_plain.json")
    meta = obj["metadata"]
    meta["name"] = pod.name
    meta["uid"] = meta["uid"][:-12] + secrets.token_hex(6)
    obj["spec"]["nodeName"] = pod.node.name
    return obj


def running(obj: dict[str, Any], pod: Pod) -> dict[str, Any]:
    """What the kubelet reports once the sandbox has its network: Running, with its IP."""
    obj = copy.deepcopy(obj)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    scheduled = obj["status"]["conditions"][0]["lastTransitionTime"]
    obj["status"] = {
        "phase": "Running",
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": None, "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastProbeTime": None, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": scheduled},
        ],
        "hostIP": pod.node.ip,
        "hostIPs": [{"ip": pod.node.ip}],
        "podIP": pod.ip,
        "podIPs": [{"ip": pod.ip}],
        "startTime": now,
        "qosClass": obj["status"].get("qosClass", "BestEffort"),
    }
    return obj


# -- the cluster ----------------------------------------------------------------------------------


class Cluster:
    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.tmp = Path(tempfile.mkdtemp(prefix="msm-multinode-"))
        octet = secrets.randbelow(250) + 1
        self.a = Node("node-a", f"msmA-{self.suffix}", f"10.200.{octet}.1", "10.244.1.0/24", "veth-a")
        self.b = Node("node-b", f"msmB-{self.suffix}", f"10.200.{octet}.2", "10.244.2.0/24", "veth-b")
        self.pods: dict[str, Pod] = {}
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.stubs: dict[str, Proc] = {}
        self.bin_dir = self.tmp / "bin"
        self.token = secrets.token_hex(16)
        self.kubeconfig = self.tmp / "kubeconfig"
        self.kube: KubeAdmin | None = None
        self.pod_objects: dict[str, dict[str, Any]] = {}
        self.control = f"{self.a.ip}:{CONTROL_PORT}"
        self.bootstrap = f"{self.a.ip}:{BOOTSTRAP_PORT}"
        self.ca_dir = self.tmp / "mesh-ca"          # the chart's Secret, mounted into the control plane only
        self.bundle = self.tmp / "trust-bundle.pem"  # the chart's ConfigMap
        self.admin = self.tmp / "admin-tls"         # the test's own certificate, to read the proxies' flows
        self.state = self.tmp / "state"             # msm streams --state-dir: its operator certificate
        self.proxy_pods = {node.name: self.proxy_pod(node) for node in (self.a, self.b)}

    # -- processes ----------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], *, stdin: bool = False, stdout: bool = False,
              env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, cwd=REPO, env={**checkout_env(), **(env or {})},
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else out, stderr=out if stdout else subprocess.STDOUT,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def wait_log(self, proc: Proc, pattern: str, *also: Proc, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until ``pattern`` appears in ``proc``'s log; it and ``also`` must stay alive meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            if re.search(pattern, proc.log.read_text(errors="replace")):
                return
            for watched in (proc, *also):
                if watched.popen.poll() is not None:
                    raise AssertionError(f"{watched.name} exited ({watched.popen.returncode}):\n{watched.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.name}: no {pattern!r} in {timeout:.0f}s:\n{proc.tail()}")
            time.sleep(0.05)

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (exit {p.popen.poll()}) -----\n{p.tail(40)}" for p in self.procs)

    # -- nodes ---------------------------------------------------------------------------------
    def add_netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def build_nodes(self) -> None:
        a, b = self.a, self.b
        for node in (a, b):
            self.add_netns(node.netns)
        sh("ip", "-n", a.netns, "link", "add", a.link, "type", "veth", "peer", "name", b.link, "netns", b.netns)
        for node, peer in ((a, b), (b, a)):
            sh("ip", "-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", node.link)
            sh("ip", "-n", node.netns, "link", "set", node.link, "up")
            sh("ip", "-n", node.netns, "route", "add", peer.pod_cidr, "via", peer.ip)
            sh(*in_ns(node.netns), "sysctl", "-qw", "net.ipv4.ip_forward=1")

    # -- the CNI chain, as a runtime runs it ------------------------------------------------------
    def install_cni(self) -> None:
        from msm.cni_plugin import installer

        self.bin_dir.mkdir()
        for plugin in ("loopback", "bridge", "host-local"):
            (self.bin_dir / plugin).symlink_to(SYSTEM_CNI / plugin)
        installer.install_plugin(installer.Options(
            bin_dir=self.bin_dir, conf_dir=self.tmp / "net.d", kubeconfig_out=self.tmp / "unused",
            python=sys.executable, plugin_conf={}))

    def chain(self, node: Node) -> list[dict[str, Any]]:
        """The node's conflist plugins: the bridge first, msm-cni chained after it."""
        return [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": node.pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.tmp / f"ipam-{node.name}")}},
            {"type": "msm-cni", "kubernetes": {"kubeconfig": str(self.kubeconfig)},
             "interceptPorts": [554], "redirectPort": 8554, "proxyUid": STUB_UID},
        ]

    def cni(self, pod: Pod, command: str, conf: dict[str, Any], prev: dict[str, Any] | None = None,
            name: str = "msm-mesh") -> tuple[int, dict[str, Any] | None, str]:
        """One plugin invocation, on the pod's node (its host network), as a runtime does."""
        stdin = {"cniVersion": "1.0.0", "name": name, **conf}
        if prev is not None:
            stdin["prevResult"] = prev
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id, "CNI_NETNS": f"/run/netns/{pod.netns}",
            "CNI_IFNAME": "eth0", "CNI_PATH": str(self.bin_dir),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod.name};"
                        f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id}",
        }
        done = subprocess.run([*in_ns(pod.node.netns), str(self.bin_dir / conf["type"])],
                              input=json.dumps(stdin).encode(), env=env, capture_output=True, timeout=30, check=False)
        out = json.loads(done.stdout) if done.stdout.strip() else None
        return done.returncode, out, done.stderr.decode(errors="replace")

    def add_pod(self, name: str, node: Node, annotated: bool) -> Pod:
        pod = Pod(name, node, f"msm-{self.suffix}-{name}", annotated)
        self.pods[name] = pod
        self.add_netns(pod.netns)
        code, out, err = self.cni(pod, "ADD", {"type": "loopback"}, name="lo")
        assert code == 0, (name, out, err)
        bridge, msm = self.chain(node)
        code, out, err = self.cni(pod, "ADD", bridge)
        assert code == 0 and out is not None, (name, out, err)
        pod.bridge_result = pod.result = out
        code, out, err = self.cni(pod, "ADD", msm, prev=pod.bridge_result)
        assert code == 0 and out is not None, (name, out, err)
        pod.result = out
        pod.ip = out["ips"][0]["address"].split("/")[0]
        return pod

    def del_pod(self, pod: Pod) -> list[str]:
        """DEL in reverse order, each plugin given the chain's final result; what failed."""
        bridge, msm = self.chain(pod.node)
        failed = []
        for conf in (msm, bridge):
            code, out, err = self.cni(pod, "DEL", conf, prev=pod.result)
            if code != 0 or out is not None:
                failed.append(f"CNI DEL {conf['type']} for {pod.name}: {code} {out} {err.strip()}")
        pod.result = {}
        return failed

    # -- Kubernetes -------------------------------------------------------------------------------
    def start_api(self) -> None:
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "multinode", "preferences": {},
            "clusters": [{"name": "multinode", "cluster": {"server": f"http://{self.a.ip}:{API_PORT}"}}],
            "users": [{"name": "msm", "user": {"token": self.token}}],
            "contexts": [{"name": "multinode", "context": {"cluster": "multinode", "user": "msm"}}],
        }))
        objects = self.tmp / "objects.json"
        objects.write_text(json.dumps([template("mn_services.json"), *self.proxy_pods.values(),
                                       *self.pod_objects.values()]))
        proc = self.spawn("kube-api", [*in_ns(self.a.netns), sys.executable, "-m", "tests.fake_kube",
                                       "--listen", f"{self.a.ip}:{API_PORT}", "--token", self.token,
                                       "--objects", str(objects)], stdin=True, stdout=True)
        self.kube = KubeAdmin(proc)
        self.kube.answer(timeout=STARTUP_TIMEOUT)   # {"listening": ...}

    def wait_watches(self) -> None:
        """Until the control plane watches Services and EndpointSlices (changes reach it)."""
        assert self.kube is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            watchers = self.kube.command(op="status")["watchers"]
            if watchers["services"] >= 1 and watchers["endpointslices"] >= 1:
                return
            assert time.monotonic() < deadline, f"control plane never watched: {watchers}\n{self.logs()}"
            time.sleep(0.1)

    def endpoint_slice(self) -> dict[str, Any]:
        camera = self.pods["camera"]
        obj = template("mn_endpointslice_camera.json")
        (endpoint,) = obj["endpoints"]
        endpoint["addresses"] = [camera.ip]
        endpoint["nodeName"] = camera.node.name
        endpoint["targetRef"]["uid"] = self.pod_objects["camera"]["metadata"]["uid"]
        return obj

    # -- the trust chain --------------------------------------------------------------------------
    def proxy_pod(self, node: Node) -> dict[str, Any]:
        """The proxy DaemonSet's pod on ``node`` (host network), as the API server holds it."""
        return {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": f"msm-proxy-{node.name}", "namespace": MESH_NAMESPACE, "uid": str(uuid.uuid4()),
                             "labels": {"app.kubernetes.io/component": "proxy"}},
                "spec": {"nodeName": node.name, "serviceAccountName": PROXY_ACCOUNT, "hostNetwork": True,
                         "containers": [{"name": "proxy", "image": "msm:0.1.0"}]},
                "status": {"phase": "Running", "hostIP": node.ip, "podIP": node.ip}}

    def make_ca(self) -> None:
        """The mesh CA as the chart makes it, the trust bundle, and the test's own certificates."""
        from msm.security.ca import CertificateAuthority
        from msm.security.identity import Identity, Role
        from msm.security.local import workload_files
        from msm.security.tls import Rotator, TlsFiles

        helm_mesh_ca(self.ca_dir, f"msm mesh CA ({TRUST_DOMAIN})")
        ca = CertificateAuthority.load(self.ca_dir, TRUST_DOMAIN)
        self.bundle.write_bytes(ca.trust_bundle_pem)
        rotator = Rotator(ca)
        # ListFlows is the control plane's alone: the test reads the proxies as one.
        rotator.add(Identity(TRUST_DOMAIN, MESH_NAMESPACE, "msm-test", Role.CONTROL_PLANE), TlsFiles(self.admin))
        rotator.add(Identity(TRUST_DOMAIN, MESH_NAMESPACE, "msm-test", Role.OPERATOR),
                    workload_files(self.state, "operator"))

    def projected_token(self, directory: Path, namespace: str, account: str, pod: str, node: str, *,
                        uid: int = 0) -> Path:
        """A projected token (what the kubelet writes for a pod: bound to it and its node), in
        ``directory``, readable by ``uid`` only."""
        assert self.kube is not None
        token = self.kube.command(op="token", namespace=namespace, serviceAccount=account, pod=pod, node=node,
                                  audiences=[TOKEN_AUDIENCE], expiresIn=600)["token"]
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / "token"
        path.write_text(token)
        path.chmod(0o600)
        for owned in (directory, path):
            os.chown(owned, uid, uid)
        return path

    # -- mesh components ----------------------------------------------------------------------
    def start_control_plane(self) -> Proc:
        return self.spawn("control-plane", [
            *in_ns(self.a.netns), str(VENV_BIN / "msm-control-plane"), "--kubernetes",
            "--kubeconfig", str(self.kubeconfig), "--listen", self.control, "--web-listen", "", "--linger", "2",
            "--ca-dir", str(self.ca_dir), "--trust-domain", TRUST_DOMAIN, "--bootstrap-listen", self.bootstrap,
            "--token-audience", TOKEN_AUDIENCE, "--proxy-service-account", f"{MESH_NAMESPACE}/{PROXY_ACCOUNT}",
            "--namespace", MESH_NAMESPACE, "--service-account", "msm-control-plane", "--srtp"])

    def start_proxy(self, node: Node) -> Proc:
        """As the chart's DaemonSet runs it: a node-bound token, the trust bundle, and the bootstrap
        port left to its default (the --control host, port 9002)."""
        pod = self.proxy_pods[node.name]["metadata"]["name"]
        home = self.tmp / f"proxy-{node.name}"
        token = self.projected_token(home, MESH_NAMESPACE, PROXY_ACCOUNT, pod, node.name)
        return self.spawn(f"proxy-{node.name}", [
            *in_ns(node.netns), str(VENV_BIN / "msm-proxy"), "--node", node.name, "--media-host", node.ip,
            "--listen", f"{node.ip}:{PROXY_PORT}", "--control", self.control, "--metrics-listen", "",
            "--port-range", "40000-40999", "--token-file", str(token), "--trust-bundle", str(self.bundle),
            "--tls-dir", str(home / "tls"), "--trust-domain", TRUST_DOMAIN])

    def start_stub(self, pod: Pod) -> Proc:
        """As the webhook injects it: UID 1337, a pod-bound token, the trust bundle's PEM in
        MSM_TRUST_BUNDLE, its key in a directory of its own, and --bootstrap."""
        home = self.tmp / f"stub-{pod.name}"
        account = self.pod_objects[pod.name]["spec"]["serviceAccountName"]
        token = self.projected_token(home, NAMESPACE, account, pod.name, pod.node.name, uid=STUB_UID)
        proc = self.spawn(f"stub-{pod.name}", [
            *in_ns(pod.netns), "setpriv", f"--reuid={STUB_UID}", f"--regid={STUB_UID}", "--clear-groups",
            str(VENV_BIN / "msm-stub"), "--control", self.control, "--listen", "0.0.0.0:8554",
            "--pod", pod.name, "--namespace", NAMESPACE, "--pod-ip", pod.ip, "--node", pod.node.name,
            "--token-file", str(token), "--tls-dir", str(home / "tls"), "--trust-domain", TRUST_DOMAIN,
            "--bootstrap", self.bootstrap], env={"MSM_TRUST_BUNDLE": self.bundle.read_text()})
        self.stubs[pod.name] = proc
        return proc

    def run_in(self, netns: str, *argv: str, timeout: float = 20) -> str:
        return sh(*in_ns(netns), *argv, timeout=timeout, env=checkout_env())

    async def graph(self) -> dict[str, Any]:
        """ListStreams from the control plane and ListFlows from both proxies (asked on node A, over
        mutual TLS with the test's certificate)."""
        proxies = [f"{node.name}={node.ip}:{PROXY_PORT}" for node in (self.a, self.b)]
        out = await asyncio.to_thread(self.run_in, self.a.netns, sys.executable, "-c", DUMP, str(self.admin),
                                      self.control, *proxies)
        graph: dict[str, Any] = json.loads(out)
        return graph

    async def msm_streams(self) -> list[dict[str, Any]]:
        """``msm streams --json``, run on node A."""
        out = await asyncio.to_thread(self.run_in, self.a.netns, str(VENV_BIN / "msm"), "streams", "--json",
                                      "--control", self.control, "--state-dir", str(self.state))
        rows: list[dict[str, Any]] = json.loads(out)
        return rows

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Stop everything, DEL every pod, delete the namespaces and files; what went wrong."""
        problems: list[str] = []
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                if proc.popen.stdin is not None:
                    proc.popen.stdin.close()
            proc.stop()
        for pod in self.pods.values():
            if pod.result:
                try:
                    problems += self.del_pod(pod)
                except Exception as exc:  # noqa: BLE001 - clean up the rest regardless
                    problems.append(f"CNI DEL for {pod.name}: {exc!r}")
        # host-local released every address (only its bookkeeping files remain).
        for reserved in self.tmp.glob("ipam-*/*/*"):
            if reserved.name != "lock" and not reserved.name.startswith("last_reserved_ip"):
                problems.append(f"address still reserved after DEL: {reserved.name}")
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        listed = sh("ip", "netns", "list", check=False).split()
        problems += [f"network namespace left behind: {name}" for name in self.namespaces if name in listed]
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    reason = _why_skip_peers()
    if reason:
        print(f"tests/e2e/test_multinode.py skipped: {reason}")
        pytest.skip(reason)
    c = Cluster()
    started = time.monotonic()
    try:
        c.build_nodes()
        c.install_cni()
        c.tmp.chmod(0o711)   # the stubs (UID 1337) reach their own directories in it, and nothing else
        c.make_ca()
        layout = [("camera", c.a, True), ("viewer-a1", c.a, True), ("viewer-b1", c.b, True),
                  ("viewer-b2", c.b, True), ("plain-b", c.b, False)]
        # Scheduled pods exist (Pending, no IP) before their sandboxes are created.
        for name, node, annotated in layout:
            c.pod_objects[name] = pod_object(Pod(name, node, "", annotated))
        c.start_api()
        cp = c.start_control_plane()
        proxies = [c.start_proxy(c.a), c.start_proxy(c.b)]
        for name, node, annotated in layout:
            pod = c.add_pod(name, node, annotated)
            c.pod_objects[name] = running(c.pod_objects[name], pod)   # the kubelet's status update
            assert c.kube is not None
            c.kube.put(c.pod_objects[name])
        c.wait_watches()
        assert c.kube is not None
        c.kube.put(c.endpoint_slice())   # the EndpointSlice controller: the camera is ready
        for pod in c.pods.values():
            if pod.annotated:
                c.start_stub(pod)
        for node, proxy in zip((c.a, c.b), proxies, strict=True):
            c.wait_log(cp, rf"proxy on node {node.name} registered", proxy)
            c.wait_log(proxy, r"registered with control plane", cp)
        for pod in c.pods.values():
            if pod.annotated:
                c.wait_log(cp, rf"stub stub-{NAMESPACE}/{pod.name} connected", c.stubs[pod.name])
                c.wait_log(c.stubs[pod.name], r"stub RTSP server on", cp)
        print(f"cluster up in {time.monotonic() - started:.1f}s: "
              + ", ".join(f"{p.name}={p.ip}@{p.node.name}" for p in c.pods.values()))
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        problems = c.close()
        assert not problems, problems


# -- views of the mesh ------------------------------------------------------------------------------

DUMP = r"""
import json, sys
from google.protobuf.json_format import MessageToDict
from msm.protos import msm_pb2 as pb, msm_pb2_grpc as pb_grpc
from msm.security.identity import Role
from msm.security.tls import TlsFiles, sync_secure_channel

def as_dict(message):
    return MessageToDict(message, preserving_proto_field_name=True)

files, control, proxies = TlsFiles(sys.argv[1]), sys.argv[2], sys.argv[3:]
out = {"proxies": {}}
with sync_secure_channel(control, files) as channel:
    out["streams"] = as_dict(pb_grpc.ControlPlaneStub(channel).ListStreams(pb.ListStreamsRequest(), timeout=5))
for spec in proxies:   # NODE=ADDRESS: each proxy must present its own node's certificate
    node, _, address = spec.partition("=")
    with sync_secure_channel(address, files, role=Role.PROXY, name=node) as channel:
        out["proxies"][address] = as_dict(pb_grpc.DataPlaneStub(channel).ListFlows(pb.ListFlowsRequest(), timeout=5))
print(json.dumps(out))
"""


def n(message: dict[str, Any], key: str) -> int:
    """A uint64 from MessageToDict (a string; absent when 0)."""
    return int(message.get(key, 0))


def wire_rules(a: Node, b: Node) -> str:
    """nftables in node A's namespace: which UDP ports node A sends to node B, and any UDP
    from node A (its processes or its pods) straight to node B's pods."""
    return f"""table inet msmtest
delete table inet msmtest
table inet msmtest {{
    set to_node_b {{ type inet_service; flags dynamic; size 1024; }}
    counter to_b_pods {{ }}
    counter forwarded_udp_to_b {{ }}
    chain sent {{
        type filter hook output priority 0; policy accept;
        ip daddr {b.ip} meta l4proto udp add @to_node_b {{ udp dport }}
        ip daddr {b.pod_cidr} meta l4proto udp counter name "to_b_pods"
    }}
    chain forwarded {{
        type filter hook forward priority 0; policy accept;
        ip daddr {{ {b.ip}, {b.pod_cidr} }} meta l4proto udp counter name "forwarded_udp_to_b"
    }}
}}
"""


async def capture(netns: str, pcap: Path, *interfaces: str) -> asyncio.subprocess.Process:
    """tshark on ``interfaces`` of ``netns`` (UDP only), once it says it is capturing. Bounded:
    it stops by itself after 60 s or 20 MB, whichever comes first."""
    argv = [*in_ns(netns), "tshark", "-n", "-q", *(a for i in interfaces for a in ("-i", i)), "-f", "udp",
            "-a", "duration:60", "-a", "filesize:20000", "-w", str(pcap)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 15)
        if not line:
            raise AssertionError(f"tshark ended before capturing ({proc.returncode})")
        if b"Capturing on" in line:
            return proc


async def captured(pcap: Path) -> list[tuple[str, int, str, int, bytes]]:
    """(source address, port, destination address, port, UDP payload) of every captured packet."""
    proc = await asyncio.create_subprocess_exec(
        "tshark", "-r", str(pcap), "-n", "-T", "fields", "-e", "ip.src", "-e", "udp.srcport", "-e", "ip.dst",
        "-e", "udp.dstport", "-e", "udp.payload", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    packets = []
    for line in out.decode().splitlines():
        fields = (line.split("\t") + [""] * 5)[:5]
        if all(fields):
            src, sport, dst, dport, payload = fields
            packets.append((src, int(sport), dst, int(dport), bytes.fromhex(payload.replace(":", ""))))
    return packets


def gso_segments(wire: bytes, clear: dict[tuple[bytes, bytes], bytes]) -> list[bytes]:
    """The datagrams in one captured send. The native engine sends a burst of equal-size
    datagrams with UDP GSO, and a capture on a veth sees the burst before it is cut up: every
    segment but the last has the first's size, which is its cleartext's plus the SRTP tag."""
    plain = clear.get((wire[8:12], wire[2:4]))
    if plain is None or len(wire) <= len(plain) + SRTP_TAG:
        return [wire]
    size = len(plain) + SRTP_TAG
    return [wire[at:at + size] for at in range(0, len(wire), size)]


def nft_json(netns: str, *what: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(sh(*in_ns(netns), "nft", "-j", "list", *what))["nftables"]
    return items


# -- the tests ----------------------------------------------------------------------------------------


async def test_three_viewers_on_two_nodes_share_one_upstream_and_one_cross_node_leg(cluster: Cluster) -> None:
    c = cluster
    camera, a, b = c.pods["camera"], c.a, c.b
    viewers_of = {"viewer-a1": "udp", "viewer-b1": "udp", "viewer-b2": "tcp"}
    sh(*in_ns(a.netns), "nft", "-f", "-", input=wire_rules(a, b))

    # The camera reaches node A's proxy through the pods' bridge; node A reaches node B over its veth.
    pcap = c.tmp / "node-a.pcap"
    tshark = await capture(a.netns, pcap, "cni0", a.link)
    started = time.monotonic()
    gst = await GstRtspServer.start(port=554, path="/test", bind="0.0.0.0", prefix=in_ns(camera.netns))
    viewers: dict[str, FfmpegViewer] = {}
    try:
        for pod, transport in viewers_of.items():
            viewers[pod] = await FfmpegViewer.start(STREAM_URL, transport=transport,
                                                    prefix=in_ns(c.pods[pod].netns))
        await asyncio.gather(*(v.wait_frames(FRAMES, timeout=30) for v in viewers.values()))
        decoded = time.monotonic() - started
        for pod, viewer in viewers.items():
            assert viewer.frames >= FRAMES and viewer.running, (pod, viewer.frames, viewer.stderr_tail)

        # One RTSP client (the camera pod's own stub, over loopback) and one session for all three.
        assert len(gst.clients) == 1 and gst.clients[0].startswith(f"{camera.ip}:"), gst.clients
        assert gst.max_sessions == 1, gst.events

        dump = await c.graph()
        rows = await c.msm_streams()
        tshark.send_signal(signal.SIGINT)
        await asyncio.wait_for(tshark.wait(), 15)
        # A plain ffprobe on node B meanwhile: one more leg on B's relay flows, nothing more upstream
        # or across the node network.
        probed = await ffprobe_streams(STREAM_URL, transport="udp", prefix=in_ns(c.pods["viewer-b1"].netns))
        assert sorted(s["codec_name"] for s in probed) == ["h264", "pcm_alaw"], probed
        wire_ports = {e for item in nft_json(a.netns, "set", "inet", "msmtest", "to_node_b") if "set" in item
                      for e in item["set"].get("elem", [])}
        counters = {item["counter"]["name"]: item["counter"]["packets"]
                    for item in nft_json(a.netns, "counters", "table", "inet", "msmtest") if "counter" in item}
        print(f"all viewers decoded {FRAMES} frames {decoded:.1f}s after the camera started; "
              f"UDP ports node A sent to node B: {sorted(wire_ports)}")
        print(render_table(rows))

        # The viewers leave (ffmpeg sends TEARDOWN): the relay flows go, and after the linger the
        # one upstream session closes.
        for viewer in viewers.values():
            await viewer.stop()
        await gst.wait_sessions(0, timeout=15)
        deadline = time.monotonic() + 10
        while True:  # the control plane removes the source flows right after closing upstream
            after = await c.graph()
            if all(not reply.get("flows") for reply in after["proxies"].values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    except BaseException:
        print(c.logs())
        print("----- gst -----\n" + "\n".join(gst.events[-20:]) + "\n" + gst.stderr_tail)
        raise
    finally:
        if tshark.returncode is None:
            tshark.kill()
            await tshark.wait()
        for viewer in viewers.values():
            await viewer.stop()
        await gst.stop()

    # -- the stream graph, as the control plane and both proxies hold it ---------------------------
    (stream,) = dump["streams"]["streams"]
    assert stream["name"] == f"{NAMESPACE}/{SERVICE}/test", stream
    assert stream["upstream_url"] == f"rtsp://{camera.ip}:554/test"
    assert n(stream, "upstream_sessions_opened") == 1 and stream["upstream_state"] == "playing", stream
    session_pod = {}
    for viewer in stream["viewers"]:
        pods = {leg["labels"]["pod"] for leg in viewer["legs"]}
        assert len(pods) == 1 and viewer.get("playing"), viewer
        session_pod[viewer["session_tag"]] = pods.pop()   # ListStreams never shows session ids (credentials)
    assert sorted(session_pod.values()) == sorted(viewers_of), session_pod
    tracks = stream["tracks"]
    assert [t["track"]["kind"] for t in tracks] == ["video", "audio"], tracks

    flows_a = dump["proxies"][f"{a.ip}:{PROXY_PORT}"].get("flows", [])
    flows_b = dump["proxies"][f"{b.ip}:{PROXY_PORT}"].get("flows", [])
    # Node A's proxy holds only the source flows; node B's only one relay flow per track.
    assert sorted(f["flow_id"] for f in flows_a) == sorted(t["flow"]["flow_id"] for t in tracks), flows_a
    assert len(flows_b) == len(tracks), flows_b
    relay_ports: dict[int, int] = {}
    for t in tracks:
        what = t["track"]["kind"]
        source = t["flow"]
        assert source["node"] == a.name and n(source, "packets_received") > 0, (what, source)
        crossing = [leg for leg in source["legs"] if leg["leg_id"].startswith("relay@")]
        locals_ = [leg["labels"]["pod"] for leg in source["legs"] if not leg["leg_id"].startswith("relay@")]
        assert [leg["leg_id"] for leg in crossing] == [f"relay@{b.name}"], (what, source["legs"])
        assert locals_ == ["viewer-a1"], (what, source["legs"])
        (relay,) = t["relays"]
        assert relay["node"] == b.name and relay["labels"].get("hop") == "relay", (what, relay)
        assert relay["flow_id"] in {f["flow_id"] for f in flows_b}
        # The one leg A -> B goes to B's relay flow, which fans out to B's two viewers.
        assert crossing[0]["destination"] == relay["ingress"] and relay["ingress"]["host"] == b.ip, (crossing, relay)
        assert sorted(leg["labels"]["pod"] for leg in relay["legs"]) == ["viewer-b1", "viewer-b2"], relay["legs"]
        assert n(crossing[0], "packets_sent") > 0 and n(relay, "packets_received") > 0, (what, crossing, relay)
        for leg in source["legs"] + relay["legs"]:
            assert n(leg, "packets_sent") > 0, (what, leg)
        relay_ports[relay["ingress"]["rtp_port"]] = relay["ingress"]["rtcp_port"]
        # The leg between the nodes is SRTP, and node B's relay flow unprotects all of it.
        (relay_flow,) = [f for f in flows_b if f["flow_id"] == relay["flow_id"]]
        assert relay_flow.get("srtp") and n(relay_flow, "srtp_errors") == 0, (what, relay_flow)
        assert crossing[0].get("srtp") and not any(leg.get("srtp") for leg in relay_flow.get("legs", [])), (
            what, crossing, relay_flow)   # viewers' legs stay plain RTP

    # -- on the wire: node A sends UDP to node B's relay ports only, nothing to B's pods ------------
    assert set(relay_ports) <= wire_ports <= set(relay_ports) | set(relay_ports.values()), (wire_ports, relay_ports)
    assert counters == {"to_b_pods": 0, "forwarded_udp_to_b": 0}, counters

    # -- on the wire: the leg between the nodes is not cleartext ---------------------------------------
    packets = await captured(pcap)
    source_ports = {t["flow"]["ingress"]["rtp_port"] for t in tracks}
    # The camera's RTP as it reached node A, by (SSRC, sequence number).
    clear = {(p[8:12], p[2:4]): p for src, _, dst, dport, p in packets
             if src == camera.ip and dst == a.ip and dport in source_ports}
    leg = [datagram for src, sport, dst, dport, p in packets
           if src == a.ip and dst == b.ip and sport in source_ports and dport in relay_ports
           for datagram in gso_segments(p, clear)]
    assert len(clear) >= 50 and len(leg) >= 50, (len(clear), len(leg), len(packets))
    matched = 0
    for wire in leg:
        plain = clear.get((wire[8:12], wire[2:4]))
        if plain is None:
            continue
        matched += 1
        assert len(wire) == len(plain) + SRTP_TAG, (len(wire), len(plain))
        assert wire[:12] == plain[:12]          # the RTP header is authenticated, not encrypted
        assert wire[12:-SRTP_TAG] != plain[12:]  # the payload is not the camera's
        assert plain[12:44] not in wire          # nor any stretch of it
    assert matched >= 50, (matched, len(leg))
    print(f"tshark on node A: {len(clear)} RTP packets camera -> node A, {len(leg)} on the A -> B leg, "
          f"{matched} matched by SSRC and sequence, each 10 bytes longer with another payload")

    # -- every hop has statistics in `msm streams --json` ----------------------------------------------
    for t in tracks:
        track = f"{t['track'].get('index', 0)}:{t['track']['kind']}"
        hops = [r for r in rows if r["track"] == track]
        (ingress,) = [r for r in hops if r["hop"] == "ingress"]
        (relay_row,) = [r for r in hops if r["hop"] == "relay"]
        viewer_rows = [r for r in hops if r["hop"] == "viewer"]
        assert ingress["node"] == a.name and ingress["packets"] > 0 and ingress["viewers"] == 3, ingress
        assert (relay_row["from_node"], relay_row["node"]) == (a.name, b.name) and relay_row["packets"] > 0, relay_row
        assert sorted(session_pod[r["session"]] for r in viewer_rows) == sorted(viewers_of), viewer_rows
        assert all(r["packets"] > 0 and r["state"] == "playing" for r in viewer_rows), viewer_rows
        # Each viewer is shown on the node whose proxy feeds it.
        assert all(r["node"] == c.pods[session_pod[r["session"]]].node.name for r in viewer_rows), viewer_rows
    assert len(rows) == len(tracks) * 5, rows

    # -- and all of it is gone once the viewers have left ------------------------------------------
    assert [s.get("upstream_state") for s in after["streams"].get("streams", [])] == ["closed"], after["streams"]
    assert all(not reply.get("flows") for reply in after["proxies"].values()), after["proxies"]
    assert len(gst.clients) == 1 and gst.max_sessions == 1, gst.events


def test_pod_without_the_annotation_is_left_alone(cluster: Cluster) -> None:
    c = cluster
    plain, viewer = c.pods["plain-b"], c.pods["viewer-b1"]
    # msm-cni passed the bridge's result through and installed nothing.
    assert plain.result == plain.bridge_result
    assert "table inet msm" not in c.run_in(plain.netns, "nft", "list", "tables")
    assert "table inet msm" in c.run_in(viewer.netns, "nft", "list", "tables")
    code, out, err = c.cni(plain, "CHECK", c.chain(plain.node)[1], prev=plain.result)
    assert (code, out) == (0, None), err

    # The same connection from both pods: the injected one lands on its stub, the plain one
    # leaves the pod (and, with no kube-proxy on these nodes, finds no route to the ClusterIP).
    probe = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 554), timeout=3) as s:
        s.sendall(b"OPTIONS rtsp://%s:554/test RTSP/1.0\r\nCSeq: 1\r\n\r\n" % sys.argv[1].encode())
        print(s.recv(4096).decode(errors="replace").split("\r\n\r\n")[0])
except OSError as exc:
    print(f"error: {exc.strerror or exc}")
"""
    answered = c.run_in(viewer.netns, SYSTEM_PYTHON, "-c", probe, CLUSTER_IP)
    assert answered.startswith("RTSP/1.0 200") and "Server: msm-stub" in answered, answered
    listener = subprocess.Popen(  # a would-be stub in the plain pod: nothing must arrive
        [*in_ns(plain.netns), SYSTEM_PYTHON, "-c",
         "import socket, sys\ns = socket.create_server(('0.0.0.0', 8554))\nprint('ready', flush=True)\n"
         "conn, peer = s.accept()\nprint('accepted', peer, flush=True)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        refused = c.run_in(plain.netns, SYSTEM_PYTHON, "-c", probe, CLUSTER_IP)
        assert refused.startswith("error:") and "unreachable" in refused.lower(), refused
        time.sleep(0.2)
        assert listener.poll() is None, listener.stdout.read()
    finally:
        listener.kill()
        listener.wait(timeout=5)
