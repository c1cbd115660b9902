"""The stub's link to the control plane: one bidirectional ``Connect`` stream.

Requests go up with an id and wait for the matching reply; commands come down
and are executed by the upstream manager, whose results go back up. The link
reconnects with back-off; requests made while it is down fail fast with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from msm.protos import msm_pb2 as pb
from msm.protos import msm_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Messages waiting to go up. A healthy link drains this at once; a bound keeps a
# dead control plane from growing the stub's memory.
OUTBOX_LIMIT = 1024
REQUEST_TIMEOUT = 20.0   # longer than the control plane's own upstream timeout (15 s)

CommandHandler = Callable[[pb.ControlCommand], Awaitable[pb.CommandResult]]


class ControlClient:
    def __init__(self, address: str, register: pb.StubRegister, on_command: CommandHandler,
                 on_stream_state: Callable[[pb.StreamState], None] | None = None) -> None:
        self.address = address
        self.register = register
        self.on_command = on_command
        self.on_stream_state = on_stream_state
        self.connected = asyncio.Event()
        self._outbox: asyncio.Queue[pb.StubMessage] = asyncio.Queue(OUTBOX_LIMIT)
        self._pending: dict[int, asyncio.Future[pb.ControlReply]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        delay = 0.2
        while True:
            try:
                async with grpc.aio.insecure_channel(self.address) as channel:
                    call = pb_grpc.ControlPlaneStub(channel).Connect(self._messages())
                    async for message in call:
                        if not self.connected.is_set():
                            log.info("stub %s connected to control plane %s",
                                     self.register.stub_id, self.address)
                            self.connected.set()
                            delay = 0.2
                        self._dispatch(message)
            except grpc.aio.AioRpcError as exc:
                log.warning("control plane %s unreachable (%s); retrying in %.1fs", self.address,
                            exc.code().name, delay)
            self._disconnected()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _messages(self) -> AsyncIterator[pb.StubMessage]:
        yield pb.StubMessage(register=self.register)
        # The control plane answers nothing to a register; mark the link up once
        # the stream is open so early requests do not wait for a first message.
        self.connected.set()
        while True:
            yield await self._outbox.get()

    def _disconnected(self) -> None:
        self.connected.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_result(_status(503, "control plane connection lost"))
        self._pending.clear()
        while not self._outbox.empty():
            self._outbox.get_nowait()

    def _dispatch(self, message: pb.ControlMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "reply":
            future = self._pending.pop(message.reply.request_id, None)
            if future is not None and not future.done():
                future.set_result(message.reply)
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

    async def request(self, **kind: object) -> pb.ControlReply:
        """Send a typed request (describe=..., setup=..., ...) and wait for its reply."""
        if not self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), 2.0)
        if not self.connected.is_set():
            return _status(503, "control plane unavailable")
        request_id = next(self._ids)
        future: asyncio.Future[pb.ControlReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if not self.send(pb.StubMessage(request=pb.StubRequest(request_id=request_id, **kind))):
            self._pending.pop(request_id, None)
            return _status(503, "control plane link is backed up")
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except TimeoutError:
            return _status(504, "control plane did not answer")
        finally:
            self._pending.pop(request_id, None)


def _status(code: int, reason: str) -> pb.ControlReply:
    return pb.ControlReply(status=pb.Status(code=code, reason=reason))
