"""The stub's link to the control plane: one bidirectional ``Connect`` stream.

Requests go up with an id and wait for the matching reply; commands come down
and are executed by the upstream manager, whose results go back up. The link
reconnects with back-off; requests made while it is down fail fast with 503.

"Viewer gone" is never dropped: a vanished viewer whose legs the control plane
never hears about keeps receiving media. Those reports wait in an ordered set of
session ids (one entry per session, so bounded by the sessions that exist) and go
up interleaved with the outbox, however many arrive at once.

With ``tls`` the stream is mutual TLS: the stub presents its pod's certificate and
checks that the server is the control plane (``msm.security.tls``).
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
from msm.security.identity import Role
from msm.security.tls import TlsFiles, secure_channel

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
                 backoff: Backoff | None = None, tls: TlsFiles | None = None,
                 on_sessions_alive: Callable[[pb.SessionsAlive], None] | None = None) -> None:
        self.address = address
        self.tls = tls   # None: plaintext, which the caller chose explicitly (--insecure)
        self.register = register
        self.on_command = on_command
        self.on_stream_state = on_stream_state
        self.on_sessions_alive = on_sessions_alive
        self.connected = asyncio.Event()
        self.backoff = backoff or Backoff(first=0.2, maximum=5.0)
        self._outbox: asyncio.Queue[pb.StubMessage] = asyncio.Queue(OUTBOX_LIMIT)
        # Session id -> reason, in the order they went: never dropped (see the module's doc).
        self._gone: dict[str, str] = {}
        self._ready = asyncio.Event()   # set when the outbox or the gone set has something
        self.dropped = 0                 # messages other than "viewer gone" refused by a full outbox
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
            except MsmError as exc:   # e.g. TLS files unreadable mid-rotation: try again later
                log.warning("control plane %s: %s; retrying in %.1fs", self.address, exc, self.backoff.delay)
            self._disconnected()
            await self.backoff.wait()

    async def _serve(self) -> None:
        # A new channel per connection: rotated certificate files are presented on it.
        async with secure_channel(self.address, self.tls, role=Role.CONTROL_PLANE,
                                  insecure_ok=self.tls is None) as channel:
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
            if self._outbox.empty() and not self._gone:
                self._ready.clear()
                await self._ready.wait()
            if not self._outbox.empty():
                yield self._outbox.get_nowait()
            if self._gone:   # one report per turn: requests are not held behind a burst of them
                session_id = next(iter(self._gone))
                reason = self._gone.pop(session_id)
                yield pb.StubMessage(viewer_gone=pb.ViewerGone(session_id=session_id, reason=reason))

    def _disconnected(self) -> None:
        self.connected.clear()
        self._requests.fail_all(Unavailable("control plane connection lost"))
        while not self._outbox.empty():
            self._outbox.get_nowait()
        # The control plane ends all of a disconnected stub's viewers itself: nothing to report.
        self._gone.clear()

    def _dispatch(self, message: pb.ControlMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "reply":
            self._requests.resolve(message.reply.request_id, message.reply)
        elif kind == "stream_state":
            if self.on_stream_state is not None:
                self.on_stream_state(message.stream_state)
        elif kind == "sessions_alive":
            if self.on_sessions_alive is not None:
                self.on_sessions_alive(message.sessions_alive)
        elif kind == "command":
            task = asyncio.create_task(self._run_command(message.command))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_command(self, command: pb.ControlCommand) -> None:
        result = await self.on_command(command)
        self.send(pb.StubMessage(result=result))

    def send(self, message: pb.StubMessage) -> bool:
        """Queue ``message``; False if the outbox is full (counted in ``dropped``).

        A ``viewer_gone`` always succeeds: it joins the set of sessions to report.
        """
        if message.WhichOneof("kind") == "viewer_gone":
            self.viewer_gone(message.viewer_gone.session_id, message.viewer_gone.reason)
            return True
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("control plane link is backed up; dropping a message (%d so far)", self.dropped)
            return False
        self._ready.set()
        return True

    def viewer_gone(self, session_id: str, reason: str) -> None:
        """Report that ``session_id``'s viewer went away without TEARDOWN (never dropped)."""
        if not self.connected.is_set():
            return   # no link: the control plane drops this stub's viewers when it loses it
        self._gone.setdefault(session_id, reason)
        self._ready.set()

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
