"""The gRPC boundary of the exception tree (``msm.sdk.errors``).

A servicer that fails with an :class:`MsmError` answers with :func:`abort`; a
client whose call failed turns the ``grpc.RpcError`` into an :class:`MsmError`
with :func:`error_from_rpc`. The mapping itself lives in ``msm.sdk.errors``
(``grpc_code`` and ``status_for_grpc_code``), so both directions agree.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from msm.sdk.errors import (
    MsmError,
    NotFound,
    NotImplemented_,
    Refused,
    ResourceExhausted,
    TimedOut,
    Unavailable,
    status_for_grpc_code,
)

# The class a failed call is raised as, by the RTSP status its gRPC code maps to;
# any other 4xx is a plain Refused, anything else a bare MsmError with that status.
_CLASS_BY_STATUS: dict[int, type[MsmError]] = {
    404: NotFound, 453: ResourceExhausted, 501: NotImplemented_, 503: Unavailable, 504: TimedOut,
}


def status_code_of(error: MsmError) -> grpc.StatusCode:
    """The :class:`grpc.StatusCode` for ``error`` (INTERNAL for a name gRPC does not know)."""
    try:
        return grpc.StatusCode[error.grpc_code]
    except KeyError:
        return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: MsmError) -> NoReturn:
    """End the call with ``error``'s status code and reason (never returns)."""
    await context.abort(status_code_of(error), error.reason)
    raise AssertionError("grpc.aio.ServicerContext.abort returned")  # pragma: no cover - abort raises


def error_from_rpc(exc: grpc.RpcError, peer: str = "") -> MsmError:
    """The :class:`MsmError` a failed call stands for; ``peer`` names who was called."""
    # grpc.aio.AioRpcError and the sync channel's errors (grpc.Call) both have
    # code() and details(); a bare grpc.RpcError has neither.
    code = exc.code() if isinstance(exc, (grpc.aio.AioRpcError, grpc.Call)) else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = exc.details() if isinstance(exc, (grpc.aio.AioRpcError, grpc.Call)) else None
    status = status_for_grpc_code(name)
    prefix = f"{peer}: " if peer else ""
    message = f"{prefix}{details or name.lower().replace('_', ' ')} ({name})"
    cls = _CLASS_BY_STATUS.get(status, Refused if 400 <= status < 500 else MsmError)
    return cls(message, status=status)
