"""The ``Status`` carried inside ``Connect`` replies and command results, to and from :class:`MsmError`.

This is the gRPC-stream boundary of the exception tree (``msm.sdk.errors``): a
component that fails a stub request or a command builds the reply's status with
:func:`status_of`, and the receiving side raises :func:`error_of` of it. The
RTSP status travels unchanged, so an upstream's 404 reaches the viewer as 404
without being re-wrapped on the way.
"""

from __future__ import annotations

from msm.protos import msm_pb2 as pb
from msm.sdk.errors import (
    AggregateOnly,
    Forbidden,
    MethodNotValid,
    MsmError,
    NotFound,
    NotImplemented_,
    Refused,
    ResourceExhausted,
    SessionNotFound,
    TimedOut,
    Unauthorized,
    Unavailable,
    UnsupportedTransport,
)

OK = pb.Status(code=200, reason="OK")

# The class a status code is raised as on the receiving side; any other error code
# is a plain Refused with that status.
_CLASS_BY_STATUS: dict[int, type[MsmError]] = {
    401: Unauthorized, 403: Forbidden,
    404: NotFound, 453: ResourceExhausted, 454: SessionNotFound, 455: MethodNotValid, 460: AggregateOnly,
    461: UnsupportedTransport, 501: NotImplemented_, 503: Unavailable, 504: TimedOut,
}


def status_of(error: MsmError) -> pb.Status:
    """The ``Status`` that carries ``error`` to the other side."""
    return pb.Status(code=error.status, reason=error.reason)


def error_of(status: pb.Status) -> MsmError:
    """The error a failed ``Status`` stands for (call only when ``status.code >= 300``)."""
    cls = _CLASS_BY_STATUS.get(status.code, Refused)
    return cls(status.reason, status=status.code)


def check(status: pb.Status) -> None:
    """Raise :func:`error_of` ``status`` unless it is a success."""
    if status.code >= 300:
        raise error_of(status)
