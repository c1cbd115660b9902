#!/usr/bin/python3
"""Built-in demo RTSP source: a GStreamer RTSP server that serves a synthetic stream.

This is the camera stand-in used by ``msm up --demo`` and by the end-to-end tests.
It serves one mount point (``/demo`` by default) with

* an H.264 video track (payload type 96): a live ``videotestsrc`` test pattern,
  320x240 at 25 fps, encoded by ``x264enc`` for low latency with a key frame
  every 25 frames (one per second) and SPS/PPS repeated before every key frame;
* an optional PCMA (G.711 A-law) audio track (payload type 8): a live sine tone.

Both RTP over UDP and RTP interleaved in the RTSP TCP connection are offered, so
any ordinary RTSP client (ffmpeg, VLC, GStreamer, a camera NVR) can watch it::

    ffplay -rtsp_transport tcp rtsp://127.0.0.1:8554/demo

The script is deliberately self-contained: it imports only the standard library
and PyGObject (``gi``), because it runs under the system interpreter that has the
GStreamer bindings (Debian: ``/usr/bin/python3`` with ``gir1.2-gst-rtsp-server-1.0``),
not under the project's virtual environment.

Run it as::

    /usr/bin/python3 msm/gst_source.py --port 8554 [--bind 127.0.0.1] [--path /demo]
                                       [--no-audio] [--shared | --no-shared]
                                       [--pattern ball] [--session-timeout 60]

``--port 0`` lets the kernel choose a free port; the chosen one is reported on the
``READY`` line. With ``--shared`` (the default) every client watches the same
encoder pipeline; with ``--no-shared`` each client gets its own.

Machine-readable events are written to stdout, one per line, flushed at once, so a
supervising process can follow what the server does:

``READY port=<n>``
    The server listens on TCP port ``<n>``.
``CLIENT <ip>:<port>``
    An RTSP client connected (its TCP peer address).
``CLOSED <ip>:<port>``
    That client's RTSP connection closed.
``SESSIONS <n>``
    The number of live RTSP sessions changed to ``<n>`` (polled every 200 ms;
    sessions whose keep-alive timed out are purged by a periodic cleanup).
``MEDIA prepared`` / ``MEDIA unprepared``
    A media pipeline was started or torn down.
``STOPPED``
    Printed on SIGTERM/SIGINT just before a clean exit (status 0).

Diagnostics go to stderr. The exit status is 2 for bad arguments and 1 if the
server cannot bind its port.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")

from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

POLL_INTERVAL_MS = 200
CLEANUP_INTERVAL_MS = 1000
PATTERNS = ("ball", "smpte", "snow", "black", "white", "red", "green", "blue", "checkers-8")


def emit(line: str) -> None:
    """Write one event line to stdout and flush it immediately."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        # The supervisor went away; keep serving, just stop reporting.
        pass


def build_launch(pattern: str, audio: bool) -> str:
    """The gst-launch style description of the served media."""
    video = (
        f"( videotestsrc is-live=true pattern={pattern} "
        "! video/x-raw,width=320,height=240,framerate=25/1 "
        "! videoconvert "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=500 "
        "! video/x-h264,profile=constrained-baseline "
        "! rtph264pay name=pay0 pt=96 config-interval=1 "
    )
    if audio:
        video += (
            "audiotestsrc is-live=true wave=sine volume=0.2 "
            "! audio/x-raw,rate=8000,channels=1 "
            "! audioconvert ! audioresample ! alawenc "
            "! rtppcmapay name=pay1 pt=8 "
        )
    return video + ")"


def peer_of(client: GstRtspServer.RTSPClient) -> str:
    """``ip:port`` of an RTSP client's TCP connection, best effort."""
    try:
        conn = client.get_connection()
        sock = conn.get_read_socket()
        addr = sock.get_remote_address()
        return f"{addr.get_address().to_string()}:{addr.get_port()}"
    except Exception:  # noqa: BLE001 - reporting only
        try:
            return f"{client.get_connection().get_ip()}:0"
        except Exception:  # noqa: BLE001
            return "unknown:0"


class DemoServer:
    """Owns the RTSP server, the main loop and the event reporting."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(args.bind)
        self.server.set_service(str(args.port))

        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(build_launch(args.pattern, args.audio))
        factory.set_shared(args.shared)
        protocols = {"udp": GstRtsp.RTSPLowerTrans.UDP, "tcp": GstRtsp.RTSPLowerTrans.TCP,
                     "both": GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP}
        factory.set_protocols(protocols[args.protocols])
        factory.connect("media-constructed", self._on_media_constructed)
        self.server.get_mount_points().add_factory(args.path, factory)

        self.server.connect("client-connected", self._on_client_connected)
        self._last_sessions = -1
        self._source_id = 0

    # -- signal handlers -------------------------------------------------------

    def _on_client_connected(self, _server: Any, client: GstRtspServer.RTSPClient) -> None:
        peer = peer_of(client)
        emit(f"CLIENT {peer}")
        client.connect("closed", lambda _c: emit(f"CLOSED {peer}"))
        if self.args.session_timeout is not None:
            client.connect("new-session", self._on_new_session)

    def _on_new_session(self, _client: Any, session: GstRtspServer.RTSPSession) -> None:
        session.set_timeout(self.args.session_timeout)

    def _on_media_constructed(self, _factory: Any, media: GstRtspServer.RTSPMedia) -> None:
        media.connect("prepared", lambda _m: emit("MEDIA prepared"))
        media.connect("unprepared", lambda _m: emit("MEDIA unprepared"))

    # -- periodic work ---------------------------------------------------------

    def _poll_sessions(self) -> bool:
        n = self.server.get_session_pool().get_n_sessions()
        if n != self._last_sessions:
            self._last_sessions = n
            emit(f"SESSIONS {n}")
        return bool(GLib.SOURCE_CONTINUE)

    def _cleanup_sessions(self) -> bool:
        # Removes sessions whose keep-alive deadline has passed.
        self.server.get_session_pool().cleanup()
        return bool(GLib.SOURCE_CONTINUE)

    def _on_signal(self, signame: str) -> bool:
        print(f"gst_source: {signame}, shutting down", file=sys.stderr, flush=True)
        self.loop.quit()
        return bool(GLib.SOURCE_REMOVE)

    # -- lifecycle -------------------------------------------------------------

    def run(self) -> int:
        try:
            self._source_id = self.server.attach(None)
        except GLib.Error as exc:
            print(f"gst_source: cannot listen on {self.args.bind}:{self.args.port}: "
                  f"{exc.message}", file=sys.stderr, flush=True)
            return 1
        if self._source_id == 0:
            print(f"gst_source: cannot listen on {self.args.bind}:{self.args.port}",
                  file=sys.stderr, flush=True)
            return 1

        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, self._on_signal, "SIGTERM")
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, self._on_signal, "SIGINT")
        GLib.timeout_add(POLL_INTERVAL_MS, self._poll_sessions)
        GLib.timeout_add(CLEANUP_INTERVAL_MS, self._cleanup_sessions)

        emit(f"READY port={self.server.get_bound_port()}")
        self._poll_sessions()
        self.loop.run()

        GLib.source_remove(self._source_id)
        emit("STOPPED")
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gst_source.py",
        description="Serve a live H.264 test pattern (plus PCMA tone) over RTSP.",
    )
    parser.add_argument("--port", type=int, default=8554,
                        help="TCP port to listen on; 0 picks a free one (default: 8554)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--path", default="/demo",
                        help="mount point of the stream (default: /demo)")
    parser.add_argument("--no-audio", dest="audio", action="store_false",
                        help="serve the video track only")
    parser.add_argument("--shared", action=argparse.BooleanOptionalAction, default=True,
                        help="share one pipeline among all clients (default: shared)")
    parser.add_argument("--pattern", default="ball", choices=PATTERNS,
                        help="videotestsrc pattern (default: ball)")
    parser.add_argument("--protocols", choices=("both", "udp", "tcp"), default="both",
                        help="lower transports offered to clients (tcp: answer UDP SETUPs with 461)")
    parser.add_argument("--session-timeout", type=int, default=None, metavar="SECONDS",
                        help="RTSP session timeout announced to clients "
                             "(default: GStreamer's 60 s)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if not args.path.startswith("/"):
        parser.error("--path must start with '/'")
    if args.session_timeout is not None and args.session_timeout <= 0:
        parser.error("--session-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)
    return DemoServer(args).run()


if __name__ == "__main__":
    sys.exit(main())
