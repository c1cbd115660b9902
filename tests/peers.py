"""Helpers for tests that drive real RTSP peers: a GStreamer RTSP server and ffmpeg.

Nothing here imports the project; the GStreamer server is ``msm/gst_source.py`` run
by the system interpreter (which has the ``gi`` bindings), located by file path.

* :class:`GstRtspServer` - the demo RTSP source in a subprocess, with its event
  lines (clients, session counts) parsed live.
* :func:`ffmpeg_frames` - a one-shot viewer: decode N video frames, report how many.
* :class:`FfmpegViewer` - a long-running viewer whose decoded frame count is
  tracked live; can be crashed (:meth:`FfmpegViewer.kill`) or stopped.
* :func:`ffprobe_streams` - the streams ffprobe sees behind an RTSP URL.
* :func:`free_port`, :func:`free_udp_pair` - free local ports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
GST_SOURCE = REPO_ROOT / "msm" / "gst_source.py"
SYSTEM_PYTHON = "/usr/bin/python3"

READY_TIMEOUT = 15.0
STOP_GRACE = 5.0
RESTART_BIND_RETRY = 5.0
STDERR_TAIL_LINES = 30


# -- availability -----------------------------------------------------------------


def gst_available() -> str | None:
    """``None`` if the GStreamer RTSP server can run here, else the reason it cannot."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); "
        "gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer"
    )
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe],
            capture_output=True, text=True, timeout=20, env=_system_python_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} cannot import gi: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{SYSTEM_PYTHON} cannot load GStreamer's RTSP server bindings "
                f"(apt install python3-gi gir1.2-gst-rtsp-server-1.0): {last}")
    return None


def ffmpeg_available() -> str | None:
    """``None`` if ffmpeg and ffprobe are on PATH, else the reason."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH (apt install ffmpeg)"
    return None


def _system_python_env() -> dict[str, str]:
    # Keep the venv's settings away from Debian's interpreter.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- ports ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_pair() -> int:
    """An even port ``p`` such that UDP ports ``p`` and ``p + 1`` are both free.

    Checked by binding the wildcard address, which collides with any existing
    binding of those ports on any local address.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("0.0.0.0", 0))
            base = int(probe.getsockname()[1]) & ~1
        if base < 1024 or base + 1 > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for port in (base, base + 1):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError("no free even/odd UDP port pair found")


# -- process plumbing -------------------------------------------------------------


async def _terminate(proc: asyncio.subprocess.Process, grace: float = STOP_GRACE) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


async def _drain_lines(stream: asyncio.StreamReader | None,
                       on_line: Callable[[str], None]) -> None:
    if stream is None:
        return
    while True:
        try:
            raw = await stream.readline()
        except (ValueError, asyncio.LimitOverrunError):
            # Over-long line: skip what is buffered and carry on.
            raw = await stream.read(64 * 1024)
            if not raw:
                return
            continue
        if not raw:
            return
        on_line(raw.decode("utf-8", "replace").rstrip("\r\n"))


async def _finish_task(task: asyncio.Task[Any] | None, grace: float = 2.0) -> None:
    if task is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    except Exception:  # noqa: BLE001 - reader failures must not mask test results
        pass


# -- GStreamer RTSP server ---------------------------------------------------------


class _Child:
    """What the peers run as subprocesses share: liveness, pid and the stderr tail."""

    _proc: asyncio.subprocess.Process | None
    _stderr: collections.deque[str]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)


class GstRtspServer(_Child):
    """``msm/gst_source.py`` in a subprocess, with its stdout events tracked.

    Use either ``srv = await GstRtspServer.start(...)`` (then ``await srv.stop()``)
    or ``async with GstRtspServer(...) as srv:``. ``clients``, ``max_sessions`` and
    ``events`` accumulate over restarts; ``sessions`` is the current server's count.
    ``prefix`` goes before the command, e.g. ``["ip", "netns", "exec", "pod-ns"]`` to run
    the server in a network namespace (``url`` still says 127.0.0.1: reach it from there).
    """

    def __init__(self, port: int = 0, path: str = "/test", audio: bool = True, *,
                 shared: bool = True, bind: str = "127.0.0.1",
                 extra_args: Sequence[str] = (), prefix: Sequence[str] = ()) -> None:
        self.requested_port = port
        self.path = path if path.startswith("/") else "/" + path
        self.audio = audio
        self.shared = shared
        self.bind = bind
        self.extra_args = tuple(extra_args)
        self.prefix = tuple(prefix)

        self.port: int = 0
        self.clients: list[str] = []
        self.closed_clients: list[str] = []
        self.sessions: int = 0
        self.max_sessions: int = 0
        self.media_events: list[str] = []
        self.events: list[str] = []
        self.starts: int = 0

        self._proc: asyncio.subprocess.Process | None = None
        self._stdout_task: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()

    # construction / context management

    @classmethod
    async def start(cls, port: int = 0, path: str = "/test", audio: bool = True,
                    **kwargs: Any) -> GstRtspServer:
        server = cls(port=port, path=path, audio=audio, **kwargs)
        await server._launch(port)
        return server

    async def __aenter__(self) -> GstRtspServer:
        if not self.running:
            await self._launch(self.port or self.requested_port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # public state

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def reset_counters(self) -> None:
        """Forget clients, session maximum and events seen so far."""
        self.clients.clear()
        self.closed_clients.clear()
        self.media_events.clear()
        self.events.clear()
        self.max_sessions = self.sessions

    async def wait_for(self, predicate: Callable[[GstRtspServer], bool],
                       timeout: float = 10.0, what: str = "condition") -> None:  # noqa: ASYNC109
        """Wait until ``predicate(self)`` holds, re-checked on every event line."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"GStreamer server: {what} not reached in {timeout:.1f}s "
                    f"(sessions={self.sessions}, max={self.max_sessions}, "
                    f"clients={self.clients}); last events: {self.events[-10:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def wait_sessions(self, n: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until the server reports exactly ``n`` sessions."""
        await self.wait_for(lambda s: s.sessions == n, timeout, f"SESSIONS {n}")

    # lifecycle

    async def stop(self) -> int | None:
        """SIGTERM the server (SIGKILL after 5 s); returns its exit status."""
        proc = self._proc
        if proc is None:
            return None
        rc = await _terminate(proc)
        await _finish_task(self._stdout_task)
        await _finish_task(self._stderr_task)
        self._stdout_task = self._stderr_task = None
        self.sessions = 0
        return rc

    async def restart(self) -> None:
        """Stop, then start again on the same port (retrying the bind for 5 s)."""
        port = self.port or self.requested_port
        await self.stop()
        deadline = time.monotonic() + RESTART_BIND_RETRY
        while True:
            try:
                await self._launch(port)
                return
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server (a crash); call :meth:`stop` afterwards to reap it."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    # internals

    def _command(self, port: int) -> list[str]:
        cmd = [*self.prefix, SYSTEM_PYTHON, "-u", str(GST_SOURCE), "--port", str(port),
               "--bind", self.bind, "--path", self.path]
        if not self.audio:
            cmd.append("--no-audio")
        cmd.append("--shared" if self.shared else "--no-shared")
        cmd.extend(self.extra_args)
        return cmd

    async def _launch(self, port: int) -> None:
        if self.running:
            raise RuntimeError("GStreamer server already running")
        self._ready = asyncio.Event()
        self._stderr.clear()
        self.sessions = 0
        cmd = self._command(port)
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_system_python_env(),
        )
        self._stdout_task = asyncio.create_task(
            _drain_lines(self._proc.stdout, self._on_stdout), name="gst-stdout")
        self._stderr_task = asyncio.create_task(
            _drain_lines(self._proc.stderr, self._stderr.append), name="gst-stderr")

        ready = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self._proc.wait())
        try:
            await asyncio.wait({ready, exited}, timeout=READY_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if self._ready.is_set():
            self.starts += 1
            return
        timed_out = self._proc.returncode is None
        rc = await self.stop()
        why = (f"no READY within {READY_TIMEOUT:.0f}s" if timed_out
               else f"exited with status {rc} before READY")
        raise RuntimeError(
            f"GStreamer RTSP server {why}\n  command: {' '.join(cmd)}\n"
            f"  stderr tail:\n{self.stderr_tail or '  (empty)'}")

    def _on_stdout(self, line: str) -> None:
        self.events.append(line)
        word, _, rest = line.partition(" ")
        if word == "READY":
            for item in rest.split():
                key, _, value = item.partition("=")
                if key == "port":
                    self.port = int(value)
            self._ready.set()
        elif word == "CLIENT":
            self.clients.append(rest)
        elif word == "CLOSED":
            self.closed_clients.append(rest)
        elif word == "SESSIONS":
            self.sessions = int(rest)
            self.max_sessions = max(self.max_sessions, self.sessions)
        elif word == "MEDIA":
            self.media_events.append(rest)
        self._changed.set()


# -- ffmpeg / ffprobe --------------------------------------------------------------


@dataclass
class ViewerResult:
    frames: int
    returncode: int
    stderr_tail: str
    elapsed: float
    timed_out: bool = False


def _viewer_command(url: str, transport: str, frames: int | None,
                    extra_args: Sequence[str], interactive: bool, prefix: Sequence[str] = ()) -> list[str]:
    cmd = [*prefix, "ffmpeg", "-hide_banner", "-nostats", "-loglevel", "info",
           "-progress", "pipe:1", "-stats_period", "0.5"]
    if not interactive:
        cmd.append("-nostdin")
    cmd += ["-rtsp_transport", transport, *extra_args, "-i", url, "-map", "0:v:0"]
    if frames is not None:
        cmd += ["-frames:v", str(frames)]
    return cmd + ["-f", "null", "-"]


class FfmpegViewer(_Child):
    """A long-running ffmpeg RTSP viewer decoding video to the null muxer.

    ``frames`` follows ffmpeg's progress output (every 0.5 s) and is final once
    the process has exited. ``extra_args`` go before ``-i`` (input options).

    :meth:`stop` is graceful: it types ``q`` on ffmpeg's stdin, the one way that
    reliably makes ffmpeg 5.x send RTSP TEARDOWN (after SIGTERM it often skips
    it). While the input is stalled ffmpeg does not look at stdin, so ``stop``
    falls back to SIGTERM and then SIGKILL. :meth:`kill` is a crash: no TEARDOWN.
    ``prefix`` goes before the command (``["ip", "netns", "exec", "pod-ns"]``: a viewer
    in a network namespace; the prefix must exec ffmpeg so signals reach it).
    """

    def __init__(self, url: str, *, transport: str = "udp", frames: int | None = None,
                 extra_args: Sequence[str] = (), interactive: bool = True,
                 prefix: Sequence[str] = ()) -> None:
        self.url = url
        self.transport = transport
        self.interactive = interactive
        self.cmd = _viewer_command(url, transport, frames, extra_args, interactive, prefix)
        self.frames = 0
        self.last_advance = 0.0
        self.started_at = 0.0
        self.ended = False
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    @classmethod
    async def start(cls, url: str, *, transport: str = "udp",
                    extra_args: Sequence[str] = (), frames: int | None = None,
                    prefix: Sequence[str] = ()) -> FfmpegViewer:
        viewer = cls(url, transport=transport, frames=frames, extra_args=extra_args, prefix=prefix)
        await viewer._spawn()
        return viewer

    async def __aenter__(self) -> FfmpegViewer:
        if self._proc is None:
            await self._spawn()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def wait_frames(self, n: int, timeout: float) -> int:  # noqa: ASYNC109
        """Wait until at least ``n`` frames are decoded; returns the count.

        Raises :class:`TimeoutError` (with ffmpeg's stderr tail) if that does not
        happen within ``timeout`` seconds or ffmpeg exits first.
        """
        deadline = time.monotonic() + timeout
        while self.frames < n:
            if self.ended:
                raise TimeoutError(
                    f"ffmpeg exited (status {self.returncode}) after {self.frames} of "
                    f"{n} frames\n{self.stderr_tail}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"ffmpeg decoded {self.frames} of {n} frames in {timeout:.1f}s\n"
                    f"{self.stderr_tail}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return self.frames

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109
        """Wait for ffmpeg to exit by itself; returns its status."""
        assert self._proc is not None
        await asyncio.wait_for(self._proc.wait(), timeout)
        await self._join_readers()
        return self._proc.returncode if self._proc.returncode is not None else -1

    def kill(self) -> None:
        """SIGKILL ffmpeg: a crash, no RTSP TEARDOWN. Call :meth:`stop` to reap."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def stop(self, grace: float = 2.0) -> int | None:
        """Stop ffmpeg: ``q`` (TEARDOWN sent), then SIGTERM, then SIGKILL.

        Each escalation waits ``grace`` seconds (SIGTERM: 1.5 x ``grace``).
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None and self.interactive and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.write(b"q")
                await proc.stdin.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
        rc = await _terminate(proc, grace * 1.5)
        if proc.stdin is not None:
            proc.stdin.close()
        await self._join_readers()
        return rc

    def result(self) -> ViewerResult:
        elapsed = time.monotonic() - self.started_at if self.started_at else 0.0
        rc = self.returncode
        return ViewerResult(self.frames, rc if rc is not None else -1,
                            self.stderr_tail, elapsed)

    async def _spawn(self) -> None:
        self.started_at = time.monotonic()
        stdin = asyncio.subprocess.PIPE if self.interactive else asyncio.subprocess.DEVNULL
        self._proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=stdin, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._tasks = [
            asyncio.create_task(_drain_lines(self._proc.stdout, self._on_progress),
                                name="ffmpeg-progress"),
            asyncio.create_task(_drain_lines(self._proc.stderr, self._stderr.append),
                                name="ffmpeg-stderr"),
        ]
        self._tasks[0].add_done_callback(self._on_stdout_closed)

    def _on_progress(self, line: str) -> None:
        key, _, value = line.partition("=")
        if key == "frame":
            with contextlib.suppress(ValueError):
                frames = int(value.strip())
                if frames > self.frames:
                    self.frames = frames
                    self.last_advance = time.monotonic()
                    self._changed.set()

    def _on_stdout_closed(self, _task: asyncio.Task[None]) -> None:
        self.ended = True
        self._changed.set()

    async def _join_readers(self) -> None:
        for task in self._tasks:
            await _finish_task(task)


async def ffmpeg_frames(url: str, *, transport: str = "udp", frames: int = 50,
                        timeout: float = 40, extra_args: Sequence[str] = (),  # noqa: ASYNC109
                        prefix: Sequence[str] = ()) -> ViewerResult:
    """Decode ``frames`` video frames from ``url`` with ffmpeg and report the outcome.

    On timeout ffmpeg is killed and the frames decoded so far are returned with
    ``timed_out=True``.
    """
    viewer = FfmpegViewer(url, transport=transport, frames=frames, extra_args=extra_args,
                          interactive=False, prefix=prefix)
    await viewer._spawn()
    timed_out = False
    try:
        await viewer.wait_exit(timeout)
    except TimeoutError:
        timed_out = True
        viewer.kill()
    finally:
        await viewer.stop()
    result = viewer.result()
    result.timed_out = timed_out
    return result


async def ffprobe_streams(url: str, transport: str = "tcp", timeout: float = 20,  # noqa: ASYNC109
                          prefix: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The ``streams`` list ffprobe reports for ``url``; raises on failure."""
    proc = await asyncio.create_subprocess_exec(
        *prefix, "ffprobe", "-v", "error", "-rtsp_transport", transport,
        "-show_streams", "-of", "json", url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise TimeoutError(f"ffprobe {url} did not finish in {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"ffprobe {url} failed with status {proc.returncode}: "
                           f"{err.decode('utf-8', 'replace').strip()[-2000:]}")
    streams = json.loads(out.decode("utf-8", "replace") or "{}").get("streams", [])
    return list(streams)


class RtpCounter:
    """An aiortsp transport client that counts the RTP packets it is handed."""

    def __init__(self) -> None:
        self.received = 0

    def handle_rtp(self, rtp: object) -> None:
        self.received += 1

    def handle_rtcp(self, rtcp: object) -> None:
        pass

    def handle_closed(self, error: object) -> None:
        pass


@contextlib.asynccontextmanager
async def aiortsp_session(url: str) -> AsyncIterator[tuple[Any, RtpCounter]]:
    """aiortsp as a UDP viewer of ``url`` (set up, not yet playing): ``(session, counter)``.

    aiortsp sends RTCP receiver reports with LSR/DLSR every few seconds; leaving the
    block sends TEARDOWN.
    """
    from aiortsp.rtsp.connection import RTSPConnection
    from aiortsp.rtsp.session import RTSPMediaSession
    from aiortsp.transport import transport_for_scheme

    host, port = url.split("/")[2].rsplit(":", 1)
    counter = RtpCounter()
    async with RTSPConnection(host, int(port)) as conn, transport_for_scheme("rtsp")(conn) as transport:
        transport.subscribe(counter)
        async with RTSPMediaSession(conn, url, transport=transport) as session:
            yield session, counter
