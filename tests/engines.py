"""The proxy's two data-path engines as one test parameter, and polling instead of sleeping.

A test module imports the fixtures it uses (``from tests.engines import engine, table``)
and every test that takes them runs twice: on the pure-Python reference and on
the native engine (``ext``), which must behave the same and count the same.
Where the native engine is not built its parameter skips, saying why.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from msm import ext
from msm.rtp_proxy.flows import FlowTable

ENGINES = ("python", "native")

#: Ports the shared ``table`` fixture binds flows in (test_flows.py binds
#: 42000-42003 on its own; other modules keep out of this range).
TABLE_PORTS = (41000, 41999)

#: How long a test waits for packets on loopback before it fails. Generous:
#: the machine is shared by several test runs, and polling ends as soon as
#: the condition holds.
WAIT = 5.0


def require(engine: str) -> None:
    """Skip (printing why) when ``engine`` cannot run here."""
    if engine == "native" and (reason := ext.unavailable_reason()):
        print(f"skipping the native engine: {reason}")
        pytest.skip(f"native engine: {reason}")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """``"python"`` or ``"native"``: the engine the test runs on."""
    name = str(request.param)
    require(name)
    return name


@pytest.fixture
async def table(engine: str) -> AsyncIterator[FlowTable]:
    """A flow table on the test's engine, closed afterwards."""
    t = FlowTable(host="127.0.0.1", port_range=TABLE_PORTS, engine=engine)
    assert t.engine == engine
    yield t
    t.close()


async def poll(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` (yielding to the event loop) until it holds or ``timeout`` seconds pass; whether it held."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    if not await poll(predicate, timeout):
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on a non-blocking socket."""
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out
