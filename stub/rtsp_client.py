"""A small asyncio RTSP client connection over the sans-IO ``msm.sdk.rtsp`` reader.

One request at a time (RTSP servers answer in order anyway); interleaved frames
are handed to a callback; requests from the server (some send GET_PARAMETER or
ANNOUNCE) get a polite answer so the connection stays healthy.

Failures are the error tree's (``msm.sdk.errors``), so their RTSP status reaches
viewers unchanged: an upstream that cannot be reached or drops the connection is
:class:`Unavailable` (503), one that does not answer in time :class:`TimedOut`
(504), a bad upstream URL :class:`ConfigError` (400). An error status from the
server is raised by the caller as :class:`UpstreamError` with that status.

Credentials come from the URL's userinfo (percent-decoded) and never go on a
request line: every request URI loses its userinfo. A ``401`` with a challenge is
answered once with an ``Authorization`` (Digest preferred, Basic only when it is
all the server offers; :mod:`msm.sdk.rtsp_auth`); the challenge is kept and later
requests carry their ``Authorization`` at once (Digest ``nc`` counting up). A
second ``401``, or one when the URL has no credentials, is
:class:`CredentialsRejected` (503): a viewer cannot fix the camera's password.
Messages and logs name the upstream by host and port, never with its userinfo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urlsplit

from msm.runtime.redact import redact_url, strip_userinfo
from msm.sdk.errors import ConfigError, RtspError, TimedOut, Unauthorized, Unavailable
from msm.sdk.rtsp import Headers, InterleavedFrame, Request, Response, RtspReader
from msm.sdk.rtsp_auth import Challenge, authorization, parse_challenges, strongest

log = logging.getLogger(__name__)

USER_AGENT = "msm-stub/0.1"
# A server streaming interleaved media may send faster than we forward; past
# this many bytes queued towards it (our requests) something is wrong.
MAX_WRITE_BACKLOG = 1 << 20


class CredentialsRejected(Unavailable):
    """The upstream wants credentials the route does not have, or refused the ones it has (503)."""


def credentials_of(url: str) -> tuple[str, str] | None:
    """The percent-decoded (user, password) of ``url``'s userinfo, or None without one."""
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return None
    userinfo = netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password)


class RtspClientConnection:
    def __init__(self, url: str, *, on_frame: Callable[[int, bytes], None] | None = None,
                 timeout: float = 5.0) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            port, parts = None, urlsplit("")
        if not parts.hostname:
            raise ConfigError(f"bad upstream URL {redact_url(url)!r}")
        self.host = parts.hostname
        self.port = port or 554
        self.credentials = credentials_of(url)
        self.url = strip_userinfo(url)      # what requests name: never the credentials
        self._challenge: Challenge | None = None
        self._nc = 0
        self.on_frame = on_frame
        self.timeout = timeout
        self.reader_task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()
        self.local_host = ""
        self.peer_host = ""       # the upstream's resolved address
        self._cseq = 0
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[Response] | None = None

    async def connect(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot connect to {self.host}:{self.port}: {exc or 'timeout'}") from exc
        self.writer = writer
        self.local_host = writer.get_extra_info("sockname")[0]
        self.peer_host = writer.get_extra_info("peername")[0]
        self.reader_task = asyncio.create_task(self._read(reader), name=f"rtsp-client-{self.host}")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = RtspReader(max_body=1 << 20)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed(data)
                while (event := parser.next_event()) is not None:
                    if isinstance(event, InterleavedFrame):
                        if self.on_frame is not None:
                            self.on_frame(event.channel, event.payload)
                    elif isinstance(event, Response):
                        if self._pending is not None and not self._pending.done():
                            self._pending.set_result(event)
                    else:
                        self._answer_server(event)
        except RtspError as exc:
            log.warning("upstream %s:%d sent bad RTSP: %s", self.host, self.port, exc)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("upstream %s:%d connection lost: %s", self.host, self.port, exc)
        finally:
            self.closed.set()
            if self._pending is not None and not self._pending.done():
                self._pending.set_exception(Unavailable("upstream closed the connection"))
            if self.writer is not None:
                self.writer.close()

    def _answer_server(self, request: Request) -> None:
        status = 200 if request.method in ("OPTIONS", "GET_PARAMETER") else 501
        headers = [("CSeq", str(request.cseq or 0))]
        self._write(bytes(Response(status=status, headers=Headers(headers))))

    def _write(self, data: bytes) -> None:
        if self.writer is None or self.writer.is_closing():
            raise Unavailable("upstream connection is closed")
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
            raise Unavailable("upstream is not reading")
        self.writer.write(data)

    def send_frame(self, channel: int, payload: bytes) -> None:
        """Send an interleaved frame (e.g. RTCP) to the server; dropped if it cannot keep up."""
        with contextlib.suppress(Unavailable):
            self._write(bytes(InterleavedFrame(channel=channel, payload=payload)))

    async def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                      *, timeout: float | None = None) -> Response:
        """Send one request and return its response, authenticating on a ``401`` (see the module)."""
        uri = strip_userinfo(url)
        async with self._lock:
            reply = await self._exchange(method, uri, headers, timeout)
            if reply.status != 401:
                return reply
            self._challenge = self._challenge_of(reply)
            self._nc = 0
            reply = await self._exchange(method, uri, headers, timeout)
            if reply.status == 401:
                self._challenge = None
                raise CredentialsRejected(f"upstream {self.host}:{self.port} rejected the mesh's credentials")
            return reply

    def _challenge_of(self, reply: Response) -> Challenge:
        where = f"upstream {self.host}:{self.port}"
        if self.credentials is None:
            raise CredentialsRejected(f"{where} requires credentials and the route has none")
        try:
            challenges = parse_challenges(reply.headers.get_all("WWW-Authenticate"))
        except RtspError as exc:
            raise CredentialsRejected(f"{where} sent a malformed challenge: {exc}") from None
        chosen = strongest(challenges)
        if chosen is None:
            offered = ", ".join(c.scheme for c in challenges) or "no challenge"
            raise CredentialsRejected(f"{where} asks for authentication msm does not support ({offered})")
        return chosen

    def _authorization(self, method: str, uri: str) -> list[tuple[str, str]]:
        if self._challenge is None or self.credentials is None:
            return []
        self._nc += 1
        user, password = self.credentials
        try:
            value = authorization(self._challenge, user, password, method, uri, nc=self._nc)
        except (Unauthorized, ConfigError) as exc:
            raise CredentialsRejected(f"cannot answer the challenge of upstream {self.host}:{self.port}: "
                                      f"{exc}") from None
        return [("Authorization", value)]

    async def _exchange(self, method: str, uri: str, headers: Mapping[str, str] | None,
                        timeout: float | None) -> Response:
        if self.closed.is_set():
            raise Unavailable("upstream connection is closed")
        self._cseq += 1
        all_headers = [("CSeq", str(self._cseq)), ("User-Agent", USER_AGENT)]
        all_headers += self._authorization(method, uri)
        all_headers += list((headers or {}).items())
        self._pending = asyncio.get_running_loop().create_future()
        self._write(bytes(Request(method=method, uri=uri, headers=Headers(all_headers))))
        try:
            return await asyncio.wait_for(self._pending, timeout or self.timeout)
        except TimeoutError:
            raise TimedOut(f"{method} {redact_url(uri)}: no answer in {timeout or self.timeout:.0f}s") from None
        finally:
            self._pending = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader_task
        self.closed.set()
