"""Workload certificates in Kubernetes: the issuer (TokenReview -> identity -> certificate) against
the fake API server, and a workload's bootstrap over real server-authenticated TLS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from msm.control_plane.kubernetes import KubeClient, KubeError
from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc
from msm.runtime.grpcutil import abort
from msm.sdk.errors import ConfigError, Forbidden, MsmError, Unauthorized
from msm.security import issuer as issuer_module
from msm.security.authz import identity_of_certificate
from msm.security.bootstrap import (
    BOOTSTRAP_PORT,
    Bootstrap,
    BootstrapError,
    bootstrap_address,
    check_tls_arguments,
    new_key_and_csr,
    request_certificate,
    workload_tls,
)
from msm.security.ca import CaError, CertificateAuthority
from msm.security.identity import Identity, Role
from msm.security.issuer import MAX_CALLERS, CertificateIssuer, RateLimited, caller_of
from msm.security.tls import TlsFiles
from tests.fake_kube import FakeKube, helm_mesh_ca

pytestmark = pytest.mark.timeout(30)

DOMAIN = "mesh.test"
PROXIES = ("msm-system", "msm-proxy")
PEER = "ipv4:10.244.0.5:40000"


def pod(namespace: str, name: str) -> dict[str, Any]:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
            "spec": {"nodeName": "node-a", "serviceAccountName": "default"}}


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    for namespace, name in [("media", "camera-0"), ("msm-system", "msm-proxy-x7k2p")]:
        fake.put("pods", pod(namespace, name), notify=False)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", DOMAIN)


@pytest.fixture
async def issuer(kube: FakeKube, ca: CertificateAuthority) -> AsyncIterator[CertificateIssuer]:
    client = KubeClient(kube.url, token=kube.token)
    yield CertificateIssuer(ca, client, DOMAIN, "msm", proxy_service_accounts=[PROXIES])
    await client.close()


def request(token: str, role: str = "stub") -> pb.CertificateRequest:
    return pb.CertificateRequest(csr_pem=new_key_and_csr()[1], token=token, role=role)


def identity_of(reply: pb.CertificateReply) -> Identity:
    return identity_of_certificate(x509.load_pem_x509_certificate(reply.certificate_chain_pem))


async def test_a_stub_gets_the_identity_of_the_pod_its_token_is_bound_to(
        kube: FakeKube, issuer: CertificateIssuer, ca: CertificateAuthority) -> None:
    token = kube.issue_token("media", "default", pod="camera-0", node="node-a")
    reply = await issuer.issue(request(token), PEER)
    assert str(identity_of(reply)) == f"spiffe://{DOMAIN}/ns/media/sa/default/stub/camera-0"
    assert reply.trust_bundle_pem == ca.trust_bundle_pem and reply.not_after_unix > 0
    assert kube.requests[-1] == "POST /apis/authentication.k8s.io/v1/tokenreviews"


async def test_a_proxy_is_named_after_its_tokens_node(kube: FakeKube, issuer: CertificateIssuer) -> None:
    token = kube.issue_token(*PROXIES, pod="msm-proxy-x7k2p", node="node-b")
    reply = await issuer.issue(request(token, "proxy"), PEER)
    assert str(identity_of(reply)) == f"spiffe://{DOMAIN}/ns/msm-system/sa/msm-proxy/proxy/node-b"


@pytest.mark.parametrize(("make", "role", "error", "words"), [
    # Attack: a stub's token asking for a proxy certificate (to be programmed as a node's proxy).
    (lambda k: k.issue_token("media", "default", pod="camera-0", node="node-a"), "proxy", Forbidden,
     "not the proxies'"),
    # Attack: any workload asking to be the control plane or an operator.
    (lambda k: k.issue_token(*PROXIES, pod="msm-proxy-x7k2p", node="node-a"), "control-plane", Forbidden, "roles"),
    (lambda k: k.issue_token("media", "default", pod="camera-0"), "operator", Forbidden, "roles"),
    # A long-lived, unbound token (a Secret's, or a TokenRequest without a pod): names no pod.
    (lambda k: k.issue_token("media", "default"), "stub", Forbidden, "not bound to a pod"),
    (lambda k: k.issue_token(*PROXIES, pod="msm-proxy-x7k2p"), "proxy", Forbidden, "names no node"),
    # Tokens the API server does not accept for our audience.
    (lambda k: k.issue_token("media", "default", pod="camera-0", audiences=("https://kubernetes.default.svc",)),
     "stub", Unauthorized, "not accepted"),
    (lambda k: k.issue_token("media", "default", pod="camera-0", expires_in=-1), "stub", Unauthorized, "expired"),
    (lambda k: "eyJforged.token.value", "stub", Unauthorized, "not accepted"),
    (lambda k: "", "stub", Unauthorized, "no service-account token"),
    (lambda k: "x" * 20000, "stub", Unauthorized, "not a service-account token"),
    (lambda k: "bad\ntoken", "stub", Unauthorized, "not a service-account token"),
])
async def test_refusals(kube: FakeKube, issuer: CertificateIssuer, caplog: pytest.LogCaptureFixture,
                        make: Any, role: str, error: type[MsmError], words: str) -> None:
    token = make(kube)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(error, match=words) as caught:
        await issuer.issue(request(token, role), PEER)
    if len(token) > 8:
        assert token not in caught.value.reason and token not in caplog.text


async def test_a_token_of_a_deleted_pod_is_refused(kube: FakeKube, issuer: CertificateIssuer) -> None:
    token = kube.issue_token("media", "default", pod="camera-0", node="node-a")
    kube.delete("pods", "media", "camera-0")
    with pytest.raises(Unauthorized, match="invalidated"):
        await issuer.issue(request(token), PEER)


async def test_the_csr_cannot_choose_the_identity(kube: FakeKube, issuer: CertificateIssuer) -> None:
    token = kube.issue_token("media", "default", pod="camera-0", node="node-a")
    with pytest.raises(MsmError, match="signing request"):
        await issuer.issue(pb.CertificateRequest(csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", token=token,
                                                 role="stub"), PEER)


async def test_callers_are_rate_limited_each_on_its_own(kube: FakeKube, ca: CertificateAuthority) -> None:
    now = [0.0]
    client = KubeClient(kube.url, token=kube.token)
    issuer = CertificateIssuer(ca, client, DOMAIN, proxy_service_accounts=[PROXIES], clock=lambda: now[0])
    token = kube.issue_token("media", "default", pod="camera-0", node="node-a")
    for _ in range(issuer_module.BURST):
        await issuer.issue(request(token), PEER)
    reviews = len(kube.requests)
    with pytest.raises(RateLimited) as caught:
        await issuer.issue(request(token), "ipv4:10.244.0.5:40001")     # same address, another port
    assert caught.value.grpc_code == "RESOURCE_EXHAUSTED" and len(kube.requests) == reviews  # no TokenReview
    await issuer.issue(request(token), "ipv4:10.244.0.6:40000")           # someone else is not held up
    now[0] += issuer_module.REFILL
    await issuer.issue(request(token), PEER)                              # the budget refills
    await client.close()
    for i in range(MAX_CALLERS + 10):                                     # the table stays bounded
        issuer._budgets.take(f"ipv4:10.0.{i // 256}.{i % 256}")
    assert len(issuer._budgets.buckets) == MAX_CALLERS
    assert caller_of("ipv6:[fd00::5]:5000") == "ipv6:[fd00::5]" and caller_of("unix:/x") == "unix:/x"


async def test_an_unreachable_api_server_is_unavailable(ca: CertificateAuthority) -> None:
    client = KubeClient("http://127.0.0.1:9", token="t")
    issuer = CertificateIssuer(ca, client, DOMAIN)
    with pytest.raises(KubeError) as caught:
        await issuer.issue(request("eyJsomething"), PEER)
    assert caught.value.status == 503
    await client.close()


# --- bootstrap over TLS ---------------------------------------------------------------------------


class _Issuing(pb_grpc.ControlPlaneServicer):
    """Only IssueCertificate, as the control plane serves it: through the issuer, errors at the boundary."""

    def __init__(self, issuer: CertificateIssuer) -> None:
        self.issuer = issuer

    async def IssueCertificate(self, request: pb.CertificateRequest,  # noqa: N802 - gRPC's name
                               context: grpc.aio.ServicerContext[Any, Any]) -> pb.CertificateReply:
        try:
            return await self.issuer.issue(request, context.peer())
        except MsmError as exc:
            await abort(context, exc)
            raise


@pytest.fixture
async def control(issuer: CertificateIssuer, ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[str]:
    """A TLS server with the control plane's certificate; clients present none."""
    served = ca.issue(Identity(DOMAIN, "msm-system", "msm-control-plane", Role.CONTROL_PLANE))
    server = grpc.aio.server()
    pb_grpc.add_ControlPlaneServicer_to_server(_Issuing(issuer), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(served.key_pem, served.chain_pem)]))
    await server.start()
    (tmp_path / "bundle.pem").write_bytes(ca.trust_bundle_pem)
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_a_stub_bootstraps_its_certificate(kube: FakeKube, control: str, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(kube.issue_token("media", "default", pod="camera-0", node="node-a") + "\n")
    files = TlsFiles(tmp_path / "tls")
    boot = Bootstrap(control, files, token_file=tmp_path / "token", trust_bundle=tmp_path / "bundle.pem",
                     role=Role.STUB, trust_domain=DOMAIN)
    identity = await boot.obtain(timeout=5)
    assert str(identity) == f"spiffe://{DOMAIN}/ns/media/sa/default/stub/camera-0"
    assert files.identity() == identity and (files.key.stat().st_mode & 0o777) == 0o600
    lifetime = (files.not_after() - files.certificate().not_valid_before_utc).total_seconds()
    assert 0.4 * lifetime < boot.renew_delay() <= 0.5 * lifetime
    first = files.cert.read_bytes()
    boot.start()
    await boot.stop()
    await boot._once()                                   # a renewal replaces the files in place
    assert files.cert.read_bytes() != first and files.identity() == identity


async def test_bootstrap_refuses_a_server_that_is_not_the_mesh_control_plane(
        kube: FakeKube, control: str, tmp_path: Path) -> None:
    """A bundle that does not hold the mesh CA (or another trust domain): the token is never sent."""
    (tmp_path / "token").write_text(kube.issue_token("media", "default", pod="camera-0", node="node-a"))
    other = CertificateAuthority.create(tmp_path / "other", DOMAIN)
    (tmp_path / "other.pem").write_bytes(other.trust_bundle_pem)
    reviews = len(kube.requests)
    for bundle, domain in [(tmp_path / "other.pem", DOMAIN), (tmp_path / "bundle.pem", "other.test")]:
        with pytest.raises(MsmError) as caught:
            await request_certificate(control, token_file=tmp_path / "token", trust_bundle=bundle, role=Role.STUB,
                                      trust_domain=domain, files=TlsFiles(tmp_path / "tls"))
        assert caught.value.status == 503
    assert len(kube.requests) == reviews and not (tmp_path / "tls").exists()


async def test_bootstrap_errors_are_one_line(kube: FakeKube, control: str, tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    with pytest.raises(BootstrapError, match="cannot read the service-account token"):
        await request_certificate(control, token_file=tmp_path / "missing", trust_bundle=tmp_path / "bundle.pem",
                                  role=Role.STUB, trust_domain=DOMAIN, files=files)
    (tmp_path / "token").write_text(kube.issue_token("media", "default"))     # not bound: refused, not retried
    boot = Bootstrap(control, files, token_file=tmp_path / "token", trust_bundle=tmp_path / "bundle.pem",
                     role=Role.STUB, trust_domain=DOMAIN)
    with pytest.raises(MsmError, match="not bound to a pod") as caught:
        await asyncio.wait_for(boot.obtain(timeout=20), 5)
    assert caught.value.status == 403


# --- the entry points: no plaintext unless asked -----------------------------------------------------


@pytest.mark.parametrize("program", ["stub", "proxy", "control-plane"])
def test_no_component_runs_plaintext_by_default(program: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from msm.control_plane import main as control_plane_main
    from msm.rtp_proxy import main as proxy_main
    from msm.stub import main as stub_main

    for name in ("MSM_INSECURE", "MSM_TLS_DIR", "MSM_TOKEN_FILE", "MSM_TRUST_BUNDLE", "MSM_CA_DIR"):
        monkeypatch.delenv(name, raising=False)
    main = {"stub": stub_main.main, "proxy": proxy_main.main, "control-plane": control_plane_main.main}[program]
    assert main(["--listen", "127.0.0.1:0"]) == 2
    assert "no TLS settings" in capsys.readouterr().err
    assert main(["--listen", "127.0.0.1:0", "--insecure", "--tls-dir", "/x"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    if program != "control-plane":
        assert main(["--listen", "127.0.0.1:0", "--token-file", "/t"]) == 2
        assert "needs --trust-bundle" in capsys.readouterr().err


# --- the chart's CA, and the bootstrap port of a real control plane ---------------------------------


def test_a_ca_made_by_helm_takes_the_trust_domain_it_is_given(tmp_path: Path) -> None:
    """genCAWithKey writes a CN only: the trust domain comes from --trust-domain, and without it
    loading says so in one line instead of failing on a missing attribute."""
    directory = helm_mesh_ca(tmp_path / "helm")
    ca = CertificateAuthority.load(directory, DOMAIN)
    assert ca.trust_domain == DOMAIN
    chain, _ = ca.sign_csr(new_key_and_csr()[1], Identity(DOMAIN, "media", "default", Role.STUB, "camera-0"))
    assert str(identity_of_certificate(x509.load_pem_x509_certificate(chain))).endswith("/stub/camera-0")
    with pytest.raises(CaError, match=r"names no trust domain .*--trust-domain") as caught:
        CertificateAuthority.load(directory)
    assert "\n" not in str(caught.value)
    # A CA that names its domain keeps it; one that names another is refused, not silently used.
    ours = CertificateAuthority.create(tmp_path / "ours", DOMAIN)
    assert CertificateAuthority.load(tmp_path / "ours").trust_domain == DOMAIN == ours.trust_domain
    assert CertificateAuthority.load(tmp_path / "ours", DOMAIN).trust_domain == DOMAIN
    with pytest.raises(CaError, match="not 'other.test'"):
        CertificateAuthority.load(tmp_path / "ours", "other.test")


def test_the_bootstrap_address_defaults_to_the_control_planes_host() -> None:
    service = "msm-control-plane.msm-system.svc"
    assert bootstrap_address(f"{service}:9000") == f"{service}:{BOOTSTRAP_PORT}"
    assert bootstrap_address("[fd00::1]:9000") == "[fd00::1]:9002"
    assert bootstrap_address("dns:///cp:9000", "cp:7002") == "cp:7002"
    with pytest.raises(ConfigError, match="give --bootstrap HOST:PORT"):
        bootstrap_address("unix:/run/msm.sock")
    with pytest.raises(ConfigError, match="--bootstrap must be HOST:PORT"):
        bootstrap_address("cp:9000", "cp")


async def test_workloads_bootstrap_through_the_control_planes_bootstrap_port(
        kube: FakeKube, tmp_path: Path) -> None:
    """The whole chain as the chart runs it: a Helm-made CA, the control plane's bootstrap port,
    a proxy and a stub that start with a projected token and a trust bundle only; then each
    reaches the main (mutual TLS) port with what it got."""
    from msm.control_plane.resolver import StaticResolver
    from msm.control_plane.server import ControlPlaneServer
    from msm.rtp_proxy.main import parse_args as proxy_args
    from msm.security.tls import Rotator, secure_channel
    from msm.stub.main import parse_args as stub_args

    ca = CertificateAuthority.load(helm_mesh_ca(tmp_path / "ca"), DOMAIN)
    own = Rotator(ca).add(Identity(DOMAIN, "msm-system", "msm-control-plane", Role.CONTROL_PLANE),
                          TlsFiles(tmp_path / "cp"))
    client = KubeClient(kube.url, token=kube.token)
    server = ControlPlaneServer(StaticResolver(), listen="127.0.0.1:0", tls=own, bootstrap_listen="127.0.0.1:0",
                                issuer=CertificateIssuer(ca, client, DOMAIN, proxy_service_accounts=[PROXIES]))
    await server.start()
    try:
        assert server.bootstrap is not None
        (tmp_path / "bundle.pem").write_bytes(ca.trust_bundle_pem)
        tokens = {"proxy": kube.issue_token(*PROXIES, pod="msm-proxy-x7k2p", node="node-a"),
                  "stub": kube.issue_token("media", "default", pod="camera-0", node="node-a")}
        got = {}
        for role, parse in (("proxy", proxy_args), ("stub", stub_args)):
            (tmp_path / f"{role}.token").write_text(tokens[role])
            opts = parse(["--control", server.address, "--bootstrap", server.bootstrap.address,
                          "--token-file", str(tmp_path / f"{role}.token"),
                          "--trust-bundle", str(tmp_path / "bundle.pem"),
                          "--tls-dir", str(tmp_path / role), "--trust-domain", DOMAIN])
            check_tls_arguments(opts)
            files, boot = await workload_tls(opts, server.address, Role(role), f"msm-{role}")
            assert files is not None and boot is not None
            await boot.stop()
            got[role] = files
        assert str(got["proxy"].identity()) == f"spiffe://{DOMAIN}/ns/msm-system/sa/msm-proxy/proxy/node-a"
        assert str(got["stub"].identity()) == f"spiffe://{DOMAIN}/ns/media/sa/default/stub/camera-0"
        # Asking the main port without a certificate fails at the handshake: that is why the
        # bootstrap port exists.
        with pytest.raises(MsmError) as caught:
            await request_certificate(server.address, token_file=tmp_path / "stub.token",
                                      trust_bundle=tmp_path / "bundle.pem", role=Role.STUB, trust_domain=DOMAIN,
                                      files=TlsFiles(tmp_path / "again"))
        assert caught.value.status == 503
        # The stub's certificate is good on the main port (mutual TLS): known, and only a stub.
        async with secure_channel(server.address, got["stub"]) as channel:
            api = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.ListStreams(pb.ListStreamsRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop()
        await client.close()


def test_the_control_planes_planner_flags(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from msm.control_plane import main as control_plane_main

    for name in ("MSM_SRTP", "MSM_SRTP_REKEY", "MSM_MAX_TRACKS", "MSM_LINGER"):
        monkeypatch.delenv(name, raising=False)
    settings = control_plane_main.planner_settings(control_plane_main.parse_args([]))
    assert (settings.srtp, settings.rekey_interval, settings.max_tracks, settings.linger) == (True, 3600.0, 8, 5.0)
    opts = control_plane_main.parse_args(["--no-srtp", "--srtp-rekey", "60", "--max-tracks", "2", "--linger", "1"])
    settings = control_plane_main.planner_settings(opts)
    assert (settings.srtp, settings.rekey_interval, settings.max_tracks, settings.linger) == (False, 60.0, 2, 1.0)
    monkeypatch.setenv("MSM_SRTP", "0")
    assert control_plane_main.parse_args([]).srtp is False
    assert control_plane_main.parse_args(["--srtp"]).srtp is True
    assert opts.bootstrap_listen == "127.0.0.1:9002"   # loopback unless told (the chart says 0.0.0.0:9002)
    assert control_plane_main.planner_settings(
        control_plane_main.parse_args(["--max-legs-per-stub", "7"])).max_legs_per_stub == 7
    for argv, words in ((["--max-tracks", "0"], "max_tracks >= 1"), (["--max-legs-per-stub", "0"],
                        "max_legs_per_stub >= 1"), (["--bootstrap-listen", "nowhere"],
                                                                      "--bootstrap-listen must be HOST:PORT")):
        assert control_plane_main.main([*argv, "--insecure"]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
