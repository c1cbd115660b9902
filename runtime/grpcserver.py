"""Start a ``grpc.aio`` server on HOST:PORT, with one-line errors and a graceful stop.

gRPC reports a failed bind either by returning port 0 or by raising a
``RuntimeError`` that points at an environment variable; both become a
:class:`ListenError` naming the address. ``grpc.so_reuseport`` is off so that a
port another process holds is an error instead of a silently shared socket.

``credentials`` (``grpc.ServerCredentials``, e.g. mutual TLS from ``msm.security.tls``)
make it a TLS port; ``interceptors`` run around every call (``msm.security.authz``).
The runtime only passes these gRPC objects through: it knows nothing of identities.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc

from msm.sdk.errors import Unavailable

from .hostport import HostPort, format_host_port, parse_host_port

log = logging.getLogger(__name__)

Register = Callable[[grpc.aio.Server], None]


class ListenError(Unavailable):
    """A server could not bind ``where``; ``why`` is the short cause."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"cannot listen on {where}: {why}")
        self.where = where
        self.why = why


class GrpcServer:
    """One gRPC server: ``register`` adds the servicers (``add_XServicer_to_server``).

    ``listen`` is HOST:PORT (port 0 picks a free one); after :meth:`start`,
    ``port`` and ``address`` say where it listens.
    """

    def __init__(self, listen: str, register: Register, *, what: str = "gRPC",
                 options: Sequence[tuple[str, int | str]] = (),
                 credentials: grpc.ServerCredentials | None = None,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self.listen: HostPort = parse_host_port(listen, what=f"the {what} listen address")
        self.register = register
        self.what = what
        self.options = [("grpc.so_reuseport", 0), *options]
        self.credentials = credentials     # None: plaintext (the caller chose it explicitly)
        self.interceptors = list(interceptors)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """HOST:PORT as bound (the configured host, the actual port)."""
        return format_host_port(self.listen.host, self.port)

    async def start(self) -> None:
        server = grpc.aio.server(options=self.options, interceptors=self.interceptors or None)
        self.register(server)
        where = str(self.listen)
        try:
            if self.credentials is not None:
                port = server.add_secure_port(where, self.credentials)
            else:
                port = server.add_insecure_port(where)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ListenError(where, "address already in use or not available")
        await server.start()
        self.server, self.port = server, port
        log.info("%s on %s", self.what, self.address)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop taking calls, let running ones finish for ``grace`` seconds, then cancel them."""
        server, self.server = self.server, None
        if server is not None:
            await server.stop(grace)
