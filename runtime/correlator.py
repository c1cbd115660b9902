"""Request/reply correlation over one stream: ids out, replies matched back by id.

The stub numbers its requests to the control plane and the control plane numbers
its commands to a stub; both sides wait for the reply carrying the same id, give
up after a timeout, and fail every waiter at once when the stream drops.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from msm.sdk.errors import MsmError, ResourceExhausted, TimedOut

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pending(Generic[T]):
    """One request waiting for its reply: the id to send, the future it lands in."""

    id: int
    future: asyncio.Future[T]


class Correlator(Generic[T]):
    """Outstanding requests by id, at most ``limit`` at a time.

    ``peer`` names the other side in error messages ("control plane", "stub x").
    The cap is the caller's: it bounds memory when the peer stops answering, and
    a caller past it gets :class:`ResourceExhausted` at once instead of queueing.
    """

    def __init__(self, *, limit: int, timeout: float, peer: str = "peer") -> None:
        if limit < 1 or timeout <= 0:
            raise ValueError(f"bad correlator: limit={limit} timeout={timeout}")
        self.limit = limit
        self.timeout = timeout
        self.peer = peer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def open(self) -> Pending[T]:
        """Reserve an id and a slot for its reply (raises ResourceExhausted past the cap).

        Whoever opens must :meth:`wait` (or :meth:`cancel`) it, or the slot stays taken.
        """
        if len(self._pending) >= self.limit:
            raise ResourceExhausted(f"{len(self._pending)} requests to the {self.peer} are already waiting")
        pending = Pending(next(self._ids), asyncio.get_running_loop().create_future())
        self._pending[pending.id] = pending.future
        return pending

    async def wait(self, pending: Pending[T], timeout: float | None = None) -> T:
        """The reply to ``pending``; raises TimedOut, or what :meth:`fail` gave it."""
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(pending.future, limit)
        except TimeoutError:
            raise TimedOut(f"the {self.peer} did not answer in {limit:g} s") from None
        finally:
            if self._pending.get(pending.id) is pending.future:
                del self._pending[pending.id]

    async def call(self, send: Callable[[int], None], timeout: float | None = None) -> T:
        """Open an id, ``send(id)`` the request and wait for its reply.

        If ``send`` raises, the id is released and the error propagates.
        """
        pending = self.open()
        try:
            send(pending.id)
        except BaseException:
            self.cancel(pending.id)
            raise
        return await self.wait(pending, timeout)

    def resolve(self, request_id: int, reply: T) -> bool:
        """Hand ``reply`` to its waiter; False when nobody waits (late or unknown id)."""
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return False
        future.set_result(reply)
        return True

    def fail(self, request_id: int, error: MsmError) -> bool:
        """Fail one waiter with ``error``; False when nobody waits."""
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return False
        future.set_exception(error)
        return True

    def cancel(self, request_id: int) -> None:
        """Forget ``request_id`` without waking anyone (its request never left)."""
        future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()

    def fail_all(self, error: MsmError) -> int:
        """The stream dropped: fail every waiter with ``error``; returns how many.

        Every waiter raises the same ``error`` object, as ``asyncio.gather`` would.
        """
        pending, self._pending = self._pending, {}
        failed = 0
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                failed += 1
        return failed
