"""msm.runtime: back-off, correlation, HOST:PORT, the gRPC server and the gRPC error boundary."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from msm.runtime.backoff import Backoff
from msm.runtime.correlator import Correlator
from msm.runtime.grpcserver import GrpcServer, ListenError
from msm.runtime.grpcutil import abort, error_from_rpc, status_code_of
from msm.runtime.hostport import HostPort, format_host_port, parse_host_port
from msm.runtime.process import log_level
from msm.sdk.errors import (
    ConfigError,
    MsmError,
    NotFound,
    Refused,
    ResourceExhausted,
    TimedOut,
    Unavailable,
    UpstreamError,
)

pytestmark = pytest.mark.timeout(30)


# -- backoff -------------------------------------------------------------------------------------
async def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    backoff = Backoff(first=0.25, maximum=2.0, sleep=sleep)
    for _ in range(6):
        await backoff.wait()
    assert slept == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert backoff.attempt == 6
    backoff.reset()
    assert backoff.attempt == 0 and backoff.delay == 0.25
    await backoff.wait()
    assert slept[-1] == 0.25


def test_backoff_jitter_spreads_around_the_delay() -> None:
    low = Backoff(first=1.0, maximum=8.0, jitter=0.2, rand=lambda: 0.0)
    high = Backoff(first=1.0, maximum=8.0, jitter=0.2, rand=lambda: 1.0)
    assert low.next_delay() == pytest.approx(0.8) and high.next_delay() == pytest.approx(1.2)
    assert low.next_delay() == pytest.approx(1.6) and high.next_delay() == pytest.approx(2.4)


@pytest.mark.parametrize("kwargs", [{"first": 0}, {"first": 2, "maximum": 1}, {"factor": 0.5}, {"jitter": 1.0}])
def test_backoff_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


# -- correlator ----------------------------------------------------------------------------------
async def test_correlator_matches_replies_by_id() -> None:
    corr: Correlator[str] = Correlator(limit=4, timeout=5.0, peer="control plane")
    sent: list[int] = []
    one, two = corr.open(), corr.open()
    first = asyncio.create_task(corr.wait(one))
    second = asyncio.create_task(corr.wait(two))
    assert one.id != two.id
    assert corr.resolve(two.id, "two") and corr.resolve(one.id, "one")
    assert await first == "one" and await second == "two"
    assert len(corr) == 0
    assert not corr.resolve(one.id, "late")   # a late reply finds nobody and is dropped

    def send(request_id: int) -> None:   # a reply may arrive before call() awaits it
        sent.append(request_id)
        corr.resolve(request_id, "fast")

    assert await corr.call(send) == "fast" and sent


async def test_correlator_times_out_with_timedout() -> None:
    corr: Correlator[str] = Correlator(limit=4, timeout=5.0, peer="stub")
    with pytest.raises(TimedOut, match="stub did not answer"):
        await corr.call(lambda request_id: None, timeout=0)
    assert len(corr) == 0


async def test_correlator_is_bounded() -> None:
    corr: Correlator[str] = Correlator(limit=2, timeout=5.0)
    corr.open()
    corr.open()
    with pytest.raises(ResourceExhausted):
        corr.open()
    assert len(corr) == 2


async def test_correlator_fail_all_wakes_every_waiter() -> None:
    corr: Correlator[str] = Correlator(limit=8, timeout=5.0)
    waiters = [asyncio.create_task(corr.wait(corr.open())) for _ in range(3)]
    assert corr.fail_all(Unavailable("connection lost")) == 3
    for waiter in waiters:
        with pytest.raises(Unavailable, match="connection lost"):
            await waiter
    assert len(corr) == 0


async def test_correlator_releases_the_id_when_send_fails() -> None:
    corr: Correlator[str] = Correlator(limit=1, timeout=5.0)

    def send(request_id: int) -> None:
        raise Unavailable("link is backed up")

    with pytest.raises(Unavailable):
        await corr.call(send)
    assert len(corr) == 0
    pending = corr.open()            # the slot is free again
    assert corr.fail(pending.id, UpstreamError("x", status=404))
    with pytest.raises(UpstreamError):
        await corr.wait(pending)
    assert len(corr) == 0


# -- hostport ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "kwargs", "expected"), [
    ("127.0.0.1:8554", {}, HostPort("127.0.0.1", 8554)),
    ("[::1]:9000", {}, HostPort("::1", 9000)),
    ("[fe80::1%eth0]:9000", {}, HostPort("fe80::1%eth0", 9000)),
    ("camera-svc.default.svc.cluster.local:554", {}, HostPort("camera-svc.default.svc.cluster.local", 554)),
    ("0.0.0.0:0", {}, HostPort("0.0.0.0", 0)),
    (":9090", {"default_host": "0.0.0.0"}, HostPort("0.0.0.0", 9090)),
    ("9090", {"default_host": "0.0.0.0", "allow_bare_port": True}, HostPort("0.0.0.0", 9090)),
    (" localhost:80 ", {}, HostPort("localhost", 80)),
])
def test_host_port_forms(text: str, kwargs: dict[str, object], expected: HostPort) -> None:
    assert parse_host_port(text, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "kwargs", "why"), [
    ("nonsense", {}, "HOST:PORT"),
    ("9090", {}, "HOST:PORT"),
    (":9090", {}, "host is missing"),
    ("host:99999", {}, "0-65535"),
    ("host:-1", {}, "0-65535"),
    ("host:８０", {}, "0-65535"),
    ("::1:80", {}, "brackets"),
    ("[::1]", {}, "needs :PORT"),
    ("[nothost]:80", {}, "not an IPv6 address"),
    ("bad host:80", {}, "not a host name"),
    ("", {"allow_bare_port": True}, "HOST:PORT or PORT"),
])
def test_host_port_errors_are_one_line_config_errors(text: str, kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_host_port(text, what="--listen", **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("--listen must be") and why in message and "\n" not in message


def test_host_port_round_trips() -> None:
    for host, port in [("::1", 80), ("10.0.0.1", 0), ("example", 554)]:
        assert parse_host_port(format_host_port(host, port)) == HostPort(host, port)
    assert str(HostPort("::1", 5)) == "[::1]:5"


def test_log_level() -> None:
    assert log_level("Debug") == 10
    with pytest.raises(ConfigError, match="unknown log level 'loud'"):
        log_level("loud")


# -- gRPC server and error boundary --------------------------------------------------------------
def _register_failing(error: MsmError) -> GrpcServer:
    async def handler(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await abort(context, error)

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "test.Fail", {"Call": grpc.unary_unary_rpc_method_handler(handler)})])

    return GrpcServer("127.0.0.1:0", register, what="test server")


async def _call(address: str) -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.unary_unary("/test.Fail/Call")
        reply = await method(b"", timeout=5.0)
        assert isinstance(reply, bytes)
        return reply


@pytest.mark.parametrize(("error", "cls", "status"), [
    (NotFound("no such stream"), NotFound, 404),
    (Unavailable("no proxy on node a"), Unavailable, 503),
    (TimedOut("slow"), TimedOut, 504),
    (Refused("not in this state", status=455), Refused, 455),
    (MsmError("broken"), MsmError, 500),
])
async def test_abort_and_error_from_rpc_round_trip(error: MsmError, cls: type[MsmError], status: int) -> None:
    server = _register_failing(error)
    await server.start()
    try:
        assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _call(server.address)
        assert info.value.code() == status_code_of(error)
        back = error_from_rpc(info.value, "test server")
        assert type(back) is cls and back.status == status
        assert error.reason in back.reason and back.reason.startswith("test server: ")
    finally:
        await server.stop(0)
    await server.stop(0)   # stopping twice is harmless


async def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(f"127.0.0.1:{port}")
    assert isinstance(error_from_rpc(info.value), Unavailable)


async def test_busy_port_is_a_one_line_listen_error() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        server = GrpcServer(f"127.0.0.1:{port}", lambda s: None)
        with pytest.raises(ListenError) as info:
            await server.start()
    finally:
        busy.close()
    assert isinstance(info.value, Unavailable) and info.value.status == 503
    assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: address already in use or not available"


async def test_bad_listen_addresses() -> None:
    with pytest.raises(ConfigError, match="the control plane listen address must be HOST:PORT"):
        GrpcServer("nonsense", lambda s: None, what="control plane")
    server = GrpcServer("name.invalid:0", lambda s: None)
    with pytest.raises(ListenError, match="cannot listen on name.invalid:0"):
        await server.start()
