"""A stub's or proxy's certificate in Kubernetes: asked of the control plane with a token.

The workload makes its own key (ECDSA P-256; the key never leaves it) and a CSR, and
calls ``IssueCertificate`` with its projected service-account token over TLS that
authenticates the server only: the client has no certificate yet, and checks that the
server is the mesh's control plane (its certificate chains to the trust bundle mounted
from the chart's ConfigMap and names ``control-plane.<trust-domain>``). The answer is
written to a :class:`~.tls.TlsFiles` directory (each file atomically, the key 0600),
which the workload's gRPC servers and channels read. :class:`Bootstrap` then renews at
half the certificate's lifetime, in the background, with back-off while the control
plane cannot be reached; the files it replaces are picked up without a restart.

The control plane answers ``IssueCertificate`` on a port of its own, the bootstrap port
(:data:`BOOTSTRAP_PORT`, 9002): its main gRPC port asks every caller for a client
certificate at the handshake, which a workload that has none yet cannot give.

The token is read from its file at each request (the kubelet rotates it) and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import tempfile
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc
from msm.runtime.backoff import Backoff
from msm.runtime.grpcutil import error_from_rpc
from msm.runtime.hostport import format_host_port, parse_host_port
from msm.sdk.errors import ConfigError, MsmError, Unauthorized

from .identity import Identity, Role, server_name
from .tls import TlsFiles

__all__ = ["BOOTSTRAP_PORT", "Bootstrap", "BootstrapError", "add_tls_arguments", "bootstrap_address",
           "check_tls_arguments", "request_certificate", "workload_tls"]

log = logging.getLogger(__name__)

# One IssueCertificate call: a TokenReview and a signature; more than this is a dead link.
CALL_TIMEOUT = 15.0
MAX_TOKEN_FILE = 64 * 1024   # a projected token is ~1 KiB; a huge file is not one
# Renew when this fraction of the lifetime is left; never sooner than MIN_RENEW apart.
RENEW_AT = 0.5
MIN_RENEW = dt.timedelta(seconds=30)
# The control plane's bootstrap port (msm-control-plane --bootstrap-listen; the chart's Service).
BOOTSTRAP_PORT = 9002


class BootstrapError(ConfigError):
    """The token or trust bundle file cannot be read, or the reply is not a certificate for our key."""


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise BootstrapError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if not data.strip() or len(data) > limit:
        raise BootstrapError(f"the {what} {path} is empty or too large")
    return data


PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


def _bundle(trust_bundle: Path | str) -> bytes:
    """The trust bundle: a file, or the PEM text itself (how the webhook hands it to stubs)."""
    text = str(trust_bundle)
    if text.lstrip().startswith(PEM_BEGIN):
        return text.strip().encode() + b"\n"
    return _read(Path(trust_bundle), "trust bundle", 1 << 20)


def new_key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A fresh P-256 key and a CSR for it (its subject is ignored: the CA decides the identity)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


async def request_certificate(control: str, *, token_file: Path, trust_bundle: Path | str, role: Role,
                              trust_domain: str, files: TlsFiles) -> Identity:
    """One IssueCertificate round: new key, CSR, call, check, write ``files``. Returns the identity."""
    token = _read(token_file, "service-account token", MAX_TOKEN_FILE).decode("ascii", "replace").strip()
    bundle = _bundle(trust_bundle)
    key, csr_pem = new_key_and_csr()
    credentials = grpc.ssl_channel_credentials(root_certificates=bundle)
    options = [("grpc.ssl_target_name_override", server_name(Role.CONTROL_PLANE, trust_domain))]
    async with grpc.aio.secure_channel(control, credentials, options=options) as channel:
        api = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
        try:
            reply: pb.CertificateReply = await api.IssueCertificate(
                pb.CertificateRequest(csr_pem=csr_pem, token=token, role=role.value), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
    identity = _check(reply, key, role, trust_domain)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    files.write(ca_pem=reply.trust_bundle_pem or bundle, chain_pem=reply.certificate_chain_pem, key_pem=key_pem)
    return identity


def _check(reply: pb.CertificateReply, key: ec.EllipticCurvePrivateKey, role: Role, trust_domain: str) -> Identity:
    """The leaf of ``reply`` is for ``key`` and names a ``role`` of ``trust_domain``."""
    from .authz import identity_of_certificate

    try:
        leaf = x509.load_pem_x509_certificate(reply.certificate_chain_pem)
    except ValueError:
        raise BootstrapError("the control plane's reply holds no certificate") from None
    if leaf.public_key() != key.public_key():
        raise BootstrapError("the certificate the control plane issued is not for this workload's key")
    try:
        identity = identity_of_certificate(leaf)
    except Unauthorized as exc:
        raise BootstrapError(f"the issued certificate: {exc.reason}") from None
    if identity.role is not role or identity.trust_domain != trust_domain:
        raise BootstrapError(f"the control plane issued {identity}, not a {role.value} of {trust_domain}")
    return identity


class Bootstrap:
    """The first certificate (:meth:`obtain`), then renewal at half lifetime (:meth:`start`)."""

    def __init__(self, control: str, files: TlsFiles, *, token_file: Path, trust_bundle: Path | str, role: Role,
                 trust_domain: str, backoff: Backoff | None = None) -> None:
        self.control = control
        self.files = files
        self.token_file = token_file
        self.trust_bundle = trust_bundle
        self.role = role
        self.trust_domain = trust_domain
        self.backoff = backoff or Backoff(first=1.0, maximum=60.0, jitter=0.2)
        self.identity: Identity | None = None
        self._task: asyncio.Task[None] | None = None

    async def _once(self) -> None:
        self.identity = await request_certificate(
            self.control, token_file=self.token_file, trust_bundle=self.trust_bundle, role=self.role,
            trust_domain=self.trust_domain, files=self.files)
        log.info("certificate for %s until %s", self.identity,
                 self.files.not_after().isoformat(timespec="seconds"))

    async def obtain(self, timeout: float = 60.0) -> Identity:
        """The first certificate, retried with back-off for up to ``timeout`` seconds.

        A refusal (401/403: this token will never do) ends at once; an unreachable control
        plane or API server is retried. The last error is raised when time runs out.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self._once()
                self.backoff.reset()
                assert self.identity is not None
                return self.identity
            except MsmError as exc:
                if exc.status in (401, 403) or isinstance(exc, BootstrapError) \
                        or loop.time() + self.backoff.delay > deadline:
                    raise
                log.warning("no certificate yet from %s: %s; retrying in %.1fs", self.control, exc.reason,
                            self.backoff.delay)
                await self.backoff.wait()

    def renew_delay(self, now: dt.datetime | None = None) -> float:
        """Seconds until the certificate in ``files`` is due for renewal."""
        now = now or dt.datetime.now(dt.UTC)
        cert = self.files.certificate()
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        due = cert.not_valid_after_utc - lifetime * RENEW_AT
        return max((due - now).total_seconds(), MIN_RENEW.total_seconds())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_delay())
            while True:
                try:
                    await self._once()
                    self.backoff.reset()
                    break
                except MsmError as exc:
                    log.warning("certificate renewal failed: %s; retrying in %.1fs", exc.reason,
                                self.backoff.delay)
                    await self.backoff.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._renew_forever(), name="msm-cert-renewal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# -- the entry points' TLS settings (msm-stub, msm-proxy, msm-control-plane) ----------------------------
DEFAULT_TRUST_DOMAIN = "cluster.local"


def add_tls_arguments(parser: argparse.ArgumentParser, *, bootstrap: bool = True) -> None:
    """``--tls-dir``, ``--token-file``/``--trust-bundle`` (when ``bootstrap``), ``--trust-domain``, ``--insecure``."""
    env = os.environ.get
    parser.add_argument("--tls-dir", default=env("MSM_TLS_DIR", ""),
                        help="directory of ca.pem, cert.pem, key.pem (MSM_TLS_DIR); with --token-file, where "
                        "the issued certificate is written (default: a new private temporary directory)")
    if bootstrap:
        parser.add_argument("--token-file", default=env("MSM_TOKEN_FILE", ""),
                            help="projected service-account token: get a certificate from the control plane "
                            "(MSM_TOKEN_FILE)")
        parser.add_argument("--trust-bundle", default=env("MSM_TRUST_BUNDLE", ""),
                            help="the mesh CA's certificate, to check the control plane with: a file, or the "
                            "PEM text itself (MSM_TRUST_BUNDLE)")
        parser.add_argument("--bootstrap", default=env("MSM_BOOTSTRAP", ""), metavar="HOST:PORT",
                            help="the control plane's certificate bootstrap port, asked with --token-file "
                            f"(MSM_BOOTSTRAP; default the --control host, port {BOOTSTRAP_PORT})")
    parser.add_argument("--trust-domain", default=env("MSM_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN),
                        help=f"the mesh's SPIFFE trust domain (MSM_TRUST_DOMAIN, default {DEFAULT_TRUST_DOMAIN})")
    parser.add_argument("--insecure", action="store_true", default=env("MSM_INSECURE", "") == "1",
                        help="plaintext gRPC with no identities: anyone who reaches the ports can program "
                        "the mesh (MSM_INSECURE=1); for trusted test networks only")


def check_tls_arguments(opts: argparse.Namespace, *, also: str = "") -> None:
    """One mode and only one: --insecure, or TLS files (mounted or bootstrapped). ConfigError otherwise.

    ``also`` names another flag that provides TLS on its own (the control plane's --ca-dir).
    """
    token = getattr(opts, "token_file", "")
    bundle = getattr(opts, "trust_bundle", "")
    other = getattr(opts, also.lstrip("-").replace("-", "_"), "") if also else ""
    if token and not bundle:
        raise ConfigError("--token-file needs --trust-bundle (the mesh CA's certificate)")
    if bundle and not token:
        raise ConfigError("--trust-bundle is used with --token-file")
    if getattr(opts, "bootstrap", "") and not token:
        raise ConfigError("--bootstrap is used with --token-file")
    if token:   # where certificates come from: a bad address is one line now, not a retry loop later
        bootstrap_address(getattr(opts, "control", ""), getattr(opts, "bootstrap", ""))
    secured = bool(opts.tls_dir or token or other)
    if opts.insecure and secured:
        raise ConfigError("--insecure cannot be combined with TLS settings")
    if not opts.insecure and not secured:
        either = f", {also}" if also else ""
        raise ConfigError(f"no TLS settings: give --tls-dir, --token-file with --trust-bundle{either}, "
                          "or --insecure for plaintext")


def bootstrap_address(control: str, explicit: str = "") -> str:
    """Where to ask for certificates: ``explicit`` (--bootstrap), else ``control``'s host on
    :data:`BOOTSTRAP_PORT`. ConfigError when neither gives a HOST:PORT (a ``dns:///`` or
    ``unix:`` control target needs --bootstrap)."""
    if explicit:
        return str(parse_host_port(explicit, what="--bootstrap"))
    try:
        host = parse_host_port(control, what="--control").host
    except ConfigError:
        raise ConfigError(f"cannot tell the bootstrap port from --control {control!r}: "
                          "give --bootstrap HOST:PORT") from None
    return format_host_port(host, BOOTSTRAP_PORT)


async def workload_tls(opts: argparse.Namespace, control: str, role: Role,
                       program: str) -> tuple[TlsFiles | None, Bootstrap | None]:
    """The TLS files a stub or proxy runs with, bootstrapping them first when asked (opts checked)."""
    if opts.insecure:
        log.warning("%s: --insecure: plaintext gRPC, no identities; anyone who reaches the mesh's ports "
                    "can act as any component", program)
        return None, None
    files = TlsFiles(opts.tls_dir or tempfile.mkdtemp(prefix=f"{program}-tls-"))
    if not getattr(opts, "token_file", ""):
        files.read()   # mounted files: unusable ones are one clear error now, not at the first call
        return files, None
    # IssueCertificate on the bootstrap port: the main one wants a certificate we do not have yet.
    boot = Bootstrap(bootstrap_address(control, getattr(opts, "bootstrap", "")), files,
                     token_file=Path(opts.token_file), trust_bundle=opts.trust_bundle,
                     role=role, trust_domain=opts.trust_domain)
    await boot.obtain()
    boot.start()
    return files, boot
