"""Mutual TLS for the mesh's gRPC links, from a directory of PEM files.

A workload's directory (:class:`TlsFiles`) holds ``ca.pem`` (the trust bundle),
``cert.pem`` (its chain) and ``key.pem`` (0600). Servers require and verify a client
certificate from the bundle and pick up replaced files on the next handshake, without
restarting (:func:`server_credentials`). Clients read the files when they open a
channel, so a rotated certificate is presented on their next connection.

Which server a client talks to: certificates carry the SPIFFE ID (URI SAN) and a DNS
name derived from it by the CA (``control-plane.<trust-domain>``,
``<node>.proxy.<trust-domain>``, :func:`.identity.server_name`). A client names the
server it expects with ``grpc.ssl_target_name_override``, so gRPC's host name check IS
the client-side identity check: a stub or proxy refuses a server that is not the
control plane, the control plane refuses a proxy that is not the node it registered as.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from msm.sdk.errors import ConfigError

from .authz import identity_of_certificate
from .ca import WORKLOAD_LIFETIME, CertificateAuthority
from .identity import Identity, Role, server_name

log = logging.getLogger(__name__)

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
# A reader that meets a half-rotated directory retries this often, this far apart
# (the writer's three renames take microseconds; a broken directory costs 20 ms).
READ_ATTEMPTS = 3
READ_RETRY = 0.01


class TlsConfigError(ConfigError):
    """TLS files that are missing, unreadable, or do not belong together."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    ca_pem: bytes
    chain_pem: bytes
    key_pem: bytes


class TlsFiles:
    """The three files of one workload's TLS identity in ``directory``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"TlsFiles({str(self.directory)!r})"

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca, self.cert, self.key))

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when any file is replaced (inode, size, mtime)."""
        stamps = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = path.stat()
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def read(self) -> TlsMaterial:
        """The three files, checked to belong together (the key is the certificate's).

        A read that lands between the renames of :meth:`write` sees a new key with the old
        certificate; it looks again (a few milliseconds) before calling the files broken.
        """
        for _ in range(READ_ATTEMPTS - 1):
            with contextlib.suppress(TlsConfigError):
                return self._read()
            time.sleep(READ_RETRY)
        return self._read()

    def _read(self) -> TlsMaterial:
        try:
            material = TlsMaterial(self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes())
        except OSError as exc:
            raise TlsConfigError(f"cannot read TLS files in {self.directory}: "
                                 f"{exc.strerror} ({Path(exc.filename or '').name})") from exc
        try:
            leaf = x509.load_pem_x509_certificate(material.chain_pem)
            key = serialization.load_pem_private_key(material.key_pem, password=None)
            x509.load_pem_x509_certificates(material.ca_pem)
        except ValueError as exc:
            raise TlsConfigError(f"TLS files in {self.directory} are not PEM certificates and key") from exc
        if key.public_key() != leaf.public_key():
            raise TlsConfigError(f"the key in {self.directory} is not the certificate's")
        return material

    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise TlsConfigError(f"no readable certificate in {self.directory}") from exc

    def identity(self) -> Identity:
        """This workload's own identity, from its certificate's URI SAN."""
        return identity_of_certificate(self.certificate())

    def not_after(self) -> dt.datetime:
        return self.certificate().not_valid_after_utc

    def write(self, *, ca_pem: bytes, chain_pem: bytes, key_pem: bytes) -> None:
        """Replace the files, each atomically (write aside, rename), the key 0600.

        Readers check that key and certificate match, so one that reads between two
        renames keeps what it had and takes the pair on its next look.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, data, mode in ((self.ca, ca_pem, 0o644), (self.key, key_pem, 0o600),
                                 (self.cert, chain_pem, 0o644)):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)


# -- servers ------------------------------------------------------------------------------------------
def server_credentials(files: TlsFiles, *, require_client: bool = True) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate from the trust bundle and
    reload ``files`` when they change (checked at each new handshake, no restart).

    ``require_client=False`` is for the bootstrap port only (``IssueCertificate``, where a
    new workload proves itself with a token): gRPC then does not ask for a certificate.
    """
    material = files.read()   # a server with bad files does not start: one clear error
    state = {"stamp": files.stamp()}
    lock = threading.Lock()

    def config(m: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(m.key_pem, m.chain_pem)], root_certificates=m.ca_pem)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's core before a handshake; None keeps the current configuration.
        with lock:
            stamp = files.stamp()
            if stamp == state["stamp"]:
                return None
            try:
                fresh = files.read()
            except ConfigError as exc:   # mid-rotation or broken: keep serving with what we have
                log.warning("TLS files changed but cannot be used yet: %s", exc)
                return None
            state["stamp"] = stamp
            log.info("TLS certificate in %s reloaded", files.directory)
            return config(fresh)

    return grpc.dynamic_ssl_server_credentials(config(material), fetch,
                                               require_client_authentication=require_client)


# -- clients ------------------------------------------------------------------------------------------
def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    material = files.read()
    return grpc.ssl_channel_credentials(root_certificates=material.ca_pem, private_key=material.key_pem,
                                        certificate_chain=material.chain_pem)


def secure_channel(target: str, files: TlsFiles | None, *, role: Role = Role.CONTROL_PLANE, name: str = "",
                   insecure_ok: bool = False,
                   options: Sequence[tuple[str, int | str]] = ()) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target``, a server of ``role`` (and ``name``: a proxy's node).

    With ``files``: mutual TLS, the server checked to be ``role``/``name`` of our own
    trust domain. Without: plaintext, only when the caller explicitly chose it
    (``insecure_ok``); otherwise a :class:`TlsConfigError`.
    """
    if files is None:
        if not insecure_ok:
            raise TlsConfigError(f"no TLS files for the link to {target} and plaintext was not allowed")
        return grpc.aio.insecure_channel(target, options=list(options))
    expected = server_name(role, files.identity().trust_domain, name)
    return grpc.aio.secure_channel(target, channel_credentials(files),
                                   options=[("grpc.ssl_target_name_override", expected), *options])


def sync_secure_channel(target: str, files: TlsFiles, *, role: Role = Role.CONTROL_PLANE,
                        name: str = "") -> grpc.Channel:
    """:func:`secure_channel` for blocking callers (``msm streams``)."""
    expected = server_name(role, files.identity().trust_domain, name)
    return grpc.secure_channel(target, channel_credentials(files),
                               options=[("grpc.ssl_target_name_override", expected)])


# -- rotation (msm up: a local CA) ------------------------------------------------------------------------
class Rotator:
    """Keeps workload certificates issued by a local CA fresh: re-issues each one once
    half its lifetime has passed, writing the files in place (servers reload them,
    clients present them on their next connection)."""

    def __init__(self, ca: CertificateAuthority, *, lifetime: dt.timedelta = WORKLOAD_LIFETIME,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.ca = ca
        self.lifetime = lifetime
        self.clock = clock
        self.workloads: list[tuple[Identity, TlsFiles]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, identity: Identity, files: TlsFiles) -> TlsFiles:
        """Track ``files`` for ``identity``, issuing them now if missing, foreign or due."""
        self.workloads.append((identity, files))
        if self._due(identity, files):
            self.issue(identity, files)
        return files

    def issue(self, identity: Identity, files: TlsFiles) -> None:
        issued = self.ca.issue(identity, self.lifetime)
        files.write(ca_pem=self.ca.trust_bundle_pem, chain_pem=issued.chain_pem, key_pem=issued.key_pem)
        log.info("issued a certificate for %s (until %s)", identity, issued.not_after.isoformat(timespec="seconds"))

    def _due(self, identity: Identity, files: TlsFiles) -> bool:
        try:
            material = files.read()
            cert = files.certificate()
            if material.ca_pem != self.ca.trust_bundle_pem or files.identity() != identity:
                return True
        except ConfigError:
            return True
        half = (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2
        return self.clock() >= cert.not_valid_before_utc + half

    def next_due(self) -> dt.datetime:
        """When the first tracked certificate reaches half its lifetime."""
        times = []
        for _, files in self.workloads:
            try:
                cert = files.certificate()
            except ConfigError:
                return self.clock()
            times.append(cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2)
        return min(times, default=self.clock() + self.lifetime / 2)

    def rotate_due(self) -> int:
        """Re-issue every certificate that is due; how many were."""
        due = [(i, f) for i, f in self.workloads if self._due(i, f)]
        for identity, files in due:
            self.issue(identity, files)
        return len(due)

    async def run(self) -> None:
        while True:
            wait = (self.next_due() - self.clock()).total_seconds()
            # Wake at least hourly: a suspended laptop's monotonic sleep does not see wall time pass.
            await asyncio.sleep(min(max(wait, 1.0), 3600.0))
            try:
                self.rotate_due()
            except (OSError, ConfigError) as exc:
                log.error("certificate rotation failed (retrying): %s", exc)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="cert-rotator")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
