"""Who a workload is: a SPIFFE ID carried in its certificate's URI SAN.

``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>/<role>[/<name>]``

The role says what the workload may do (:mod:`.authz`); the name says which one it
is where that matters: a proxy's node, a stub's pod. A malformed ID is an
:class:`~msm.sdk.errors.Unauthorized`: whoever presented it is not identified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from msm.sdk.errors import Unauthorized

SCHEME = "spiffe://"
# SPIFFE path segments: letters, digits, '.', '-', '_' (no empty, '.' or '..' segment).
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,253}")
# A trust domain is a lowercase DNS-like name.
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?")
MAX_ID = 2048   # SPIFFE's own limit on an ID's length


class Role(StrEnum):
    CONTROL_PLANE = "control-plane"
    PROXY = "proxy"
    STUB = "stub"
    OPERATOR = "operator"


def _segment(value: str, what: str) -> str:
    if not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise Unauthorized(f"bad {what} {value[:64]!r} in a workload identity")
    return value


@dataclass(frozen=True, slots=True)
class Identity:
    trust_domain: str
    namespace: str
    service_account: str
    role: Role
    name: str = ""

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise Unauthorized(f"bad trust domain {self.trust_domain[:64]!r}")
        _segment(self.namespace, "namespace")
        _segment(self.service_account, "service account")
        if not isinstance(self.role, Role):
            object.__setattr__(self, "role", _role(str(self.role)))
        if self.name:
            _segment(self.name, "name")

    @property
    def spiffe_id(self) -> str:
        tail = f"/{self.name}" if self.name else ""
        return (f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}/"
                f"{self.role.value}{tail}")

    @property
    def dns_name(self) -> str:
        """The DNS SAN the CA adds, which a client names as the server it expects.

        ``control-plane.<trust-domain>``, ``<node>.proxy.<trust-domain>``: a client
        checks the server's role (and a proxy's node) through gRPC's own host name
        verification (``grpc.ssl_target_name_override``), see :mod:`.tls`.
        """
        return server_name(self.role, self.trust_domain, self.name)

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """The identity of ``uri``; anything but a well-formed mesh SPIFFE ID raises :class:`Unauthorized`."""
        if len(uri) > MAX_ID or not uri.startswith(SCHEME):
            raise Unauthorized("not a SPIFFE ID")
        domain, _, path = uri[len(SCHEME):].partition("/")
        parts = path.split("/")
        if len(parts) not in (5, 6) or parts[0] != "ns" or parts[2] != "sa":
            raise Unauthorized("not a mesh workload ID (spiffe://DOMAIN/ns/NS/sa/SA/ROLE[/NAME])")
        name = parts[5] if len(parts) == 6 else ""
        if len(parts) == 6 and not name:
            raise Unauthorized("empty name in a workload identity")
        return cls(domain, parts[1], parts[3], _role(parts[4]), name)

    def __str__(self) -> str:
        return self.spiffe_id


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise Unauthorized(f"unknown role {value[:32]!r}") from None


def server_name(role: Role, trust_domain: str, name: str = "") -> str:
    """The DNS name a server of ``role`` (and ``name``) carries: see :attr:`Identity.dns_name`."""
    base = f"{role.value}.{trust_domain}"
    return f"{name.lower()}.{base}" if role is Role.PROXY and name else base
