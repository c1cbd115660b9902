"""Exponential back-off with jitter and a cap, for every reconnect loop.

::

    backoff = Backoff(first=0.2, maximum=5.0)
    while True:
        try:
            await connect_and_serve(on_up=backoff.reset)
        except SomeFailure:
            log.warning("down; retrying in %.1fs", backoff.delay)
        await backoff.wait()

The clock is not read: ``sleep`` and ``rand`` are injected, so tests run the
schedule without waiting.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable


class Backoff:
    """Delays ``first``, ``first*factor``, ... capped at ``maximum``, each spread by ``±jitter``.

    ``jitter`` is a fraction: 0.2 turns a 1 s delay into one between 0.8 and 1.2 s,
    so many clients that lost the same server do not come back in step.
    ``attempt`` counts the waits since the last :meth:`reset`.
    """

    def __init__(self, first: float = 0.2, maximum: float = 5.0, factor: float = 2.0, jitter: float = 0.0, *,
                 rand: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if first <= 0 or maximum < first or factor < 1 or not 0 <= jitter < 1:
            raise ValueError(f"bad back-off: first={first} maximum={maximum} factor={factor} jitter={jitter}")
        self.first = first
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rand = rand
        self._sleep = sleep
        self.attempt = 0
        self.delay = first   # the next delay before jitter

    def reset(self) -> None:
        """The connection is healthy again: the next failure starts from ``first``."""
        self.attempt = 0
        self.delay = self.first

    def next_delay(self) -> float:
        """The next delay (jitter applied), advancing the schedule without sleeping."""
        spread = 1.0 - self.jitter + 2.0 * self.jitter * self._rand() if self.jitter else 1.0
        delay = self.delay * spread
        self.attempt += 1
        self.delay = min(self.delay * self.factor, self.maximum)
        return delay

    async def wait(self) -> float:
        """Sleep for the next delay; returns how long it slept."""
        delay = self.next_delay()
        await self._sleep(delay)
        return delay
