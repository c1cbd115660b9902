"""The one exception tree of msm.

Every error msm raises on purpose is an :class:`MsmError`, and every one carries
the answer each boundary gives for it: the RTSP status (``status``), the gRPC
status code (``grpc_code``, a :class:`grpc.StatusCode` name, so this module needs
no gRPC), the HTTP status (``http_status``) and the CNI error code
(``cni_code``). Components raise these where the fault is found and translate
them exactly once, at their boundary, with one function per boundary:

- RTSP reply to a viewer: ``msm.sdk.rtsp_server`` (the stub's server session);
- gRPC status: ``msm.runtime.grpcutil`` (servicers) and ``msm.protos.status``
  (the ``Status`` carried inside ``Connect`` replies and command results);
- CNI error JSON: ``msm.cni_plugin.errors.error_json`` (code 199 for a non-msm exception);
- HTTP response: ``msm.webhook.review.rejection`` and the control plane's web page.

The tree (component-specific leaves live next to their component and subclass
one of these; each module says which)::

    MsmError                      500 / INTERNAL / 500 / CNI 999
    ├── ProtocolError             a peer sent bytes that break a protocol (400)
    │   ├── RtspError             malformed/oversized RTSP message or header (400, 413, 414, 505...)
    │   ├── SdpError              malformed session description
    │   ├── RtpError              malformed RTP packet
    │   └── RtcpError             malformed RTCP packet
    ├── Refused                   a well-formed request msm will not honour; carries its RTSP status
    │   ├── Unauthorized          401: no credentials, or wrong ones (RTSP auth, no mesh certificate)
    │   ├── Forbidden             403: an authenticated caller asks for what its identity may not do
    │   ├── NotFound              404: no such route, stream or track
    │   ├── SessionNotFound       454: unknown or foreign RTSP session
    │   ├── MethodNotValid        455: method not valid in this state
    │   ├── AggregateOnly         460: only aggregate operation allowed
    │   ├── UnsupportedTransport  461: transport the mesh cannot serve
    │   ├── NotImplemented_       501: method not implemented
    │   └── OptionNotSupported    551: Require: an option msm does not support
    ├── UpstreamError             the upstream RTSP server answered with an error; carries its status
    ├── Unavailable               503: a dependency is down (upstream unreachable, no proxy on a node)
    │   ├── CredentialsRejected   msm.stub.rtsp_client: an upstream refused the route's credentials, or wants some
    │   ├── EngineUnavailable     msm.rtp_proxy.engine: the native engine asked for cannot run
    │   ├── KubeError             the Kubernetes API failed or answered nonsense (CNI 11)
    │   ├── LinkClosed            msm.control_plane.ports: a stub or proxy link went away mid-call
    │   ├── ListenError           msm.runtime.grpcserver: a server cannot bind its address
    │   └── TimedOut              504: a dependency did not answer in time
    ├── ResourceExhausted         453: a bound was reached (port range, sessions, tracks)
    │   └── PortRangeExhausted    msm.rtp_proxy.ports: no free RTP/RTCP port pair
    ├── ConfigError               bad settings, flags or files (exit code 2; CNI 7)
    │   ├── RouteError            msm.control_plane.resolver: a bad route definition
    │   └── UsageError            msm.cli: a bad `msm` command line
    ├── CniError                  msm.cni_plugin.errors: one leaf per CNI error code (cni_code),
    │                             including NetnsGone (3) and the installer's InstallError
    └── WebhookError              msm.webhook.errors: review and certificate faults (HTTP 400)
        ├── ReviewError           a bad AdmissionReview; its HTTP status is http_status
        └── CertificateError      the TLS certificate or key cannot be used

test_house.py checks that no exception class of msm lives outside this tree (the
one exception is ``msm.ext.NativeUnavailable``: ``ext`` imports nothing of msm,
and the proxy raises it again as ``EngineUnavailable``).

``Refused(status, reason)`` with any status is allowed where no leaf fits; the
leaves exist so that code can catch what it means (``except SessionNotFound``).
"""

from __future__ import annotations

from typing import ClassVar

# RTSP status -> gRPC status code name, for errors that do not say otherwise.
_GRPC_BY_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    405: "UNIMPLEMENTED", 413: "INVALID_ARGUMENT", 414: "INVALID_ARGUMENT", 453: "RESOURCE_EXHAUSTED",
    454: "NOT_FOUND", 455: "FAILED_PRECONDITION", 459: "FAILED_PRECONDITION", 460: "FAILED_PRECONDITION",
    461: "INVALID_ARGUMENT", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED", 505: "INVALID_ARGUMENT", 551: "INVALID_ARGUMENT",
}
# ...and back, for a gRPC failure that must be answered in RTSP.
_STATUS_BY_GRPC: dict[str, int] = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 400, "FAILED_PRECONDITION": 455, "RESOURCE_EXHAUSTED": 453, "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "CANCELLED": 503,
}


def grpc_code_for_status(status: int) -> str:
    """The gRPC status code name that answers an RTSP ``status``."""
    if status < 400:
        return "OK"
    return _GRPC_BY_STATUS.get(status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL")


def status_for_grpc_code(name: str) -> int:
    """The RTSP status that answers a gRPC failure with code ``name`` (500 when unknown)."""
    return _STATUS_BY_GRPC.get(name, 500)


def http_status_for(status: int) -> int:
    """The HTTP status for an RTSP ``status``: RTSP-only 4xx codes fold into their HTTP kin."""
    if status in (454,):
        return 404
    if status in (453,):
        return 429
    if status in (455, 459, 460):
        return 409
    if 450 <= status < 500 or status == 551:
        return 400
    if status == 505:
        return 400
    return status


class MsmError(Exception):
    """Base class of every error raised by msm's own code.

    ``status`` is the RTSP status that answers it; ``grpc_code``, ``http_status``
    and ``cni_code`` follow from it unless a subclass says otherwise.
    """

    status: int = 500
    cni_code: ClassVar[int] = 999  # CNI spec: 100+ are plugin-specific; 999 "internal"

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    @property
    def grpc_code(self) -> str:
        return grpc_code_for_status(self.status)

    @property
    def http_status(self) -> int:
        return http_status_for(self.status)

    @property
    def reason(self) -> str:
        """The one-line text shown to whoever caused or sees the error."""
        return self.message


class ProtocolError(MsmError):
    """A peer sent bytes that break the protocol (400 unless the fault says otherwise)."""

    status = 400


class RtspError(ProtocolError):
    """A malformed, oversized or unsupported RTSP message."""


class SdpError(ProtocolError):
    """A malformed session description."""


class RtpError(ProtocolError):
    """A malformed RTP packet."""


class RtcpError(ProtocolError):
    """A malformed RTCP packet."""


class Refused(MsmError):
    """A well-formed request that msm will not honour, answered with ``status``.

    ``headers`` are extra RTSP headers for the reply (``Unsupported`` with 551,
    ``Allow`` with 405...).
    """

    status = 400

    def __init__(self, message: str = "", *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, status=status)
        self.headers: dict[str, str] = dict(headers or {})


class Unauthorized(Refused):
    """No credentials, or wrong ones: answered 401 (RTSP, with its challenge in ``headers``) or UNAUTHENTICATED."""

    status = 401


class Forbidden(Refused):
    """The caller is who it says, but its identity may not do this: 403, PERMISSION_DENIED."""

    status = 403


class NotFound(Refused):
    """No such route, stream, session track or flow."""

    status = 404


class SessionNotFound(Refused):
    """An unknown RTSP session, or one this client does not own."""

    status = 454


class MethodNotValid(Refused):
    """The method is not valid in the session's state (RFC 2326 appendix A)."""

    status = 455


class AggregateOnly(Refused):
    """The session only allows aggregate control."""

    status = 460


class UnsupportedTransport(Refused):
    """A transport the mesh cannot serve (multicast, RAW...)."""

    status = 461


class NotImplemented_(Refused):  # noqa: N801 - the builtin NotImplemented is a constant
    """A method msm does not implement."""

    status = 501


class OptionNotSupported(Refused):
    """A ``Require:`` option msm does not support; ``headers`` carries ``Unsupported``."""

    status = 551


class UpstreamError(MsmError):
    """The upstream RTSP server answered with an error status, passed on as it is."""

    status = 502


class Unavailable(MsmError):
    """A dependency is down: the upstream is unreachable, no proxy serves a node..."""

    status = 503


class TimedOut(Unavailable):
    """A dependency did not answer in time."""

    status = 504


class ResourceExhausted(MsmError):
    """A bound was reached: the port range, sessions per connection, tracks per stream..."""

    status = 453


class ConfigError(MsmError):
    """Bad settings: a flag, an environment variable, a file (exit code 2)."""

    status = 400
    cni_code = 7  # CNI: invalid network config


class KubeError(Unavailable):
    """The Kubernetes API failed, or answered with something that is not what the API reference says."""

    cni_code = 11  # CNI: try again later
