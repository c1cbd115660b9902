"""msm-cni run as a container runtime runs it, in real network namespaces.

The test plays the runtime: it creates a pod network namespace, runs Debian's
real ``loopback``, ``bridge`` and ``host-local`` plugins (containernetworking-plugins)
with CNI_* variables and the config on stdin, then runs msm-cni, found by its
``type`` in CNI_PATH (the launcher ``msm-cni install`` writes), with the bridge's
result as ``prevResult``. The node side of the bridge lives in a second
namespace the test creates, so the machine's own network is never touched.

What it checks is real traffic: a "stub" listening on 8554 inside the pod, a
"server" on the bridge gateway, connections made from inside the pod as an
app's UID and as the stub's UID 1337, and where each one lands. The bridge is
dual-stack (host-local gives the pod an IPv4 and an IPv6 address, DAD off in
every namespace so neither waits), and the traffic goes over both families.

The Kubernetes API is a small HTTP server on 127.0.0.1:0 serving the recorded
pods in ``tests/data/k8s/cni_*.json`` with bearer-token auth; msm-cni reaches it
through a kubeconfig, as it would reach a real API server.

Needs root, ``ip``, ``nft``, ``nsenter``, ``setpriv`` and /usr/lib/cni; skips,
saying which is missing, without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from msm.cni_plugin import installer
from tests.datafiles import load

SYSTEM_CNI = Path("/usr/lib/cni")
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by the unprivileged UIDs the clients run as
TOKEN = "msm-cni-test-token"
APP_UID = 1000  # any UID but the stub's
STUB_UID = 1337
NAMESPACE = "media"
INJECTED = "viewer-7d9c5b6f4-x2kqp"
LABELLED = "recorder-0"
PLAIN = "web-6b8f9c7d5-q4m2n"


def _why_skip() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    for tool in ("ip", "nft", "nsenter", "setpriv"):
        if not shutil.which(tool):
            return f"needs {tool} (apt-get install iproute2 nftables util-linux)"
    for plugin in ("loopback", "bridge", "host-local"):
        if not (SYSTEM_CNI / plugin).exists():
            return f"needs {SYSTEM_CNI / plugin} (apt-get install containernetworking-plugins)"
    if not Path(SYSTEM_PYTHON).exists():
        return f"needs {SYSTEM_PYTHON}"
    return ""


SKIP = _why_skip()
if SKIP:
    print(f"tests/integration/test_cni.py skipped: {SKIP}")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.skipif(bool(SKIP), reason=SKIP)]


# -- a Kubernetes API server serving recorded pods ---------------------------------------


class FakeApi:
    """GET /api/v1/namespaces/NS/pods/NAME with bearer-token auth, like the real one."""

    def __init__(self) -> None:
        self.pods = {
            (NAMESPACE, pod["metadata"]["name"]): pod
            for pod in (json.loads(load(f"k8s/cni_pod_{kind}.json")) for kind in ("injected", "labelled", "plain"))
        }
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, json.loads(load("k8s/cni_status_unauthorized.json")))
                match = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/?]+)", self.path)
                pod = api.pods.get((match[1], match[2])) if match else None
                if pod is None:
                    status = json.loads(load("k8s/cni_status_not_found.json"))
                    name = match[2] if match else self.path
                    status["message"] = f'pods "{name}" not found'
                    status["details"]["name"] = name
                    return self._answer(404, status)
                return self._answer(200, pod)

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    """A hand-written (YAML) kubeconfig, as an operator would have one."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
users:
- name: msm-cni
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: msm-cni
current-context: test
"""
    )
    return path


# -- a tiny container runtime ----------------------------------------------------------------


@dataclass
class Answer:
    code: int
    out: dict[str, Any] | None
    err: str

    @property
    def error_code(self) -> int:
        assert self.out is not None and set(self.out) == {"cniVersion", "code", "msg", "details"}, self.out
        return int(self.out["code"])


@dataclass
class Node:
    tmp: Path
    bin_dir: Path
    host_ns: str  # where the bridge and the gateway live
    api: FakeApi
    kubeconfig: Path
    subnet: str
    subnet6: str
    bridge: str

    def bridge_conf(self) -> dict[str, Any]:
        return {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet}], [{"subnet": self.subnet6}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dataDir": str(self.tmp / "ipam"),
            },
        }

    def msm_conf(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": "msm-cni",
            "kubernetes": {"kubeconfig": str(self.kubeconfig)},
            "interceptPorts": [554],
            "redirectPort": 8554,
            "proxyUid": STUB_UID,
            **extra,
        }

    def run(
        self,
        conf: dict[str, Any] | bytes,
        command: str,
        *,
        sandbox: Sandbox | None = None,
        pod: str = INJECTED,
        env: dict[str, str] | None = None,
    ) -> Answer:
        """Exec the plugin named by the config's type from CNI_PATH, as a runtime does."""
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        plugin_type = "msm-cni" if isinstance(conf, bytes) else conf["type"]
        variables = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_PATH": str(self.bin_dir),
        }
        if sandbox is not None:
            variables |= {
                "CNI_CONTAINERID": sandbox.container_id,
                "CNI_NETNS": sandbox.netns,
                "CNI_IFNAME": "eth0",
                "CNI_ARGS": (
                    f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod};"
                    f"K8S_POD_INFRA_CONTAINER_ID={sandbox.container_id}"
                ),
            }
        variables |= env or {}
        variables = {k: v for k, v in variables.items() if v is not None}
        argv = [str(self.bin_dir / plugin_type)]
        if plugin_type == "bridge":  # the node side of the bridge: our own namespace
            argv = ["ip", "netns", "exec", self.host_ns, *argv]
        done = subprocess.run(argv, input=data, env=variables, capture_output=True, timeout=20, check=False)
        out = json.loads(done.stdout) if done.stdout.strip() else None
        return Answer(done.returncode, out, done.stderr.decode())

    def add_chain(self, sandbox: Sandbox, pod: str = INJECTED, **msm: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """ADD bridge then msm-cni; (bridge's result, msm-cni's result)."""
        lo = self.run({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}, "ADD", sandbox=sandbox, pod=pod)
        assert lo.code == 0, lo
        prev = self.run({"cniVersion": "1.0.0", "name": "msmtest", **self.bridge_conf()}, "ADD", sandbox=sandbox)
        assert prev.code == 0, prev
        assert prev.out is not None
        sandbox.result = prev.out
        conf = {"cniVersion": "1.0.0", "name": "msmtest", **self.msm_conf(**msm), "prevResult": prev.out}
        answer = self.run(conf, "ADD", sandbox=sandbox, pod=pod)
        assert answer.code == 0, answer
        assert answer.out is not None
        sandbox.result = answer.out
        return prev.out, answer.out

    def msm(self, command: str, sandbox: Sandbox, pod: str = INJECTED, **msm: Any) -> Answer:
        conf = {"cniVersion": "1.0.0", "name": "msmtest", **self.msm_conf(**msm), "prevResult": sandbox.result}
        return self.run(conf, command, sandbox=sandbox, pod=pod)

    def del_chain(self, sandbox: Sandbox) -> list[Answer]:
        """DEL in reverse order, each plugin given the chain's final result."""
        answers = [self.msm("DEL", sandbox)]
        conf = {"cniVersion": "1.0.0", "name": "msmtest", **self.bridge_conf(), "prevResult": sandbox.result}
        answers.append(self.run(conf, "DEL", sandbox=sandbox))
        return answers


@dataclass
class Sandbox:
    name: str
    container_id: str
    result: dict[str, Any] = field(default_factory=dict)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def gateway(self) -> str:
        return str(next(ip for ip in self.result["ips"] if "." in ip["address"])["gateway"])

    @property
    def gateway6(self) -> str:
        return str(next(ip for ip in self.result["ips"] if ":" in ip["address"])["gateway"])


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr}")
    return done.stdout


def add_netns(name: str) -> None:
    """``ip netns add`` with IPv6 duplicate address detection off, so the addresses
    the bridge plugin gives are usable at once (it waits for DAD otherwise)."""
    sh("ip", "netns", "add", name)
    for scope in ("all", "default"):
        sh("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{scope}.accept_dad=0")


def subnets() -> tuple[str, str]:
    """A random IPv4 /24 and IPv6 (unique local) /64 for one test node's bridge."""
    v4 = f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(250) + 1}.0/24"
    return v4, f"fd6d:{secrets.randbelow(0xFFFF) + 1:x}:{secrets.randbelow(0xFFFF) + 1:x}::/64"


def nft_in(sandbox: Sandbox, *args: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", sandbox.name, "nft", *args, check=check)


def has_msm_table(sandbox: Sandbox) -> bool:
    return "table inet msm" in nft_in(sandbox, "list", "tables")


def runtime_bin_dir(tmp: Path) -> Path:
    """A CNI_PATH with Debian's plugins and msm-cni exactly as `msm-cni install` deploys it."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for plugin in ("loopback", "bridge", "host-local"):
        (bin_dir / plugin).symlink_to(SYSTEM_CNI / plugin)
    installer.install_plugin(
        installer.Options(
            bin_dir=bin_dir,
            conf_dir=tmp / "net.d",
            kubeconfig_out=tmp / "unused",
            python=sys.executable,
            plugin_conf={},
        )
    )
    return bin_dir


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("cni")
    suffix = secrets.token_hex(3)
    host_ns = f"msmhost-{suffix}"
    bin_dir = runtime_bin_dir(tmp)
    api = FakeApi()
    add_netns(host_ns)
    try:
        sh("ip", "-n", host_ns, "link", "set", "lo", "up")
        subnet, subnet6 = subnets()
        yield Node(
            tmp=tmp,
            bin_dir=bin_dir,
            host_ns=host_ns,
            api=api,
            kubeconfig=write_kubeconfig(tmp / "kubeconfig", f"http://127.0.0.1:{api.port}"),
            subnet=subnet,
            subnet6=subnet6,
            bridge=f"msmbr{suffix}",
        )
    finally:
        api.close()
        sh("ip", "netns", "del", host_ns, check=False)


@pytest.fixture
def sandbox(node: Node) -> Iterator[Sandbox]:
    box = Sandbox(name=f"msmtest-{secrets.token_hex(3)}", container_id=secrets.token_hex(16))
    add_netns(box.name)
    try:
        yield box
    finally:
        for proc in box.processes:
            proc.kill()
            proc.wait(timeout=5)
        if box.result:  # release the address even if the test failed half-way
            with contextlib.suppress(Exception):
                node.del_chain(box)
        sh("ip", "netns", "del", box.name, check=False)


# -- real traffic ----------------------------------------------------------------------------

# The listeners' main: "ADDRESS:PORT" or "[IPV6]:PORT" arguments, an IPv6 one
# IPv6-only so that [::]:8554 and 0.0.0.0:8554 are two listeners.
LISTEN = r"""
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind((host.strip("[]"), int(port)))
    listener.listen(16)
    threading.Thread(target=accept, args=(listener, spec), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

SERVER = r"""
import json, socket, struct, sys, threading

def accept(listener, label):
    while True:
        conn, peer = listener.accept()
        with conn:
            try:  # (IP6T_)SO_ORIGINAL_DST: only redirected connections have one
                if listener.family == socket.AF_INET6:
                    port, addr = struct.unpack("!2xH4x16s4x", conn.getsockopt(socket.IPPROTO_IPV6, 80, 28))
                    orig = f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"
                else:
                    port, addr = struct.unpack("!2xH4s8x", conn.getsockopt(socket.SOL_IP, 80, 16))
                    orig = f"{socket.inet_ntoa(addr)}:{port}"
            except OSError:
                orig = None
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            conn.sendall(b"ok")
            print(json.dumps({"at": label, "data": data.decode(), "orig": orig}), flush=True)

""" + LISTEN


CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(sys.argv[3].encode())
    s.shutdown(socket.SHUT_WR)
    assert s.recv(16) == b"ok"
"""


class Listeners:
    """A server process in one namespace; its accepted connections as dicts."""

    def __init__(self, sandbox: Sandbox, netns: str, *addresses: str) -> None:
        self._spawn(sandbox, ["ip", "netns", "exec", netns, SYSTEM_PYTHON, "-c", SERVER, *addresses])

    def _spawn(self, sandbox: Sandbox, argv: list[str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=cwd)
        sandbox.processes.append(self.proc)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.lines.get(timeout=10) == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        landed: dict[str, Any] = json.loads(self.lines.get(timeout=timeout))
        return landed

    def quiet(self) -> bool:
        time.sleep(0.2)
        return self.lines.empty()


def connect(sandbox: Sandbox, uid: int, host: str, port: int, payload: str) -> None:
    sh(
        "ip", "netns", "exec", sandbox.name,
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        SYSTEM_PYTHON, "-c", CLIENT, host, str(port), payload,
    )  # fmt: skip


# -- the tests -------------------------------------------------------------------------------


def test_version(node: Node) -> None:
    answer = node.run(b'{"cniVersion": "0.4.0"}', "VERSION")
    assert answer.code == 0
    assert answer.out == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    assert node.run(b"", "VERSION").out == {**answer.out, "cniVersion": "1.1.0"}


def test_injected_pod_traffic_is_redirected_over_ipv4_and_ipv6_and_del_removes_exactly_it(
    node: Node, sandbox: Sandbox
) -> None:
    # Someone else's table in the pod: ADD and DEL must leave it as it is.
    subprocess.run(
        ["ip", "netns", "exec", sandbox.name, "nft", "-f", "-"],
        input="table ip other {\n chain c {\n  type filter hook output priority 0; policy accept;\n  counter\n }\n}\n",
        text=True,
        check=True,
    )
    before = nft_in(sandbox, "-s", "list", "ruleset")

    bridge_result, result = node.add_chain(sandbox)
    assert result == bridge_result  # prevResult passed through unchanged (same cniVersion)
    table = nft_in(sandbox, "list", "table", "inet", "msm")
    assert "redirect to :8554" in table and "skuid 1337" in table and 'oifname "lo"' in table, table

    gw, gw6 = sandbox.gateway, sandbox.gateway6
    pod = Listeners(sandbox, sandbox.name, "0.0.0.0:8554", "127.0.0.1:554", "[::]:8554", "[::1]:554")
    upstream = Listeners(sandbox, node.host_ns, f"{gw}:554", f"{gw}:8080", f"[{gw6}]:554", f"[{gw6}]:8080")

    connect(sandbox, APP_UID, gw, 554, "app")  # the app's RTSP goes to its stub
    assert pod.next() == {"at": "0.0.0.0:8554", "data": "app", "orig": f"{gw}:554"}
    connect(sandbox, STUB_UID, gw, 554, "stub")  # the stub's own upstream connection does not
    assert upstream.next()["at"] == f"{gw}:554"  # (only where it lands matters: conntrack knows
    # every connection's original destination, redirected or not)
    connect(sandbox, APP_UID, "127.0.0.1", 554, "loopback")  # nor does anything to 127.0.0.0/8
    assert pod.next()["at"] == "127.0.0.1:554"
    connect(sandbox, APP_UID, gw, 8080, "http")  # nor other ports
    assert upstream.next()["at"] == f"{gw}:8080"

    # IPv6: the same, to [::1]:8554 (the stub must listen there too).
    connect(sandbox, APP_UID, gw6, 554, "app6")
    assert pod.next() == {"at": "[::]:8554", "data": "app6", "orig": f"[{gw6}]:554"}
    connect(sandbox, STUB_UID, gw6, 554, "stub6")
    assert upstream.next()["at"] == f"[{gw6}]:554"
    connect(sandbox, APP_UID, "::1", 554, "loopback6")
    assert pod.next()["at"] == "[::1]:554"
    connect(sandbox, APP_UID, gw6, 8080, "http6")
    assert upstream.next()["at"] == f"[{gw6}]:8080"
    connect(sandbox, APP_UID, f"::ffff:{gw}", 554, "mapped")  # IPv4 packets from an IPv6 socket
    assert pod.next() == {"at": "0.0.0.0:8554", "data": "mapped", "orig": f"{gw}:554"}
    assert pod.quiet() and upstream.quiet()

    requests = len(node.api.requests)
    answers = node.del_chain(sandbox)
    assert [a.code for a in answers] == [0, 0] and answers[0].out is None, answers
    assert len(node.api.requests) == requests  # DEL needs no API server
    sandbox.result = {}
    assert nft_in(sandbox, "-s", "list", "ruleset") == before

    connect(sandbox, APP_UID, "127.0.0.1", 554, "after")
    assert pod.next()["at"] == "127.0.0.1:554"


def test_del_twice_and_after_the_netns_vanished(node: Node, sandbox: Sandbox) -> None:
    node.add_chain(sandbox)
    assert has_msm_table(sandbox)
    first, second = node.msm("DEL", sandbox), node.msm("DEL", sandbox)
    assert (first.code, first.out, second.code, second.out) == (0, None, 0, None), (first, second)
    assert not has_msm_table(sandbox)

    node.msm("ADD", sandbox)
    assert has_msm_table(sandbox)
    sh("ip", "netns", "del", sandbox.name)
    answers = node.del_chain(sandbox)
    assert [a.code for a in answers] == [0, 0], answers
    no_netns = node.msm("DEL", sandbox, env={"CNI_NETNS": ""})
    assert no_netns.code == 0, no_netns
    sandbox.result = {}


def test_check_passes_after_add_and_fails_without_the_rules(node: Node, sandbox: Sandbox) -> None:
    node.add_chain(sandbox)
    ok = node.msm("CHECK", sandbox)
    assert (ok.code, ok.out) == (0, None), ok

    nft_in(sandbox, "flush", "chain", "inet", "msm", "output")
    flushed = node.msm("CHECK", sandbox)
    assert flushed.code == 1 and flushed.error_code == 102, flushed
    assert "expected rules" in flushed.out["msg"]  # type: ignore[index]

    assert node.msm("ADD", sandbox).code == 0  # a repeated ADD replaces the table
    assert node.msm("CHECK", sandbox).code == 0
    nft_in(sandbox, "delete", "table", "inet", "msm")
    missing = node.msm("CHECK", sandbox)
    assert missing.code == 1 and missing.error_code == 102, missing
    assert "missing" in missing.out["msg"]  # type: ignore[index]


def test_pod_without_injection_is_passed_through(node: Node, sandbox: Sandbox) -> None:
    bridge_result, result = node.add_chain(sandbox, pod=PLAIN)
    assert result == bridge_result
    assert not has_msm_table(sandbox)
    assert node.msm("CHECK", sandbox, pod=PLAIN).code == 0
    assert node.api.requests[-1] == f"/api/v1/namespaces/{NAMESPACE}/pods/{PLAIN}"

    assert node.msm("ADD", sandbox, pod=LABELLED).code == 0  # the label alone is enough
    assert has_msm_table(sandbox)


def test_bad_input_gets_cni_errors(node: Node, sandbox: Sandbox, tmp_path: Path) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [], "ips": []}
    sandbox.result = {}

    def add(conf: dict[str, Any] | bytes, pod: str = INJECTED, **env: str) -> Answer:
        if isinstance(conf, dict):
            conf = {"cniVersion": "1.0.0", "name": "msmtest", **conf, "prevResult": prev}
        answer = node.run(conf, "ADD", sandbox=sandbox, pod=pod, env=env)
        assert answer.code != 0, answer
        return answer

    # Spec: 6 "failed to decode content", 7 "invalid network config", 4 "invalid
    # necessary environment variables" (the message names them), 1 "incompatible version".
    assert add(b"{not json").error_code == 6
    assert add(b"[1, 2]").error_code == 6
    assert add(node.msm_conf(interceptPorts=["rtsp"])).error_code == 7
    assert add(node.msm_conf(interceptPorts=[8554])).error_code == 7
    assert add(node.msm_conf(redirectMode="iptables")).error_code == 7
    missing_netns = add(node.msm_conf(), CNI_NETNS="")
    assert missing_netns.error_code == 4 and "CNI_NETNS" in missing_netns.out["msg"]  # type: ignore[index]
    assert add(node.msm_conf(), CNI_NETNS="/run/netns/msm-no-such-netns").error_code == 4
    assert add({**node.msm_conf(), "cniVersion": "9.9.9"}).error_code == 1
    assert add(node.msm_conf(), pod="ghost").error_code == 100
    wrong_token = write_kubeconfig(tmp_path / "wrong", f"http://127.0.0.1:{node.api.port}", token="nope")
    assert add(node.msm_conf(kubernetes={"kubeconfig": str(wrong_token)})).error_code == 100
    assert add(node.msm_conf(kubernetes={"kubeconfig": str(tmp_path / "absent")})).error_code == 7

    # The API server down: try again later, and nothing installed meanwhile.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    down = write_kubeconfig(tmp_path / "down", f"http://127.0.0.1:{closed_port}")
    unreachable = add(node.msm_conf(kubernetes={"kubeconfig": str(down)}))
    assert unreachable.error_code == 11 and "unreachable" in unreachable.out["msg"]  # type: ignore[index]
    assert not has_msm_table(sandbox)

    # eBPF mode where BCC cannot compile (no kernel headers): a clear refusal.
    release = os.uname().release
    if not Path(f"/lib/modules/{release}/build").is_dir():
        ebpf = add(node.msm_conf(redirectMode="ebpf"))
        assert ebpf.error_code == 103 and f"linux-headers-{release}" in ebpf.out["details"], ebpf  # type: ignore[index]
        assert not has_msm_table(sandbox)


def test_status_and_gc_per_spec_version(node: Node) -> None:
    conf = {"cniVersion": "1.1.0", "name": "msmtest", **node.msm_conf()}
    assert node.run(conf, "STATUS").code == 0
    assert node.run(conf, "GC").code == 0
    old = node.run({**conf, "cniVersion": "1.0.0"}, "STATUS")
    assert old.code == 1 and old.error_code == 1
