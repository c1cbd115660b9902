"""The ``msm`` command: ``msm up`` (a local mesh) and ``msm streams`` (what flows through it).

Configuration comes from flags, then ``MSM_*`` environment variables, then a
YAML file (``--config``), then defaults, in that order of precedence.

Route credentials can stay out of the config file: a route mapping's ``username``
with ``password_file`` or ``password_env`` is percent-encoded into the route URL's
userinfo when loaded, and every URL the command prints goes through ``redact_url``.
"""
# long module: the msm command is one parser with two commands, the settings merge
# (flags, env, file) including routes and their credentials, the banner and the
# streams table; each part is short, splitting them would scatter one command.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from msm.control_plane.multicast import DEFAULT_POOL, DEFAULT_TTL, MAX_GROUPS
from msm.control_plane.planner import MAX_TRACKS
from msm.control_plane.resolver import Route, RouteError, parse_route, parse_switch
from msm.rtp_proxy.media import st2110_analyse
from msm.runtime.hostport import HostPort, parse_host_port
from msm.runtime.process import setup_logging
from msm.runtime.redact import redact_url
from msm.sdk.errors import ConfigError, MsmError
from msm.sdk.rtsp_server import MAX_SESSIONS_PER_CONNECTION
from msm.security.local import default_state_dir, workload_files
from msm.stub.server import (
    HEADER_TIMEOUT,
    IDLE_CONNECTION_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    RTSPS_PORT,
    WRITE_TIMEOUT,
)

from . import bench as bench_command
from . import media_view
from .mesh import LocalMesh, MeshConfig, check_multicast, gateway_stub_config

log = logging.getLogger("msm")

DEFAULTS: dict[str, Any] = {
    "rtsp_listen": "127.0.0.1:8554",
    "control_listen": "127.0.0.1:9000",
    "proxy_listen": "127.0.0.1:9001",
    "media_host": "127.0.0.1",
    "port_range": "30000-39999",
    "linger": 5.0,
    "session_timeout": 60,
    "log_level": "info",
    "control": "127.0.0.1:9000",
    "metrics_listen": "127.0.0.1:9090",
    "web_listen": "127.0.0.1:8080",
    # The gateway stub's viewers (authentication and RTSPS off unless given) and bounds.
    "users_file": "",
    "auth_realm": "msm",
    "tls_cert": "",
    "tls_key": "",
    "rtsps_port": RTSPS_PORT,
    "max_connections": MAX_CONNECTIONS,
    "max_connections_per_client": MAX_CONNECTIONS_PER_CLIENT,
    "max_sessions_per_connection": MAX_SESSIONS_PER_CONNECTION,
    "header_timeout": HEADER_TIMEOUT,
    "idle_timeout": IDLE_CONNECTION_TIMEOUT,
    "write_timeout": WRITE_TIMEOUT,
    "max_tracks": MAX_TRACKS,
    # Multicast out (routes with multicast: on): the groups' pool, TTL and bound.
    "multicast_pool": DEFAULT_POOL,
    "multicast_ttl": DEFAULT_TTL,
    "max_multicast_groups": MAX_GROUPS,
}
# Settings that are whole numbers; the other numeric ones are seconds (floats).
INT_SETTINGS = ("session_timeout", "rtsps_port", "max_connections", "max_connections_per_client",
                "max_sessions_per_connection", "max_tracks", "multicast_ttl", "max_multicast_groups")
FLOAT_SETTINGS = ("linger", "header_timeout", "idle_timeout", "write_timeout")
# What a route mapping in the config file may say.
ROUTE_KEYS = ("url", "transport", "multicast", "username", "password_file", "password_env")


class UsageError(ConfigError):
    """A bad flag, environment variable or config file: a one-line message, exit 2."""


def _host_port(value: str, what: str) -> HostPort:
    return parse_host_port(value, what=what)


def _port_range(value: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 1024 <= int(low) < int(high) < 65536:
        raise UsageError(f"port range must be LOW-HIGH within 1024-65535, got {value!r}")
    return int(low), int(high)


def load_config_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def settings(opts: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    """Merge flags > MSM_* env > config file > defaults for ``keys``."""
    file_values = load_config_file(opts.config) if getattr(opts, "config", None) else {}
    merged: dict[str, Any] = {}
    for key in keys:
        flag = getattr(opts, key, None)
        env = os.environ.get(f"MSM_{key.upper()}")
        if flag is not None:
            merged[key] = flag
        elif env is not None:
            merged[key] = env
        elif key in file_values:
            merged[key] = file_values[key]
        else:
            merged[key] = DEFAULTS.get(key)
    merged["_file"] = file_values
    return merged


def _password(name: str, value: dict[str, Any]) -> str:
    """A route's password from ``password_file`` (its first line) or ``password_env``; never echoed."""
    if "password_file" in value and "password_env" in value:
        raise UsageError(f"route {name}: give password_file or password_env, not both")
    if "password_file" in value:
        path = Path(str(value["password_file"])).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise UsageError(f"route {name}: cannot read password_file {path}: {reason}") from None
        lines = text.splitlines()
        return lines[0] if lines else ""
    if "password_env" in value:
        variable = str(value["password_env"])
        if variable not in os.environ:
            raise UsageError(f"route {name}: password_env {variable} is not set")
        return os.environ[variable]
    return ""


def _file_route(name: str, value: dict[str, Any]) -> Route:
    """A route mapping of the config file; ``username`` and its password go into the URL's
    userinfo, percent-encoded, after the URL itself was checked (so no error shows them)."""
    unknown = sorted(set(map(str, value)) - set(ROUTE_KEYS))
    if unknown:
        hint = " (use password_file or password_env)" if "password" in unknown else ""
        raise UsageError(f"route {name}: unknown key {unknown[0]!r}{hint}; known: {', '.join(ROUTE_KEYS)}")
    route = Route(name=name, url=str(value.get("url", "")), transport=str(value.get("transport", "") or ""),
                  multicast=parse_switch(value.get("multicast", False), f"route {name}: multicast"))
    if "username" not in value:
        if "password_file" in value or "password_env" in value:
            raise UsageError(f"route {name}: a password needs a username")
        return route
    parts = urlsplit(route.url)
    if "@" in parts.netloc:
        raise UsageError(f"route {name}: credentials both in the URL and in username/password")
    userinfo = quote(str(value["username"]), safe="")
    password = _password(name, value)
    if password:
        userinfo += ":" + quote(password, safe="")
    url = urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))
    return Route(name=name, url=url, transport=route.transport, multicast=route.multicast)


def _routes(opts: argparse.Namespace, file_values: dict[str, Any]) -> list[Route]:
    routes: dict[str, Route] = {}
    raw = file_values.get("routes") or {}
    if isinstance(raw, dict):
        for name, value in raw.items():
            if isinstance(value, dict):
                routes[str(name)] = _file_route(str(name), value)
            else:
                routes[str(name)] = parse_route(f"{name}={value}")
    elif isinstance(raw, list):
        for item in raw:
            route = parse_route(str(item))
            routes[route.name] = route
    else:
        raise UsageError("config 'routes' must be a mapping NAME: URL or a list of NAME=URL")
    env = os.environ.get("MSM_ROUTES")
    for item in (env.split(",") if env else []):
        if item.strip():
            route = parse_route(item.strip())
            routes[route.name] = route
    for item in opts.route or []:
        route = parse_route(item)
        routes[route.name] = route
    return list(routes.values())


# -- msm up ---------------------------------------------------------------------------------------
def _insecure(opts: argparse.Namespace, file_values: dict[str, Any]) -> bool:
    """--insecure, MSM_INSECURE=1 or ``insecure: true`` in the config file; off by default."""
    env = os.environ.get("MSM_INSECURE", "").strip().lower()
    return bool(opts.insecure or env in ("1", "true", "yes") or file_values.get("insecure") is True)


def _state_dir(opts: argparse.Namespace, file_values: dict[str, Any]) -> Path:
    value = opts.state_dir or file_values.get("state_dir")
    return Path(str(value)).expanduser() if value else default_state_dir()


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _numbers(values: dict[str, Any]) -> dict[str, int | float]:
    """The numeric settings, each a UsageError naming its flag when it is not a number."""
    numbers: dict[str, int | float] = {}
    for key in INT_SETTINGS + FLOAT_SETTINGS:
        kind = int if key in INT_SETTINGS else float
        try:
            numbers[key] = kind(values[key])
        except (TypeError, ValueError):
            what = "a whole number" if kind is int else "a number of seconds"
            raise UsageError(f"--{key.replace('_', '-')} must be {what}, got {values[key]!r}") from None
    return numbers


def _flag(opts: argparse.Namespace, file_values: dict[str, Any], key: str) -> bool:
    """A switch: the flag, MSM_<KEY>=1 or ``key: true`` in the config file; off by default."""
    env = os.environ.get(f"MSM_{key.upper()}", "").strip().lower()
    return bool(getattr(opts, key, None) or env in ("1", "true", "yes") or file_values.get(key) is True)


UP_KEYS = ["rtsp_listen", "control_listen", "proxy_listen", "media_host", "port_range", "log_level",
           "metrics_listen", "web_listen", "users_file", "auth_realm", "tls_cert", "tls_key", "multicast_pool",
           *INT_SETTINGS, *FLOAT_SETTINGS]


def cmd_up(opts: argparse.Namespace) -> int:
    return asyncio.run(_run_up(up_config(opts)))


def up_config(opts: argparse.Namespace) -> MeshConfig:
    """The local mesh's settings from flags, MSM_* variables, the config file and defaults
    (UsageError or ConfigError, one line, for anything it could not run with)."""
    values = settings(opts, UP_KEYS)
    setup_logging(str(values["log_level"]))
    rtsp = _host_port(str(values["rtsp_listen"]), "--rtsp-listen")
    for key in ("control_listen", "proxy_listen", "metrics_listen", "web_listen"):
        _host_port(str(values[key]), "--" + key.replace("_", "-"))
    file_values = values["_file"]
    insecure = _insecure(opts, file_values)
    if insecure:
        for key in ("control_listen", "proxy_listen"):
            if not _loopback(_host_port(str(values[key]), key).host):
                raise UsageError(f"--insecure keeps gRPC on loopback; --{key.replace('_', '-')} "
                                 f"{values[key]} is not")
    demo = bool(opts.demo or file_values.get("demo") or os.environ.get("MSM_DEMO") == "1")
    config = MeshConfig(
        rtsp_host=rtsp.host, rtsp_port=rtsp.port, control_listen=str(values["control_listen"]),
        proxy_listen=str(values["proxy_listen"]), media_host=str(values["media_host"]),
        port_range=_port_range(str(values["port_range"])), routes=_routes(opts, file_values), demo=demo,
        metrics_listen=str(values["metrics_listen"]), web_listen=str(values["web_listen"]),
        insecure=insecure, state_dir=None if insecure else _state_dir(opts, file_values),
        users_file=str(values["users_file"] or ""), auth_realm=str(values["auth_realm"]),
        allow_basic=_flag(opts, file_values, "allow_basic"), tls_cert=str(values["tls_cert"] or ""),
        tls_key=str(values["tls_key"] or ""), multicast_pool=str(values["multicast_pool"]))
    for key, number in _numbers(values).items():   # linger, session_timeout, the bounds, max_tracks
        setattr(config, key, number)
    media_view.configure(config, file_values, opts.config)   # the media: section (groups, ST 2110 bridges)
    if not config.routes and not config.demo and not config.bridges:
        raise UsageError("nothing to serve: give --demo and/or --route NAME=rtsp://host:port/path")
    if not 0 <= config.rtsps_port < 65536:
        raise UsageError(f"--rtsps-port must be 0-65535, got {config.rtsps_port}")
    if config.max_tracks < 1:
        raise UsageError(f"--max-tracks must be positive, got {config.max_tracks}")
    check_multicast(config)
    gateway_stub_config(config)   # a users file or certificate it cannot read, a bound <= 0: exit 2 now
    return config


async def _run_up(config: MeshConfig) -> int:
    mesh = LocalMesh(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await mesh.start()
    except MsmError as exc:
        print(f"msm: error: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("msm: error: components did not come up within 10 s", file=sys.stderr)
        return 1
    print("\n".join(banner(mesh)), flush=True)
    await stop.wait()
    print("msm: stopping", file=sys.stderr, flush=True)
    await mesh.stop()
    return 0


def banner(mesh: LocalMesh) -> list[str]:
    """What `msm up` prints once the mesh is up; upstream URLs redacted (no credentials)."""
    config = mesh.config
    assert mesh.control is not None and mesh.proxy is not None
    lines = [
        "msm local mesh is up",
        f"  rtsp     {mesh.rtsp_base}/<name>",
        f"  control  {mesh.control.address} (gRPC)",
        f"  proxy    {mesh.proxy.address} (gRPC); RTP/RTCP ports {config.port_range[0]}-"
        f"{config.port_range[1]} on {config.media_host}",
        "  gRPC     PLAINTEXT (--insecure)" if config.insecure else
        f"  gRPC     mutual TLS; CA and certificates in {config.state_dir}",
    ]
    if mesh.rtsps_base is not None:
        lines.insert(2, f"  rtsps    {mesh.rtsps_base}/<name> (TLS; interleaved media only)")
    if config.users_file:
        basic = " (Basic too, over RTSPS)" if config.allow_basic else ""
        lines.append(f"  viewers  Digest users from {config.users_file}{basic}")
    else:
        lines.append("  viewers  no authentication (--users-file to require it)")
    lines.append("  streams:")
    for name, route in sorted(mesh.resolver.routes.items()):
        lines.append(f"    {mesh.url(name):40s} <- {redact_url(route.url)}")
    if "demo" in mesh.resolver.routes:
        lines.append(f"  try: ffplay -rtsp_transport tcp {mesh.url('demo')}")
    if mesh.proxy.metrics is not None:
        lines.append(f"  metrics  http://{mesh.proxy.metrics.address}/metrics (proxy, and the stub's "
                     "msm_stub_* bounds)")
    if mesh.web is not None:
        lines.append(f"  web      http://{mesh.web.address}/  (stream graph; control-plane /metrics)")
    if mesh.media_agent is not None:
        lines.append(f"  media    MSM_PROXY=unix:{mesh.media_agent.socket_path}  (apps of msm.sdk.mesh)")
    lines.extend(media_view.banner_lines(mesh))
    watch = "  watch: msm streams --watch"
    if mesh.control.address != DEFAULTS["control"]:
        watch += f" --control {mesh.control.address}"
    if config.insecure:
        watch += " --insecure"
    elif config.state_dir != default_state_dir():
        watch += f" --state-dir {config.state_dir}"
    lines.append(watch)
    lines.append("Ctrl+C stops.")
    return lines


# -- msm streams ------------------------------------------------------------------------------------
def _fmt_rate(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:.2f} Mbit/s"
    return f"{bps / 1e3:.0f} kbit/s"


def stream_rows(response: Any) -> list[dict[str, Any]]:
    """One ``ingress`` row per track (upstream -> proxy) and one ``viewer`` row per viewer
    leg (proxy -> viewer): the hops where loss and jitter can enter."""
    rows: list[dict[str, Any]] = []
    for stream in response.streams:
        viewer_of = {leg.leg_id: v for v in stream.viewers for leg in v.legs}
        for ts in stream.tracks or [None]:
            flow = ts.flow if ts is not None else None
            track = f"{ts.track.index}:{ts.track.kind}" if ts is not None else "-"
            rows.append(_ingress_row(stream, ts, track))
            relays = list(ts.relays) if ts is not None else []
            rows.extend(_relay_row(stream.name, track, flow, relay) for relay in relays)
            legs = [(f.node, leg) for f in ([flow] if flow else []) + relays for leg in f.legs
                    if not leg.leg_id.startswith("relay@")]
            rows.extend(_viewer_row(stream.name, track, node, leg, viewer_of.get(leg.leg_id))
                        for node, leg in legs)
    return rows


def _ingress_row(stream: Any, ts: Any, track: str) -> dict[str, Any]:
    flow = ts.flow if ts is not None else None
    expected = flow.packets_expected if flow else 0
    loss = (100.0 * max(flow.packets_lost, 0) / expected) if flow and expected else 0.0
    return {
        "hop": "ingress",
        "stream": stream.name,
        "upstream": stream.upstream_url,
        "node": flow.node if flow else "",
        "state": stream.upstream_state,
        "viewers": len(stream.viewers),
        "playing": sum(1 for v in stream.viewers if v.playing),
        "track": track,
        "encoding": ts.track.encoding if ts is not None else "",
        "packets": flow.packets_received if flow else 0,
        "bitrate_bps": flow.bitrate_bps if flow else 0.0,
        "loss_percent": round(loss, 3),
        "lost": flow.packets_lost if flow else 0,
        "jitter_ms": round(flow.jitter_ms, 3) if flow else 0.0,
        "rtt_ms": None,
    }


def _relay_row(name: str, track: str, flow: Any, relay: Any) -> dict[str, Any]:
    expected = relay.packets_expected
    return {
        "hop": "relay", "stream": name, "track": track, "node": relay.node,
        "from_node": flow.node if flow else "", "state": "relaying",
        "packets": relay.packets_received, "bitrate_bps": relay.bitrate_bps,
        "loss_percent": round(100.0 * max(relay.packets_lost, 0) / expected, 3) if expected else 0.0,
        "lost": relay.packets_lost, "jitter_ms": round(relay.jitter_ms, 3), "rtt_ms": None,
    }


def _viewer_row(name: str, track: str, node: str, leg: Any, viewer: Any) -> dict[str, Any]:
    reported = leg.has_report
    sent = leg.packets_sent
    return {
        "hop": "viewer",
        "stream": name,
        "track": track,
        "node": node,
        "viewer": viewer.host if viewer else leg.destination.host,
        # A session id is a credential and is never published: the viewer's tag stands for it.
        "session": viewer.session_tag if viewer else leg.leg_id.partition("/")[0],
        "state": "playing" if leg.enabled else "paused",
        "packets": sent,
        "loss_percent": round(100.0 * max(leg.viewer_packets_lost, 0) / sent, 3) if reported and sent else None,
        "lost": leg.viewer_packets_lost if reported else None,
        "jitter_ms": round(leg.viewer_jitter_ms, 3) if reported else None,
        "rtt_ms": round(leg.rtt_ms, 3) if leg.HasField("rtt_ms") else None,
    }


def render_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no streams (open rtsp://<mesh>/<name> in a player to start one)"
    header = ["STREAM", "TRACK", "HOP", "STATE", "VIEWERS", "PACKETS", "BITRATE", "LOSS", "JITTER", "RTT"]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    table = [header]
    for r in rows:
        if r["hop"] == "ingress":
            hop = f"{r['upstream']} -> {r['node'] or 'proxy'}"
            viewers = f"{r['playing']}/{r['viewers']}"
            rate = _fmt_rate(r["bitrate_bps"])
        elif r["hop"] == "relay":
            hop = f"  {r['from_node']} => {r['node']}"
            viewers = ""
            rate = _fmt_rate(r["bitrate_bps"])
        else:
            hop = f"  -> {r['viewer']} ({r['session'][:8]}) on {r['node']}"
            viewers = rate = ""
        table.append([r["stream"], r["track"], hop, r["state"], viewers, str(r["packets"]), rate,
                      num(r["loss_percent"], "{:.2f}%"), num(r["jitter_ms"], "{:.2f} ms"),
                      num(r["rtt_ms"], "{:.2f} ms")])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)


def cmd_streams(opts: argparse.Namespace) -> int:
    import grpc

    from msm.protos import msm_pb2 as pb
    from msm.protos import msm_pb2_grpc as pb_grpc
    from msm.runtime.grpcutil import error_from_rpc
    from msm.sdk.errors import Unavailable

    values = settings(opts, ["control", "metrics_listen"])
    address = str(values["control"])
    _host_port(address, "--control")
    with _operator_channel(opts, values["_file"], address) as channel:
        api = pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
        while True:
            try:
                response = api.ListStreams(pb.ListStreamsRequest(), timeout=5.0)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, f"control plane {address}")
                if isinstance(error, Unavailable):
                    print(f"msm: error: control plane {address} unreachable ({exc.code().name}); "
                          "is `msm up` running?", file=sys.stderr)
                else:
                    print(f"msm: error: {error}", file=sys.stderr)
                return 1
            rows = stream_rows(response)
            media = media_view.control_media(channel)   # every node's, from the control plane
            media_rows = media_view.media_rows(media) if media is not None else []
            if opts.json:
                print(json.dumps(rows + media_rows, indent=2))
            else:
                if opts.watch:
                    print("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S") + f"  {address}\n", end="")
                # No node placed through the control plane (msm up's own proxy): its /metrics has the media.
                tables = (media_view.render_media(media_rows) if media is not None and media.nodes
                          else media_view.media_table(str(values["metrics_listen"])))
                print(render_table(rows) + tables, flush=True)
            if not opts.watch:
                return 0
            time.sleep(opts.watch)


def _operator_channel(opts: argparse.Namespace, file_values: dict[str, Any], address: str) -> Any:
    """mutual TLS with the operator certificate of the state directory; plaintext only if asked."""
    import grpc

    from msm.security.tls import sync_secure_channel

    if _insecure(opts, file_values):
        return grpc.insecure_channel(address)
    state_dir = _state_dir(opts, file_values)
    files = workload_files(state_dir, "operator")
    if not files.exists():
        raise UsageError(f"no operator certificate in {state_dir} (start `msm up` first, give the "
                         "--state-dir it uses, or --insecure for a mesh started with --insecure)")
    return sync_secure_channel(address, files)


# -- parser -----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="msm", description="msm: a media streaming mesh for RTSP/RTP.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    up = sub.add_parser("up", help="run a local mesh (control plane, RTP proxy, gateway stub)",
                        description="Run the control plane, one RTP proxy and a gateway stub on this "
                        "machine, relaying RTSP sources at rtsp://HOST:8554/NAME. Every setting can "
                        "also come from MSM_<SETTING> (e.g. MSM_RTSP_LISTEN, MSM_ROUTES=a=url,b=url) "
                        "or from a YAML file given with --config. The components talk gRPC over mutual "
                        "TLS with certificates from a local CA kept in --state-dir and re-issued before "
                        "they expire; --insecure turns that off.")
    up.add_argument("--demo", action="store_true", default=None,
                    help="serve the built-in test source as 'demo' (H.264 test pattern + audio)")
    up.add_argument("--route", action="append", metavar="NAME=URL",
                    help="relay an upstream RTSP URL as NAME (repeatable); append #transport=tcp "
                    "to force TCP towards the upstream (#transport=multicast: receive the server's "
                    "multicast group), #multicast=on to let viewers ask RTP/AVP;multicast; a "
                    "file:///path.sdp URL receives the RTP stream that SDP file describes")
    up.add_argument("--config", metavar="FILE", help="YAML file with settings and a 'routes' mapping")
    up.add_argument("--rtsp-listen", metavar="HOST:PORT", help="viewer-facing RTSP (default 127.0.0.1:8554)")
    up.add_argument("--control-listen", metavar="HOST:PORT", help="control plane gRPC (default 127.0.0.1:9000)")
    up.add_argument("--proxy-listen", metavar="HOST:PORT", help="proxy DataPlane gRPC (default 127.0.0.1:9001)")
    up.add_argument("--media-host", metavar="ADDR", help="address RTP sockets bind to (default 127.0.0.1)")
    up.add_argument("--port-range", metavar="LOW-HIGH", help="RTP/RTCP ports of the proxy (default 30000-39999)")
    up.add_argument("--linger", metavar="SECONDS", help="keep an upstream open this long after its last "
                    "viewer leaves (default 5)")
    up.add_argument("--session-timeout", metavar="SECONDS", help="RTSP session timeout (default 60)")
    up.add_argument("--metrics-listen", metavar="HOST:PORT",
                    help="the RTP proxy's Prometheus /metrics (default 127.0.0.1:9090)")
    up.add_argument("--web-listen", metavar="HOST:PORT",
                    help="the control plane's live page and its /metrics (default 127.0.0.1:8080)")
    up.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)")
    _security_flags(up, "keeps the mesh CA (created on first start) and each component's certificate; "
                    "`msm streams` reads its operator certificate there")
    _viewer_flags(up)
    _multicast_flags(up)
    up.set_defaults(func=cmd_up)

    streams = sub.add_parser("streams", help="show live streams, viewers and their statistics",
                             description="Print a table of the mesh's streams: upstream, viewers "
                             "(playing/all), packets, bitrate, loss and jitter per track; then the media "
                             "groups of every node (frames, bytes, drops, latency, fabric links), ST 2110 "
                             "bridges and app connections, as the control plane has them.")
    streams.add_argument("--control", metavar="HOST:PORT", help="control plane gRPC (default 127.0.0.1:9000)")
    streams.add_argument("--watch", nargs="?", type=float, const=1.0, metavar="SECONDS",
                         help="refresh every SECONDS (default 1) until Ctrl+C")
    streams.add_argument("--json", action="store_true", help="print JSON instead of a table")
    streams.add_argument("--config", metavar="FILE", help="YAML file (its 'control' setting)")
    streams.add_argument("--metrics-listen", metavar="HOST:PORT", help="the proxy's /metrics, read for the "
                         "media tables when the control plane places no node's media (msm up's own proxy; "
                         "default 127.0.0.1:9090)")
    _security_flags(streams, "where `msm up` keeps its certificates: the operator certificate is read "
                    "from it")
    streams.set_defaults(func=cmd_streams)
    bench_command.add_parser(sub)
    st2110_analyse.add_parser(sub)
    return parser


def _multicast_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multicast", "for routes with multicast on (config file: a route's 'multicast: on'; flag: "
        "--route NAME=URL#multicast=on): each node sends the stream once to a group of this pool. "
        "Also MSM_MULTICAST_POOL, ... and the config file's multicast_pool:, ...")
    group.add_argument("--multicast-pool", metavar="CIDR", help=f"IPv4 multicast network groups are leased "
                       f"from (default {DEFAULT_POOL})")
    group.add_argument("--multicast-ttl", metavar="TTL", help=f"TTL of multicast packets, 1-255 (default "
                       f"{DEFAULT_TTL}: the node's link only)")
    group.add_argument("--max-multicast-groups", metavar="N", help=f"groups leased at once (default {MAX_GROUPS})")


def _viewer_flags(parser: argparse.ArgumentParser) -> None:
    """What viewers of the gateway stub meet, and the planner's bound on tracks."""
    group = parser.add_argument_group(
        "viewers", "authentication and RTSPS are off unless given; each bound is counted in "
        "msm_stub_limit_hits_total{limit=...} on the proxy's /metrics when hit. Also MSM_<SETTING> "
        "(e.g. MSM_USERS_FILE) and the config file's users_file:, max_connections:, ...")
    group.add_argument("--users-file", metavar="FILE", help="viewers must authenticate (Digest) as one of "
                       "its user:password lines (default: no authentication)")
    group.add_argument("--auth-realm", metavar="REALM", help="realm of the viewers' challenges (default msm)")
    group.add_argument("--allow-basic", action="store_true", default=None,
                       help="also accept Basic, which sends the password in clear: over RTSPS only")
    group.add_argument("--tls-cert", metavar="PEM", help="serve RTSPS with this certificate chain "
                       "(needs --tls-key; default: no RTSPS)")
    group.add_argument("--tls-key", metavar="PEM", help="the RTSPS certificate's private key")
    group.add_argument("--rtsps-port", metavar="PORT", help=f"RTSPS port on the --rtsp-listen host "
                       f"(default {RTSPS_PORT})")
    for flag, default, what in (
            ("max-connections", MAX_CONNECTIONS, "viewer connections of the stub"),
            ("max-connections-per-client", MAX_CONNECTIONS_PER_CLIENT, "viewer connections from one address"),
            ("max-sessions-per-connection", MAX_SESSIONS_PER_CONNECTION, "RTSP sessions on one connection"),
            ("header-timeout", HEADER_TIMEOUT, "seconds to complete a request after its first byte"),
            ("idle-timeout", IDLE_CONNECTION_TIMEOUT, "seconds a connection without a session may stay silent"),
            ("write-timeout", WRITE_TIMEOUT, "seconds a connection may leave its answers unread"),
            ("max-tracks", MAX_TRACKS, "tracks a source may have (453 past it)")):
        group.add_argument(f"--{flag}", metavar="N" if isinstance(default, int) else "SECONDS",
                           help=f"{what} (default {default})")


def _security_flags(parser: argparse.ArgumentParser, state_help: str) -> None:
    parser.add_argument("--state-dir", metavar="DIR",
                        help=f"state directory (0700): {state_help} (env MSM_STATE_DIR; default "
                        "$XDG_STATE_HOME/msm or ~/.local/state/msm)")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="plaintext, unauthenticated gRPC on loopback (env MSM_INSECURE=1): any local "
                        "process could program the proxy or act as a stub; only for debugging")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        opts = parser.parse_args(argv)
        if not getattr(opts, "func", None):
            parser.print_help()
            return 2
        return int(opts.func(opts))
    except (ConfigError, RouteError) as exc:
        print(f"msm: error: {exc}", file=sys.stderr)
        return 2
    except MsmError as exc:
        print(f"msm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
