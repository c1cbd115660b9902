"""The mesh's certificate authority: one ECDSA P-256 key that signs workload certificates.

Every workload certificate names exactly one SPIFFE ID (URI SAN) and the DNS name
clients check for its role (:attr:`.identity.Identity.dns_name`); the CA sets both
from the :class:`~.identity.Identity` it is given and never copies what a CSR asks for.
All the cryptography is the ``cryptography`` package's.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from msm.sdk.errors import ConfigError, Refused

from .identity import Identity

# Workload certificates live a day: a stolen key is useful for hours, not months, and
# rotation at half-life (``tls.Rotator``, the issuer's clients) keeps a day of slack
# for a control plane that is briefly down.
WORKLOAD_LIFETIME = dt.timedelta(hours=24)
# The CA itself: a year, long enough that a local mesh does not re-key under its users,
# short enough that a forgotten state directory does not hold a forever-valid root.
CA_LIFETIME = dt.timedelta(days=365)
# Nothing asks for a workload certificate that outlives this (a CSR cannot ask for more).
MAX_WORKLOAD_LIFETIME = dt.timedelta(days=7)
# Clock skew between hosts: certificates start this long before they are issued.
BACKDATE = dt.timedelta(minutes=5)
MAX_CSR = 16 * 1024   # a P-256 CSR is under 1 KiB; anything huge is not one

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"


class CaError(ConfigError):
    """The CA's files are missing, unreadable or not a CA."""


class BadCsr(Refused):
    """A certificate signing request that is not one, or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    key_pem: bytes       # the workload's private key (PKCS#8, unencrypted: it goes to a 0600 file)
    chain_pem: bytes     # its certificate, then the CA's
    not_after: dt.datetime


def trust_domain_of(certificate: x509.Certificate) -> str:
    """The trust domain a CA certificate names (its subject's O), or '' when it names none."""
    names = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(names[0].value) if names else ""


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as 0600 from the first byte, atomically (rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate,
                 trust_domain: str | None = None) -> None:
        """``trust_domain``: the mesh's, when the certificate does not say it (its subject's O)."""
        self.key = key
        self.certificate = certificate
        named = trust_domain_of(certificate)
        if named and trust_domain and named != trust_domain:
            raise CaError(f"the mesh CA is for trust domain {named!r}, not {trust_domain!r}")
        if not (named or trust_domain):
            raise CaError("the mesh CA's certificate names no trust domain (no O in its subject): "
                          "give the trust domain (--trust-domain)")
        self.trust_domain: str = named or trust_domain or ""

    @property
    def trust_bundle_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    # -- create / load --------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path | str, trust_domain: str, *,
               lifetime: dt.timedelta = CA_LIFETIME) -> CertificateAuthority:
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"msm mesh CA ({trust_domain})")])
        now = _now()
        public = key.public_key()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=True, crl_sign=True,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(directory / CA_KEY, _pem_key(key))
        (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    @classmethod
    def load(cls, directory: Path | str, trust_domain: str | None = None) -> CertificateAuthority:
        """The CA in ``directory`` (``ca-cert.pem``, ``ca-key.pem``).

        Its trust domain is its subject's O when it has one (a CA this module made); a CA
        made elsewhere, such as Helm's ``genCAWithKey`` (a CN only), takes ``trust_domain``.
        A CaError when neither says one, or when they disagree.
        """
        directory = Path(directory)
        try:
            key_pem = (directory / CA_KEY).read_bytes()
            cert_pem = (directory / CA_CERT).read_bytes()
        except OSError as exc:
            raise CaError(f"cannot read the mesh CA in {directory}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CaError(f"the mesh CA in {directory} is not a PEM key and certificate") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise CaError(f"the mesh CA key in {directory} does not match its certificate")
        if not _is_ca(cert):
            raise CaError(f"the certificate in {directory / CA_CERT} is not a CA certificate")
        try:
            return cls(key, cert, trust_domain)
        except CaError as exc:
            raise CaError(f"{directory}: {exc.reason}") from None

    @classmethod
    def load_or_create(cls, directory: Path | str, trust_domain: str) -> CertificateAuthority:
        """The CA in ``directory``, made there (0700 directory, 0600 key) the first time.

        An expired (or nearly expired) CA is replaced: its certificates would not verify anyway.
        """
        directory = Path(directory)
        if (directory / CA_KEY).exists():
            ca = cls.load(directory)
            if ca.trust_domain != trust_domain:
                raise CaError(f"the mesh CA in {directory} is for {ca.trust_domain!r}, not {trust_domain!r}")
            if ca.certificate.not_valid_after_utc - _now() > 2 * WORKLOAD_LIFETIME:
                return ca
        return cls.create(directory, trust_domain)

    # -- issue ---------------------------------------------------------------------------------------
    def issue(self, identity: Identity, lifetime: dt.timedelta = WORKLOAD_LIFETIME) -> IssuedCertificate:
        """A new key and a certificate for ``identity``."""
        key = ec.generate_private_key(ec.SECP256R1())
        chain, not_after = self._sign(key.public_key(), identity, lifetime)
        return IssuedCertificate(key_pem=_pem_key(key), chain_pem=chain, not_after=not_after)

    def sign_csr(self, csr_pem: bytes, identity: Identity,
                 lifetime: dt.timedelta = WORKLOAD_LIFETIME) -> tuple[bytes, dt.datetime]:
        """Sign the public key of ``csr_pem`` for ``identity`` (the caller decided who it is).

        Only the CSR's key is used, after its self-signature verifies; its subject and
        extensions are ignored. Returns the chain (leaf, CA) and the expiry.
        """
        if len(csr_pem) > MAX_CSR:
            raise BadCsr("certificate signing request too large")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise BadCsr("not a PEM certificate signing request") from None
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, ValueError):
            valid = False
        if not valid:
            raise BadCsr("the certificate signing request's signature does not verify")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
            raise BadCsr("the certificate signing request must carry an ECDSA P-256 key")
        return self._sign(public, identity, lifetime)

    def _sign(self, public: ec.EllipticCurvePublicKey, identity: Identity,
              lifetime: dt.timedelta) -> tuple[bytes, dt.datetime]:
        if identity.trust_domain != self.trust_domain:
            raise Refused(f"this CA issues for {self.trust_domain!r}, not {identity.trust_domain!r}")
        lifetime = min(lifetime, MAX_WORKLOAD_LIFETIME)
        now = _now()
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.trust_domain)]))
                .issuer_name(self.certificate.subject).public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE).not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName([
                    x509.UniformResourceIdentifier(identity.spiffe_id), x509.DNSName(identity.dns_name)]),
                    critical=True)   # the subject is empty of identity: the SAN is the identity
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.trust_bundle_pem
        return chain, not_after
