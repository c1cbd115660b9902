"""msm-cni's decisions without a runtime: environment, config, kubeconfig, pod
lookup (over real HTTP and HTTPS on 127.0.0.1), and what each command does with
a fake backend. The real thing in namespaces is tests/integration/test_cni.py."""

from __future__ import annotations

import base64
import io
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from msm.cni_plugin import config, errors, kube, nft
from msm.cni_plugin.config import CniEnv, Settings
from msm.cni_plugin.main import run_plugin
from msm.cni_plugin.plugin import Plugin
from msm.cni_plugin.types import Pod
from tests.datafiles import load

ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "3f2a9c",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=media;K8S_POD_NAME=viewer",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
}
CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "k8s",
    "type": "msm-cni",
    "kubernetes": {"kubeconfig": "/etc/cni/net.d/msm-cni.kubeconfig"},
    "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.1.0.5/24"}]},
}


def pod(name: str) -> Pod:
    return json.loads(load(f"k8s/cni_pod_{name}.json"))  # type: ignore[no-any-return]


# -- environment and config ----------------------------------------------------------------


def test_env_parsed() -> None:
    env = config.parse_env(ADD_ENV)
    assert env.pod == ("media", "viewer")
    assert env.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert config.parse_env({**ADD_ENV, "CNI_ARGS": ""}).pod is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"CNI_NETNS": ""}, "CNI_NETNS"),
        ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": "-bad id"}, "CNI_CONTAINERID"),
        ({"CNI_IFNAME": "eth0:1"}, "CNI_IFNAME"),
        ({"CNI_COMMAND": "FROB"}, "CNI_COMMAND"),
        ({"CNI_ARGS": "K8S_POD_NAME"}, "CNI_ARGS"),
    ],
)
def test_env_errors_name_the_variable(change: dict[str, str], named: str) -> None:
    with pytest.raises(errors.InvalidEnvironment) as caught:
        config.parse_env({**ADD_ENV, **change})
    assert caught.value.code == 4 and named in caught.value.msg


def test_del_and_version_need_less() -> None:
    assert config.parse_env({**ADD_ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""
    assert config.parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"


def test_config_defaults() -> None:
    _, settings = config.parse_conf(dict(CONF))
    assert settings == Settings(kubeconfig="/etc/cni/net.d/msm-cni.kubeconfig")
    assert (settings.intercept_ports, settings.redirect_port, settings.proxy_uid) == ((554,), 8554, 1337)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"cniVersion": "0.2.0"}, errors.IncompatibleVersion),
        ({"cniVersion": 1}, errors.InvalidConfig),
        ({"name": ""}, errors.InvalidConfig),
        ({"interceptPorts": []}, errors.InvalidConfig),
        ({"interceptPorts": [0]}, errors.InvalidConfig),
        ({"interceptPorts": [True]}, errors.InvalidConfig),
        ({"interceptPorts": [554, 8554]}, errors.InvalidConfig),
        ({"redirectPort": 70000}, errors.InvalidConfig),
        ({"proxyUid": -1}, errors.InvalidConfig),
        ({"redirectMode": "iptables"}, errors.InvalidConfig),
        ({"excludeNamespaces": "kube-system"}, errors.InvalidConfig),
        ({"kubernetes": {"kubeconfig": 3}}, errors.InvalidConfig),
        ({"kubernetes": {"timeoutSeconds": 0}}, errors.InvalidConfig),
        ({"prevResult": []}, errors.InvalidConfig),
    ],
)
def test_config_errors(change: dict[str, Any], error: type[errors.CniError]) -> None:
    with pytest.raises(error):
        config.parse_conf({**CONF, **change})


def test_stdin_decoding() -> None:
    with pytest.raises(errors.DecodeFailure):
        config.decode_json(b"{")
    with pytest.raises(errors.DecodeFailure):
        config.decode_json(b'"a string"')
    with pytest.raises(errors.DecodeFailure):
        config.decode_json(b"\xff\xfe")
    with pytest.raises(errors.DecodeFailure):
        config.decode_json(b" " * (config.MAX_STDIN_BYTES + 1))


# -- the commands, with a fake backend -----------------------------------------------------


@dataclass
class FakeBackend:
    calls: list[str] = field(default_factory=list)
    why_not: str = ""

    def install(self, env: CniEnv, settings: Settings) -> None:
        self.calls.append(f"install {env.netns} {settings.intercept_ports}")

    def remove(self, env: CniEnv) -> None:
        self.calls.append(f"remove {env.netns}")

    def verify(self, env: CniEnv, settings: Settings) -> None:
        self.calls.append(f"verify {env.netns}")

    def collect_garbage(self, valid: set[tuple[str, str]]) -> None:
        self.calls.append(f"gc {sorted(valid)}")

    def unavailable(self) -> str:
        return self.why_not


@dataclass
class Harness:
    pods: dict[str, Pod]
    nft: FakeBackend = field(default_factory=FakeBackend)
    ebpf: FakeBackend = field(default_factory=FakeBackend)
    lookups: list[str] = field(default_factory=list)

    def source(self, kubeconfig: str, namespace: str, name: str, timeout: float) -> Pod:
        self.lookups.append(f"{namespace}/{name}")
        if name not in self.pods:
            raise errors.TryAgainLater("Kubernetes API server unreachable")
        return self.pods[name]

    def run(self, command: str, conf: dict[str, Any], **env: str) -> tuple[int, Any]:
        plugin = Plugin(backends={"nftables": self.nft, "ebpf": self.ebpf}, pod_source=self.source)
        out = io.StringIO()
        stdin = io.BytesIO(json.dumps(conf).encode())
        status = run_plugin({**ADD_ENV, "CNI_COMMAND": command, **env}, stdin, out, plugin)
        text = out.getvalue()
        return status, json.loads(text) if text else None


@pytest.fixture
def harness() -> Harness:
    return Harness(pods={"viewer": pod("injected"), "plain": pod("plain"), "recorder": pod("labelled")})


def test_add_injected_installs_and_passes_prev_result_through(harness: Harness) -> None:
    status, out = harness.run("ADD", CONF)
    assert status == 0 and out == CONF["prevResult"]
    assert harness.nft.calls == ["install /run/netns/x (554,)"] and harness.lookups == ["media/viewer"]


def test_add_states_the_result_in_the_configs_version(harness: Harness) -> None:
    conf = {**CONF, "cniVersion": "0.4.0", "prevResult": {**CONF["prevResult"], "cniVersion": "0.4.0"}}
    assert harness.run("ADD", conf)[1]["cniVersion"] == "0.4.0"
    assert harness.run("ADD", {k: v for k, v in CONF.items() if k != "prevResult"})[1] == {"cniVersion": "1.0.0"}


@pytest.mark.parametrize(
    "env",
    [
        {"CNI_ARGS": "K8S_POD_NAMESPACE=media;K8S_POD_NAME=plain"},
        {"CNI_ARGS": "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns"},  # excluded: no lookup
        {"CNI_ARGS": ""},  # not Kubernetes: nothing to look up
    ],
)
def test_add_others_pass_through_untouched(harness: Harness, env: dict[str, str]) -> None:
    status, out = harness.run("ADD", CONF, **env)
    assert status == 0 and out == CONF["prevResult"] and harness.nft.calls == []
    assert harness.lookups == (["media/plain"] if "plain" in env["CNI_ARGS"] else [])


def test_add_api_down_fails_closed(harness: Harness) -> None:
    status, out = harness.run("ADD", CONF, CNI_ARGS="K8S_POD_NAMESPACE=media;K8S_POD_NAME=unknown")
    assert status == 1 and out["code"] == 11 and harness.nft.calls == []


def test_add_needs_a_kubeconfig_for_pods(harness: Harness) -> None:
    status, out = harness.run("ADD", {k: v for k, v in CONF.items() if k != "kubernetes"})
    assert status == 1 and out["code"] == 7 and "kubeconfig" in out["msg"]


def test_add_in_ebpf_mode_uses_that_backend(harness: Harness) -> None:
    harness.run("ADD", {**CONF, "redirectMode": "ebpf"})
    assert harness.ebpf.calls == ["install /run/netns/x (554,)"] and harness.nft.calls == []


def test_del_asks_every_backend_and_never_the_api(harness: Harness) -> None:
    status, out = harness.run("DEL", CONF, CNI_NETNS="")
    assert (status, out) == (0, None)
    assert harness.nft.calls == ["remove "] and harness.ebpf.calls == ["remove "] and harness.lookups == []


def test_check(harness: Harness) -> None:
    assert harness.run("CHECK", CONF) == (0, None)
    assert harness.nft.calls == ["verify /run/netns/x"]
    status, out = harness.run("CHECK", {**CONF, "cniVersion": "0.3.1"})
    assert status == 1 and out["code"] == 1


def test_status_and_gc_need_1_1(harness: Harness) -> None:
    conf = {**CONF, "cniVersion": "1.1.0", "kubernetes": {}}
    assert harness.run("STATUS", conf) == (0, None)
    harness.nft.why_not = "nft not found"
    status, out = harness.run("STATUS", conf)
    assert status == 1 and out["code"] == 50 and out["details"] == "nft not found"
    assert harness.run("STATUS", CONF)[1]["code"] == 1
    assert harness.run("GC", {**conf, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})[0] == 0
    assert harness.ebpf.calls == ["gc [('a', 'eth0')]"]
    assert harness.run("GC", {**conf, "cni.dev/valid-attachments": "all"})[1]["code"] == 7


def test_errors_are_cni_json_with_the_configs_version(harness: Harness) -> None:
    status, out = harness.run("ADD", {**CONF, "cniVersion": "0.4.0", "interceptPorts": "554"})
    assert status == 1
    assert out == {
        "cniVersion": "0.4.0",
        "code": 7,
        "msg": "invalid interceptPorts",
        "details": "expected a non-empty list of ports, got '554'",
    }


def test_an_unexpected_exception_is_still_cni_json(harness: Harness) -> None:
    harness.nft.install = None  # type: ignore[assignment,method-assign]
    status, out = harness.run("ADD", CONF)
    assert status == 1 and out["code"] == errors.INTERNAL and "TypeError" in out["details"]


# -- which pods get the redirect -----------------------------------------------------------


def _meta(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> Pod:
    return {"kind": "Pod", "metadata": {"annotations": annotations or {}, "labels": labels or {}}}


@pytest.mark.parametrize(
    ("candidate", "injected"),
    [
        (_meta({kube.INJECT_KEY: "true"}), True),
        (_meta({kube.STATUS_KEY: "injected"}), True),
        (_meta(labels={kube.INJECT_KEY: "true"}), True),
        (_meta({kube.INJECT_KEY: "false"}, {kube.INJECT_KEY: "true"}), False),  # the annotation wins
        (_meta({kube.INJECT_KEY: "false", kube.STATUS_KEY: "injected"}), True),  # the stub is there
        (_meta(), False),
        ({"kind": "Pod", "metadata": {}}, False),
    ],
)
def test_is_injected(candidate: Pod, injected: bool) -> None:
    assert kube.is_injected(candidate) is injected


def test_fixture_pods() -> None:
    assert [kube.is_injected(pod(n)) for n in ("injected", "labelled", "plain")] == [True, True, False]


# -- kubeconfig ------------------------------------------------------------------------------


def test_kubeconfig_yaml_with_relative_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "kc").write_text(
        """apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster: {server: "https://10.96.0.1:443/", certificate-authority: ca.crt}
users:
- name: cni
  user: {tokenFile: token, client-certificate: certs/c.crt, client-key: /abs/c.key}
contexts:
- name: other
  context: {cluster: nowhere, user: nobody}
- name: main
  context: {cluster: prod, user: cni}
current-context: main
"""
    )
    got = kube.load_kubeconfig(str(tmp_path / "kc"))
    assert got == kube.KubeConfig(
        server="https://10.96.0.1:443",
        ca_file=str(tmp_path / "ca.crt"),
        token="s3cret",
        cert_file=str(tmp_path / "certs/c.crt"),
        key_file="/abs/c.key",
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "- a list",
        "{not: [yaml",
        '{"clusters": [], "contexts": [], "current-context": "x"}',
        '{"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}],'
        ' "clusters": [{"name": "k", "cluster": {"server": "ftp://x"}}]}',
        '{"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],'
        ' "clusters": [{"name": "k", "cluster": {"server": "https://x"}}],'
        ' "users": [{"name": "u", "user": {"exec": {"command": "aws"}}}]}',
    ],
)
def test_bad_kubeconfigs(tmp_path: Path, text: str) -> None:
    (tmp_path / "kc").write_text(text)
    with pytest.raises(errors.InvalidConfig):
        kube.load_kubeconfig(str(tmp_path / "kc"))


def test_missing_kubeconfig() -> None:
    with pytest.raises(errors.InvalidConfig, match="cannot read kubeconfig"):
        kube.load_kubeconfig("/nonexistent/kubeconfig")


# -- the pod lookup over HTTP(S) -------------------------------------------------------------


@dataclass
class Api:
    status: int = 200
    body: bytes = b""
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # path, authorization, client cert CN


def serve(api: Api, context: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer = self.connection.getpeercert() if context else None
            subject = dict(x[0] for x in peer["subject"]) if peer else {}
            api.seen.append((self.path, self.headers.get("Authorization", ""), subject.get("commonName", "")))
            self.send_response(api.status)
            self.send_header("Content-Length", str(len(api.body)))
            self.end_headers()
            self.wfile.write(api.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    scheme = "https" if context else "http"
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[tuple[Api, str]]:
    state = Api(body=load("k8s/cni_pod_injected.json"))
    server, url = serve(state)
    yield state, url
    server.shutdown()
    server.server_close()


def test_get_pod(api: tuple[Api, str]) -> None:
    state, url = api
    got = kube.get_pod(kube.KubeConfig(server=url, token="t0k"), "media", "viewer-7d9c5b6f4-x2kqp", 2)
    assert got["metadata"]["name"] == "viewer-7d9c5b6f4-x2kqp"
    assert state.seen == [("/api/v1/namespaces/media/pods/viewer-7d9c5b6f4-x2kqp", "Bearer t0k", "")]


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, b"", errors.TryAgainLater),
        (503, b"", errors.TryAgainLater),
        (429, b"", errors.TryAgainLater),
        (404, load("k8s/cni_status_not_found.json"), errors.PodLookupFailed),
        (401, load("k8s/cni_status_unauthorized.json"), errors.PodLookupFailed),
        (403, b"{}", errors.PodLookupFailed),
        (200, b"<html>", errors.PodLookupFailed),
        (200, b'{"kind": "Status"}', errors.PodLookupFailed),
    ],
)
def test_get_pod_answers(api: tuple[Api, str], status: int, body: bytes, error: type[errors.CniError]) -> None:
    state, url = api
    state.status, state.body = status, body
    with pytest.raises(error):
        kube.get_pod(kube.KubeConfig(server=url), "media", "viewer", 2)


def test_get_pod_unreachable() -> None:
    with pytest.raises(errors.TryAgainLater, match="unreachable"):
        kube.get_pod(kube.KubeConfig(server="http://127.0.0.1:1"), "media", "viewer", 2)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make test certificates (apt-get install openssl)")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test-ca", "-days", "2",
             cwd=tmp_path)  # fmt: skip
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=msm-{name}", cwd=tmp_path)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", *extra, cwd=tmp_path)  # fmt: skip
    return tmp_path


def test_get_pod_https_with_ca_data_and_client_cert_data(pki: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    context.load_verify_locations(pki / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    state = Api(body=load("k8s/cni_pod_plain.json"))
    server, url = serve(state, context)
    try:
        b64 = {n: base64.b64encode((pki / n).read_bytes()).decode() for n in ("ca.crt", "client.crt", "client.key")}
        (pki / "kc").write_text(
            json.dumps(
                {
                    "clusters": [
                        {"name": "c", "cluster": {"server": url, "certificate-authority-data": b64["ca.crt"]}}
                    ],
                    "users": [
                        {
                            "name": "u",
                            "user": {
                                "client-certificate-data": b64["client.crt"],
                                "client-key-data": b64["client.key"],
                            },
                        }
                    ],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        got = kube.get_pod(kube.load_kubeconfig(str(pki / "kc")), "media", "web", 2)
        assert got["metadata"]["name"] == "web-6b8f9c7d5-q4m2n"
        assert state.seen == [("/api/v1/namespaces/media/pods/web", "", "msm-client")]

        untrusted = kube.KubeConfig(server=url, cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key"))
        with pytest.raises(errors.PodLookupFailed, match="not trusted"):
            kube.get_pod(untrusted, "media", "web", 2)
    finally:
        server.shutdown()
        server.server_close()


# -- the nft ruleset -----------------------------------------------------------------------------


def test_ruleset_text() -> None:
    text = nft.render(Settings(intercept_ports=(554, 8555), redirect_port=8554, proxy_uid=1337))
    assert text.startswith("table inet msm\ndelete table inet msm\ntable inet msm {")
    assert "meta skuid 1337 return" in text and "tcp dport { 554, 8555 } redirect to :8554" in text
    assert 'oifname "lo" return' in text and "ip daddr 127.0.0.0/8 return" in text
