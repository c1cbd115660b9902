"""Workload certificates for stubs and proxies in Kubernetes, issued by the control plane.

A workload proves who it is with its projected service-account token (audience
``msm`` by default, short-lived, bound to its pod); the issuer asks the Kubernetes API
whether the token is good (a ``TokenReview``, ``authentication.k8s.io/v1``) and derives
the identity from the API server's answer alone, never from what the caller claims:

* role ``stub``: a token bound to a pod; the certificate names that pod, in the token's
  namespace and service account (``.../ns/<ns>/sa/<sa>/stub/<pod>``);
* role ``proxy``: a token of the proxies' own service account (configured), bound to a
  pod, whose node the API server names (``.../ns/<ns>/sa/<sa>/proxy/<node>``): a proxy
  cannot choose the node it speaks for;
* anything else (another role, an unbound token, the wrong audience, a token the API
  server does not accept): refused with one line saying why, :class:`Unauthorized` (the
  token proves nothing) or :class:`Forbidden` (it proves someone who may not have this).

Each caller (by its address) has a small budget of requests, so one workload cannot keep
the API server busy with TokenReviews; at most a few reviews are in flight at once.
The token is never logged, nor put in any error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any, Protocol

from msm.protos import msm_pb2 as pb
from msm.sdk.errors import Forbidden, ResourceExhausted, Unauthorized

from .ca import WORKLOAD_LIFETIME, CertificateAuthority
from .identity import Identity, Role

__all__ = ["CertificateIssuer", "RateLimited", "TokenReviewer"]

log = logging.getLogger(__name__)

TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
POD_NAME = "authentication.kubernetes.io/pod-name"
NODE_NAME = "authentication.kubernetes.io/node-name"
SA_PREFIX = "system:serviceaccount:"
# A projected token is a JWT of about 1 KiB; anything this large is not one and is not
# forwarded to the API server.
MAX_TOKEN = 16 * 1024
# Per caller: a burst of BURST requests, then one every REFILL seconds. A workload asks
# once at start and once per half lifetime (hours); restarts and retries fit easily.
BURST = 5
REFILL = 2.0
# Callers remembered for their budget: bounded so that many addresses cannot grow the
# table without end; the least recently seen is forgotten first (it gets a fresh budget).
MAX_CALLERS = 4096
# TokenReviews in flight at once: the API server is shared with the whole cluster.
MAX_REVIEWS = 8


class RateLimited(ResourceExhausted):
    """A caller asked for certificates faster than its budget allows (RESOURCE_EXHAUSTED)."""


class TokenReviewer(Protocol):
    """What the issuer needs of a Kubernetes client: one create (``KubeClient.post``)."""

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...


class _Budgets:
    """Token buckets per caller, bounded to ``MAX_CALLERS`` (least recently seen evicted)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # caller -> (tokens, at)

    def take(self, caller: str) -> bool:
        now = self.clock()
        tokens, at = self.buckets.pop(caller, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - at) / REFILL)
        allowed = tokens >= 1.0
        self.buckets[caller] = (tokens - 1.0 if allowed else tokens, now)
        while len(self.buckets) > MAX_CALLERS:
            self.buckets.popitem(last=False)
        return allowed


def caller_of(peer: str) -> str:
    """The address part of a gRPC peer (``ipv4:10.0.0.5:41234`` -> ``ipv4:10.0.0.5``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _ = rest.rpartition(":")
        return f"{kind}:{host}"
    return peer


def _one(extra: dict[str, Any], key: str) -> str:
    values = extra.get(key)
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""


class CertificateIssuer:
    """``IssueCertificate``: token -> TokenReview -> identity -> a certificate from ``ca``."""

    def __init__(self, ca: CertificateAuthority, kube: TokenReviewer, trust_domain: str, audience: str = "msm",
                 lifetime: dt.timedelta = WORKLOAD_LIFETIME, *,
                 proxy_service_accounts: Collection[tuple[str, str]] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ca = ca
        self.kube = kube
        self.trust_domain = trust_domain
        self.audience = audience
        self.lifetime = lifetime
        self.proxy_service_accounts = frozenset(proxy_service_accounts)
        self._budgets = _Budgets(clock)
        self._reviews = asyncio.Semaphore(MAX_REVIEWS)

    async def issue(self, request: pb.CertificateRequest, peer: str) -> pb.CertificateReply:
        caller = caller_of(peer)
        if not self._budgets.take(caller):
            raise RateLimited(f"too many certificate requests from {caller}; retry in a few seconds")
        identity = await self.identify(request.token, request.role)
        chain, not_after = self.ca.sign_csr(request.csr_pem, identity, self.lifetime)
        log.info("issued a certificate for %s to %s, valid until %s", identity, caller,
                 not_after.isoformat(timespec="seconds"))
        return pb.CertificateReply(certificate_chain_pem=chain, trust_bundle_pem=self.ca.trust_bundle_pem,
                                   not_after_unix=int(not_after.timestamp()))

    async def identify(self, token: str, role_name: str) -> Identity:
        """The identity ``token`` proves for ``role_name``, or Unauthorized/Forbidden saying why."""
        if role_name not in (Role.STUB.value, Role.PROXY.value):
            raise Forbidden(f"certificates are issued for roles stub and proxy only, not {role_name[:32]!r}")
        if not token:
            raise Unauthorized("no service-account token")
        if len(token) > MAX_TOKEN or not token.isascii() or not token.isprintable():
            raise Unauthorized("that is not a service-account token")
        status = await self._review(token)
        user: dict[str, Any] = status["user"] if isinstance(status.get("user"), dict) else {}
        username = str(user.get("username", ""))
        namespace, _, account = username.removeprefix(SA_PREFIX).partition(":")
        if not username.startswith(SA_PREFIX) or not namespace or not account:
            raise Forbidden("only Kubernetes service accounts get mesh certificates")
        extra: dict[str, Any] = user["extra"] if isinstance(user.get("extra"), dict) else {}
        pod, node = _one(extra, POD_NAME), _one(extra, NODE_NAME)
        if not pod:
            raise Forbidden(f"the token of {namespace}/{account} is not bound to a pod (use a projected token)")
        if role_name == Role.STUB.value:
            return Identity(self.trust_domain, namespace, account, Role.STUB, pod)
        if (namespace, account) not in self.proxy_service_accounts:
            raise Forbidden(f"service account {namespace}/{account} is not the proxies'")
        if not node:
            raise Forbidden("the proxy's token names no node (Kubernetes 1.30+ binds tokens to nodes)")
        return Identity(self.trust_domain, namespace, account, Role.PROXY, node)

    async def _review(self, token: str) -> dict[str, Any]:
        """``status`` of the TokenReview of ``token``; Unauthorized unless authenticated for our audience."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.audience]}}
        async with self._reviews:
            review = await self.kube.post(TOKENREVIEWS, body)   # KubeError (503) when the API fails
        status = review.get("status")
        if not isinstance(status, dict) or status.get("authenticated") is not True:
            why = str(status.get("error", "")) if isinstance(status, dict) else ""
            raise Unauthorized(f"service-account token not accepted{': ' + why[:160] if why else ''}")
        audiences = status.get("audiences")
        if isinstance(audiences, list) and self.audience not in audiences:
            raise Unauthorized(f"service-account token is not for audience {self.audience!r}")
        return status
