"""Who is calling, and may they: the peer's SPIFFE ID from its verified client certificate.

TLS has already checked the certificate against the mesh's trust bundle; here its URI
SAN becomes an :class:`~.identity.Identity` of our trust domain, and :class:`Authorizer`
(a ``grpc.aio`` server interceptor) lets a method run only for the roles its rule names.
A method without a rule is refused: new methods are closed until someone opens them.
Refusals go through the error tree: :class:`Unauthorized` (no or unusable identity,
UNAUTHENTICATED) and :class:`Forbidden` (the wrong role, PERMISSION_DENIED).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, TypeAlias

import grpc
from cryptography import x509

from msm.runtime.grpcutil import abort
from msm.sdk.errors import Forbidden, MsmError, Unauthorized

from .identity import Identity, Role

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

ANYONE: frozenset[Role] = frozenset()   # a rule that lets any caller in (it authenticates otherwise)

# Who may call what. Keys are full method names; a method not listed is refused.
DATAPLANE_RULES: Mapping[str, Collection[Role]] = {
    **{f"/msm.v1.DataPlane/{method}": (Role.CONTROL_PLANE,)
       for method in ("AddFlow", "RemoveFlow", "AddLeg", "UpdateLeg", "RemoveLeg", "ListFlows", "WatchStats",
                      "SetFlowSource", "Rekey")},
    # Served on the same port: only the control plane places groups' links on a proxy.
    **{f"/msm.v1.MediaPlane/{method}": (Role.CONTROL_PLANE,)
       for method in ("OpenGroupLink", "CloseGroupLink", "ExpectGroup", "ForgetGroup", "ListGroups")},
}
CONTROL_PLANE_RULES: Mapping[str, Collection[Role]] = {
    "/msm.v1.ControlPlane/Connect": (Role.STUB,),
    "/msm.v1.ControlPlane/RegisterProxy": (Role.PROXY,),
    "/msm.v1.ControlPlane/ListStreams": (Role.OPERATOR, Role.CONTROL_PLANE),
    "/msm.v1.ControlPlane/IssueCertificate": ANYONE,   # authenticated by its token; server TLS still applies
    # A proxy, for its own node only (the servicer checks the node against the certificate).
    "/msm.v1.MediaControl/AnnounceFabric": (Role.PROXY,),
    "/msm.v1.MediaControl/Join": (Role.PROXY,),
    "/msm.v1.MediaControl/Leave": (Role.PROXY,),
    "/msm.v1.MediaControl/ListPlacements": (Role.OPERATOR, Role.CONTROL_PLANE),
}
# The bootstrap port (server TLS only: a new workload has no certificate yet) serves this alone.
BOOTSTRAP_RULES: Mapping[str, Collection[Role]] = {"/msm.v1.ControlPlane/IssueCertificate": ANYONE}


def identity_of_certificate(cert: x509.Certificate) -> Identity:
    """The one SPIFFE ID in ``cert``'s URI SAN (none, or several: :class:`Unauthorized`)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Unauthorized("the certificate names no workload identity") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise Unauthorized("the certificate must name exactly one SPIFFE ID")
    return Identity.parse(uris[0])


# Calls from the same few peers present the same certificate: parse each once. Bounded:
# a mesh has one certificate per workload (times two around a rotation).
@functools.lru_cache(maxsize=1024)
def _identity_of_pem(pem: bytes) -> Identity:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthorized("the peer certificate cannot be read") from None
    return identity_of_certificate(cert)


def peer_identity(context: Context, trust_domain: str) -> Identity:
    """The caller's identity; :class:`Unauthorized` without a certificate of ``trust_domain``."""
    certs = context.auth_context().get("x509_pem_cert") or []
    if not certs:
        raise Unauthorized("no client certificate: the mesh's gRPC needs a workload identity")
    identity = _identity_of_pem(bytes(certs[0]))
    if identity.trust_domain != trust_domain:
        raise Unauthorized(f"identity {identity} is not of trust domain {trust_domain}")
    return identity


def check_role(identity: Identity, roles: Collection[Role], what: str) -> None:
    if roles and identity.role not in roles:
        allowed = " or ".join(sorted(r.value for r in roles))
        raise Forbidden(f"{what} is for {allowed}, not {identity.role.value} ({identity})")


def check_name(identity: Identity, *, namespace: str | None = None, name: str, what: str) -> None:
    """A workload speaks only for itself: its certificate's namespace and name must be ``namespace``/``name``."""
    if identity.name != name or (namespace is not None and identity.namespace != namespace):
        claimed = f"{namespace}/{name}" if namespace is not None else name
        raise Forbidden(f"{identity} may not {what} as {claimed!r}")


async def require(context: Context, trust_domain: str, *roles: Role) -> Identity:
    """The caller's identity if it has one of ``roles`` (any role when none are given);
    otherwise the call ends UNAUTHENTICATED or PERMISSION_DENIED."""
    try:
        identity = peer_identity(context, trust_domain)
        check_role(identity, roles, "this call")
    except MsmError as exc:
        await abort(context, exc)
    return identity


Behavior = Callable[..., Any]


class Authorizer(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio has no stubs for it
    """Runs a method only for a peer whose role its rule names (``rules``: full method -> roles)."""

    def __init__(self, trust_domain: str, rules: Mapping[str, Collection[Role]]) -> None:
        self.trust_domain = trust_domain
        self.rules = dict(rules)

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        return self._wrap(handler, method, self.rules.get(method))

    async def _check(self, context: Context, method: str, roles: Collection[Role] | None) -> None:
        try:
            if roles is None:
                raise Forbidden(f"{method} is open to no one")
            if not roles:   # ANYONE: the method authenticates its caller itself
                return
            identity = peer_identity(context, self.trust_domain)
            check_role(identity, roles, method.rsplit("/", 1)[-1])
        except MsmError as exc:
            log.warning("refused %s from %s: %s", method, context.peer(), exc.reason)
            await abort(context, exc)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str,
              roles: Collection[Role] | None) -> grpc.RpcMethodHandler:
        check = self._check

        if handler.unary_unary is not None:
            inner_uu: Behavior = handler.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                await check(context, method, roles)
                return await inner_uu(request, context)
            return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us: Behavior = handler.unary_stream

            async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await check(context, method, roles)
                async for item in inner_us(request, context):
                    yield item
            return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.stream_stream is not None:
            inner_ss: Behavior = handler.stream_stream

            async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
                await check(context, method, roles)
                async for item in inner_ss(requests, context):
                    yield item
            return grpc.stream_stream_rpc_method_handler(stream_stream, handler.request_deserializer,
                                                         handler.response_serializer)
        inner_su: Behavior = handler.stream_unary

        async def stream_unary(requests: Any, context: Context) -> Any:
            await check(context, method, roles)
            return await inner_su(requests, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, handler.request_deserializer,
                                                    handler.response_serializer)
