"""The stub's link to the control plane: one bidirectional ``Connect`` stream.

Requests go up with an id and wait for the matching reply; commands come down
and are executed by the upstream manager, whose results go back up. The link
reconnects with back-off; requests made while it is down fail fast with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc
from msm.protos.status import error_of, status_of
from msm.runtime.backoff import Backoff
from msm.runtime.correlator import Correlator
from msm.sdk.errors import MsmError, Unavailable

log = logging.getLogger(__name__)

# Messages waiting to go up. A healthy link drains this at once; a bound keeps a
# dead control plane from growing the stub's memory.
OUTBOX_LIMIT = 1024
# Requests waiting for their reply: each is a viewer's DESCRIBE/SETUP/PLAY/TEARDOWN
# held open. Half the outbox, so requests alone cannot fill it and crowd out
# command results; past it the control plane has stalled and a viewer is refused
# at once (453) rather than queued behind hundreds of others.
REQUEST_LIMIT = OUTBOX_LIMIT // 2
REQUEST_TIMEOUT = 20.0   # longer than the control plane's own upstream timeout (15 s)
CONNECT_WAIT = 2.0       # how long a request waits for a link that is (re)connecting

CommandHandler = Callable[[pb.ControlCommand], Awaitable[pb.CommandResult]]


class ControlClient:
    def __init__(self, address: str, register: pb.StubRegister, on_command: CommandHandler,
                 on_stream_state: Callable[[pb.StreamState], None] | None = None, *,
                 backoff: Backoff | None = None) -> None:
        self.address = address
        self.register = register
        self.on_command = on_command
        self.on_stream_state = on_stream_state
        self.connected = asyncio.Event()
        self.backoff = backoff or Backoff(first=0.2, maximum=5.0)
        self._outbox: asyncio.Queue[pb.StubMessage] = asyncio.Queue(OUTBOX_LIMIT)
        self._requests: Correlator[pb.ControlReply] = Correlator(
            limit=REQUEST_LIMIT, timeout=REQUEST_TIMEOUT, peer="control plane")
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Keep the stream up: connect, serve it until it drops, back off, again."""
        while True:
            try:
                await self._serve()
            except grpc.aio.AioRpcError as exc:
                log.warning("control plane %s unreachable (%s); retrying in %.1fs", self.address,
                            exc.code().name, self.backoff.delay)
            self._disconnected()
            await self.backoff.wait()

    async def _serve(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            api = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
            call = api.Connect(self._messages())
            heard = False
            async for message in call:
                if not heard:
                    # The control plane answered on this stream: the link works, so
                    # the next outage backs off from the start again.
                    heard = True
                    if self.backoff.attempt:
                        log.info("stub %s connected to control plane %s", self.register.stub_id, self.address)
                    self.connected.set()
                    self.backoff.reset()
                self._dispatch(message)

    async def _messages(self) -> AsyncIterator[pb.StubMessage]:
        yield pb.StubMessage(register=self.register)
        # The control plane answers nothing to a register; mark the link up once
        # the stream is open so early requests do not wait for a first message.
        self.connected.set()
        while True:
            yield await self._outbox.get()

    def _disconnected(self) -> None:
        self.connected.clear()
        self._requests.fail_all(Unavailable("control plane connection lost"))
        while not self._outbox.empty():
            self._outbox.get_nowait()

    def _dispatch(self, message: pb.ControlMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "reply":
            self._requests.resolve(message.reply.request_id, message.reply)
        elif kind == "stream_state":
            if self.on_stream_state is not None:
                self.on_stream_state(message.stream_state)
        elif kind == "command":
            task = asyncio.create_task(self._run_command(message.command))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_command(self, command: pb.ControlCommand) -> None:
        result = await self.on_command(command)
        self.send(pb.StubMessage(result=result))

    def send(self, message: pb.StubMessage) -> bool:
        try:
            self._outbox.put_nowait(message)
            return True
        except asyncio.QueueFull:
            log.error("control plane link is backed up; dropping a message")
            return False

    async def call(self, **kind: object) -> pb.ControlReply:
        """Send a typed request (describe=..., setup=..., ...) and return its successful reply.

        A failed reply raises the :class:`MsmError` its status stands for
        (``msm.protos.status.error_of``); a link that is down raises
        :class:`Unavailable`, a control plane that does not answer :class:`TimedOut`.
        """
        if not self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), CONNECT_WAIT)
        if not self.connected.is_set():
            raise Unavailable("control plane unavailable")
        fields = cast(dict[str, Any], kind)

        def send(request_id: int) -> None:
            if not self.send(pb.StubMessage(request=pb.StubRequest(request_id=request_id, **fields))):
                raise Unavailable("control plane link is backed up")

        reply = await self._requests.call(send)
        if not 200 <= reply.status.code < 300:
            if reply.status.code == 0:
                raise MsmError("control plane reply carries no status")
            raise error_of(reply.status)
        return reply

    async def request(self, **kind: object) -> pb.ControlReply:
        """As :meth:`call`, but a failure comes back as a reply whose status carries it."""
        try:
            return await self.call(**kind)
        except MsmError as exc:
            return pb.ControlReply(status=status_of(exc))
