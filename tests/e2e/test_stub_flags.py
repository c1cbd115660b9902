"""The stub's security settings as an operator gives them: `msm up` and `msm-stub` flags.

Real processes, real players: `msm up --users-file` with ffmpeg presenting Digest credentials
(and refused without them), `--tls-cert/--tls-key` with ffmpeg over rtsps://, and a bound
hit at the stub counted on the Prometheus endpoint (`msm up`: the proxy's /metrics;
`msm-stub`: its own --metrics-listen).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import ssl
import sys
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msm.sdk.rtsp import Response, RtspReader
from tests.e2e.conftest import STATE_DIR, _require_peers
from tests.e2e.test_rtsps import _self_signed
from tests.peers import FfmpegViewer, GstRtspServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

VENV_BIN = Path(sys.executable).parent
USER, PASSWORD = "alice", "w0nder:land"


class _Process:
    """A child whose output lines are kept (bounded: the tail is all a failure message needs)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: deque[str] = deque(maxlen=400)
        self._seen = asyncio.Event()
        self._readers = [asyncio.create_task(self._read(stream)) for stream in (proc.stdout, proc.stderr)]

    async def _read(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._seen.set()

    async def wait_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while True:
                for line in list(self.lines):
                    if match := re.search(pattern, line):
                        return match
                if self.proc.returncode is not None:
                    raise AssertionError(f"exited {self.proc.returncode}:\n" + "\n".join(self.lines))
                self._seen.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._seen.wait(), 0.5)

    async def stop(self) -> str:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for reader in self._readers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 5)
        return "\n".join(self.lines)


@contextlib.asynccontextmanager
async def _spawn(*command: str) -> AsyncIterator[_Process]:
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    child = _Process(proc)
    try:
        yield child
    finally:
        output = await child.stop()
        assert "Traceback" not in output, output
        assert PASSWORD not in output, output


def _msm_up(*args: str) -> contextlib.AbstractAsyncContextManager[_Process]:
    return _spawn(str(VENV_BIN / "msm"), "up", "--rtsp-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
                  "--proxy-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--web-listen",
                  "127.0.0.1:0", "--linger", "1", "--state-dir", str(STATE_DIR), *args)


def _users(tmp_path: Path) -> str:
    users = tmp_path / "users"
    users.write_text(f"# viewers\n{USER}:{PASSWORD}\n")
    return str(users)


def _with_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{USER}:{PASSWORD.replace(':', '%3A')}@{rest}"


async def _scrape(address: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:  # noqa: S310
            return str(answer.read().decode())
    return await asyncio.to_thread(get)


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: str) -> Response:
    parser = RtspReader()
    writer.write(request.encode())
    while True:
        event = parser.next_event()
        if isinstance(event, Response):
            return event
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, "connection closed before an answer"
        parser.feed(data)


async def test_msm_up_viewers_authenticate_and_play_over_rtsps(tmp_path: Path) -> None:
    _require_peers()
    cert, key = _self_signed(tmp_path)
    async with GstRtspServer(path="/test", audio=False) as gst, _msm_up(
            "--route", f"cam={gst.url}", "--users-file", _users(tmp_path), "--tls-cert", cert, "--tls-key", key,
            "--rtsps-port", "0") as up:
        rtsp = (await up.wait_line(r"^\s+rtsp\s+(rtsp://\S+)/<name>")).group(1)
        rtsps = (await up.wait_line(r"^\s+rtsps\s+(rtsps://\S+)/<name>")).group(1)
        await up.wait_line(r"viewers\s+Digest users from")
        # ffmpeg answers the stub's Digest challenge with the URL's credentials.
        async with FfmpegViewer(_with_credentials(f"{rtsp}/cam"), transport="tcp") as viewer:
            await viewer.wait_frames(25, timeout=30)
        async with FfmpegViewer(_with_credentials(f"{rtsps}/cam"), transport="tcp") as viewer:
            await viewer.wait_frames(25, timeout=30)
        refused = FfmpegViewer(f"{rtsp}/cam", transport="tcp", frames=5, interactive=False)
        async with refused:
            assert await refused.wait_exit(20) != 0
        assert "401" in refused.stderr_tail, refused.stderr_tail


async def test_msm_up_counts_a_limit_hit_on_the_proxys_metrics() -> None:
    async with _msm_up("--route", f"cam=rtsp://127.0.0.1:{free_port()}/x", "--max-connections-per-client", "1",
                       "--idle-timeout", "30") as up:
        rtsp = (await up.wait_line(r"^\s+rtsp\s+rtsp://([\d.]+:\d+)/<name>")).group(1)
        metrics = (await up.wait_line(r"^\s+metrics\s+http://(\S+)/metrics")).group(1)
        before = await _scrape(metrics)
        assert 'msm_stub_limit_hits_total{limit="connections_per_client"} 0.0' in before, before
        host, port = rtsp.rsplit(":", 1)
        _first, held = await asyncio.open_connection(host, int(port))
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            data = await asyncio.wait_for(reader.read(), 10)   # answered, then closed
            assert data.startswith(b"RTSP/1.0 503"), data
            writer.close()
            after = await _scrape(metrics)
            assert 'msm_stub_limit_hits_total{limit="connections_per_client"} 1.0' in after, after
            assert "msm_stub_connections 1.0" in after and "msm_flows{" in after   # the proxy's endpoint
        finally:
            held.close()


async def test_msm_stub_flags_auth_rtsps_and_metrics(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    async with _spawn(
            str(VENV_BIN / "msm-stub"), "--insecure", "--control", f"127.0.0.1:{free_port()}",
            "--listen", "127.0.0.1:0", "--users-file", _users(tmp_path), "--auth-realm", "cameras",
            "--tls-cert", cert, "--tls-key", key, "--rtsps-listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0", "--max-connections-per-client", "2") as stub:
        port = int((await stub.wait_line(r"stub RTSP server on rtsp://127\.0\.0\.1:(\d+)/")).group(1))
        tls_port = int((await stub.wait_line(r"stub RTSPS server on rtsps://127\.0\.0\.1:(\d+)/")).group(1))
        metrics = (await stub.wait_line(r"stub metrics on http://(\S+)/metrics")).group(1)
        assert metrics.startswith("127.0.0.1:")   # loopback, as the default is
        # Plain RTSP: a DESCRIBE without credentials is challenged with the configured realm.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await _ask(reader, writer, f"DESCRIBE rtsp://127.0.0.1:{port}/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        assert answer.status == 401
        assert 'Digest realm="cameras"' in (answer.headers.get("WWW-Authenticate") or "")
        # RTSPS answers on its own port; that second connection is the address's last allowed one.
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        tls_reader, tls_writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=client)
        options = await _ask(tls_reader, tls_writer, f"OPTIONS rtsps://127.0.0.1:{tls_port}/cam RTSP/1.0\r\n"
                             "CSeq: 1\r\n\r\n")
        assert options.status == 200
        third_reader, third_writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(third_reader.read(), 10)).startswith(b"RTSP/1.0 503")
        third_writer.close()
        text = await _scrape(metrics)
        assert 'msm_stub_limit_hits_total{limit="connections_per_client"} 1.0' in text, text
        assert "msm_stub_connections 2.0" in text and "msm_stub_sessions 0.0" in text, text
        writer.close()
        tls_writer.close()
