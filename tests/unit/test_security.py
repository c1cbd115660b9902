"""Workload identities, the mesh CA, TLS files and rotation, role rules, and the stub's
lossless "viewer gone" reports, against real gRPC servers on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from msm.control_plane.resolver import StaticResolver
from msm.control_plane.server import ControlPlaneServer
from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc
from msm.runtime.grpcserver import GrpcServer
from msm.sdk.errors import Unauthorized
from msm.security.authz import identity_of_certificate
from msm.security.ca import BadCsr, CertificateAuthority
from msm.security.identity import Identity, Role
from msm.security.local import LocalPki, local_identity
from msm.security.tls import Rotator, TlsConfigError, TlsFiles, secure_channel
from msm.stub.control import OUTBOX_LIMIT, ControlClient

pytestmark = pytest.mark.timeout(60)


# -- identities -----------------------------------------------------------------------------------------
def test_identity_round_trip() -> None:
    proxy = Identity("msm.local", "local", "msm", Role.PROXY, "node-1")
    assert proxy.spiffe_id == "spiffe://msm.local/ns/local/sa/msm/proxy/node-1"
    assert Identity.parse(proxy.spiffe_id) == proxy
    assert proxy.dns_name == "node-1.proxy.msm.local"
    control = Identity.parse("spiffe://msm.local/ns/msm-system/sa/msm/control-plane")
    assert control.role is Role.CONTROL_PLANE and control.name == "" and control.dns_name == "control-plane.msm.local"


@pytest.mark.parametrize("uri", [
    "", "https://msm.local/ns/a/sa/b/stub/p", "spiffe://msm.local/ns/a/sa/b/king",
    "spiffe://msm.local/ns/a/sa/b", "spiffe://msm.local/ns/../sa/b/stub/p", "spiffe://msm.local/ns/a/sa/b/stub/",
    "spiffe://MSM.local/ns/a/sa/b/stub/p", "spiffe://msm.local/ns/a/sa/b/stub/p/q",
    "spiffe://msm.local/xx/a/sa/b/stub/p", "spiffe://msm.local/ns/a b/sa/b/stub/p", "spiffe://" + "a" * 3000,
])
def test_bad_identities_are_unauthorized(uri: str) -> None:
    with pytest.raises(Unauthorized):
        Identity.parse(uri)


# -- the CA ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca") / "ca", "msm.local")


def test_ca_files_and_reload(tmp_path: Path) -> None:
    created = CertificateAuthority.load_or_create(tmp_path / "ca", "msm.local")
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    again = CertificateAuthority.load_or_create(tmp_path / "ca", "msm.local")
    assert again.trust_bundle_pem == created.trust_bundle_pem
    lifetime = created.certificate.not_valid_after_utc - created.certificate.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)


def test_issue_names_the_identity_only(ca: CertificateAuthority) -> None:
    identity = local_identity(Role.STUB, "gateway")
    issued = ca.issue(identity)
    leaf = x509.load_pem_x509_certificate(issued.chain_pem)
    leaf.verify_directly_issued_by(ca.certificate)
    assert identity_of_certificate(leaf) == identity
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["stub.msm.local"]
    assert dt.timedelta(hours=23) < leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=24)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _csr(key: ec.EllipticCurvePrivateKey, uri: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control plane please")]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def test_sign_csr_ignores_what_the_csr_asks(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    greedy = _csr(key, "spiffe://msm.local/ns/local/sa/msm/control-plane")
    chain, not_after = ca.sign_csr(greedy, local_identity(Role.STUB, "pod-a"))
    leaf = x509.load_pem_x509_certificate(chain)
    assert identity_of_certificate(leaf) == local_identity(Role.STUB, "pod-a")
    assert leaf.public_key() == key.public_key() and leaf.not_valid_after_utc == not_after.replace(microsecond=0)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []


def test_sign_csr_checks_the_signature(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(_csr(key, "spiffe://msm.local/ns/local/sa/msm/stub/a"))
    # Swap in another key: the self-signature no longer verifies.
    other = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateSigningRequestBuilder().subject_name(csr.subject).sign(other, hashes.SHA256()))
    der = bytearray(forged.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01   # corrupt the signature
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + __import__("base64").encodebytes(bytes(der)) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(BadCsr):
        ca.sign_csr(pem, local_identity(Role.STUB, "a"))
    with pytest.raises(BadCsr):
        ca.sign_csr(b"not a csr", local_identity(Role.STUB, "a"))


# -- files and rotation ------------------------------------------------------------------------------------
def test_tls_files_write_and_check(ca: CertificateAuthority, tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "w")
    issued = ca.issue(local_identity(Role.OPERATOR))
    files.write(ca_pem=ca.trust_bundle_pem, chain_pem=issued.chain_pem, key_pem=issued.key_pem)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert files.identity() == local_identity(Role.OPERATOR)
    other = ca.issue(local_identity(Role.OPERATOR))
    files.key.write_bytes(other.key_pem)   # a key that is not the certificate's
    with pytest.raises(TlsConfigError, match="not the certificate"):
        files.read()
    with pytest.raises(TlsConfigError, match="no TLS files"):
        secure_channel("127.0.0.1:1", None)


def test_rotator_reissues_at_half_life(ca: CertificateAuthority, tmp_path: Path) -> None:
    now = [dt.datetime.now(dt.UTC)]
    rotator = Rotator(ca, clock=lambda: now[0])
    files = rotator.add(local_identity(Role.PROXY, "local"), TlsFiles(tmp_path / "p"))
    first = files.certificate().serial_number
    assert rotator.rotate_due() == 0
    now[0] += dt.timedelta(hours=11)
    assert rotator.rotate_due() == 0
    now[0] += dt.timedelta(hours=2)
    assert rotator.rotate_due() == 1 and files.certificate().serial_number != first


def test_local_pki_state_directory(tmp_path: Path) -> None:
    pki = LocalPki(tmp_path / "state")
    pki.prepare()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert {w: pki[w].identity().spiffe_id for w in ("control-plane", "proxy", "gateway", "operator")} == {
        "control-plane": "spiffe://msm.local/ns/local/sa/msm/control-plane",
        "proxy": "spiffe://msm.local/ns/local/sa/msm/proxy/local",
        "gateway": "spiffe://msm.local/ns/local/sa/msm/stub/gateway",
        "operator": "spiffe://msm.local/ns/local/sa/msm/operator"}
    serial = pki["proxy"].certificate().serial_number
    again = LocalPki(tmp_path / "state")
    again.prepare()   # a restart reuses the CA and the certificates that are not due
    assert again["proxy"].certificate().serial_number == serial


# -- the control plane's rules ------------------------------------------------------------------------------
@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[tuple[ControlPlaneServer, LocalPki]]:
    pki = LocalPki(tmp_path / "state")
    pki.prepare()
    server = ControlPlaneServer(StaticResolver(), listen="127.0.0.1:0", tls=pki["control-plane"])
    await server.start()
    try:
        yield server, pki
    finally:
        await server.stop()


async def test_issue_certificate_without_issuer_is_unimplemented(
        control: tuple[ControlPlaneServer, LocalPki], tmp_path: Path, ca: CertificateAuthority) -> None:
    server, pki = control
    # Any caller may ask (it authenticates by token), even one from another CA... over server TLS.
    async with secure_channel(server.address, pki["gateway"]) as channel:
        api = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.IssueCertificate(pb.CertificateRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_bootstrap_port_answers_issue_certificate_only(tmp_path: Path) -> None:
    """A workload without a certificate reaches IssueCertificate (server TLS) and nothing else."""
    pki = LocalPki(tmp_path / "state")
    pki.prepare()
    server = ControlPlaneServer(StaticResolver(), listen="127.0.0.1:0", tls=pki["control-plane"],
                                bootstrap_listen="127.0.0.1:0")
    await server.start()
    try:
        assert server.bootstrap is not None
        bundle = grpc.ssl_channel_credentials(root_certificates=pki["control-plane"].ca.read_bytes())
        options = [("grpc.ssl_target_name_override", "control-plane.msm.local")]
        async with grpc.aio.secure_channel(server.bootstrap.address, bundle, options=options) as channel:
            api = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.IssueCertificate(pb.CertificateRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED   # no issuer here
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.ListStreams(pb.ListStreamsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED   # not served here
    finally:
        await server.stop()


async def test_a_client_checks_the_server_role(control: tuple[ControlPlaneServer, LocalPki]) -> None:
    """A stub expecting the control plane refuses a server whose certificate is a proxy's."""
    server, pki = control
    fake = ControlPlaneServer(StaticResolver(), listen="127.0.0.1:0", tls=pki["proxy"])
    await fake.start()
    try:
        async with secure_channel(fake.address, pki["operator"]) as channel:
            api = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.ListStreams(pb.ListStreamsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        async with secure_channel(server.address, pki["operator"]) as channel:
            api = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
            assert len((await api.ListStreams(pb.ListStreamsRequest(), timeout=5)).streams) == 0
    finally:
        await fake.stop()


# -- viewer gone is never dropped ---------------------------------------------------------------------------
class Recorder(pb_grpc.ControlPlaneServicer):
    """A control plane that only records the stub's "viewer gone" reports."""

    def __init__(self) -> None:
        self.gone: list[str] = []
        self.changed = asyncio.Event()

    async def Connect(self, request_iterator: AsyncIterator[pb.StubMessage],
                      context: Any) -> AsyncIterator[pb.ControlMessage]:
        async for message in request_iterator:
            if message.WhichOneof("kind") == "viewer_gone":
                self.gone.append(message.viewer_gone.session_id)
                self.changed.set()
        yield pb.ControlMessage()


async def test_viewer_gone_burst_is_lossless() -> None:
    """A connection closing with 3,000 sessions reports every one (the 1,024-slot outbox lost ~2,000)."""
    recorder = Recorder()
    server = GrpcServer("127.0.0.1:0", lambda s: pb_grpc.add_ControlPlaneServicer_to_server(  # type: ignore[no-untyped-call]
        recorder, s))
    await server.start()
    client = ControlClient(server.address, pb.StubRegister(stub_id="s"), on_command=_no_command)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), 10)
        sessions = [f"session-{i}" for i in range(3 * OUTBOX_LIMIT)]
        for session in sessions:   # all at once, as a closing connection ends its sessions
            client.send(pb.StubMessage(viewer_gone=pb.ViewerGone(session_id=session, reason="closed")))
        async with asyncio.timeout(20):
            while len(recorder.gone) < len(sessions):
                recorder.changed.clear()
                await recorder.changed.wait()
        assert recorder.gone == sessions and client.dropped == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop(0)


async def _no_command(command: pb.ControlCommand) -> pb.CommandResult:
    return pb.CommandResult()
