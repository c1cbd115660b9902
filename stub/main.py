"""``msm-stub``: the sidecar in each injected pod (and the gateway outside Kubernetes).

In a pod the webhook sets MSM_POD_NAME, MSM_POD_NAMESPACE, MSM_POD_IP and
MSM_NODE_NAME through the Downward API; the CNI plugin redirects the app's
RTSP connections here (the stub runs as UID 1337, which the redirect exempts).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace

from msm.runtime.hostport import format_host_port, parse_host_port
from msm.runtime.process import setup_logging, stop_event
from msm.sdk.errors import ConfigError, MsmError
from msm.sdk.rtsp_server import MAX_SESSIONS_PER_CONNECTION
from msm.security.bootstrap import Bootstrap, add_tls_arguments, check_tls_arguments, workload_tls
from msm.security.identity import Role

from .app import Stub, StubConfig, check_config
from .server import (
    HEADER_TIMEOUT,
    IDLE_CONNECTION_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    RTSPS_PORT,
    WRITE_TIMEOUT,
)

log = logging.getLogger("msm.stub")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="msm-stub", description="The msm stub: terminates the app's RTSP, asks the control plane "
        "for streams, opens upstream sessions for sources in its pod. Flags default to MSM_* variables.")
    parser.add_argument("--control", default=_env("MSM_CONTROL_PLANE", "127.0.0.1:9000"),
                        help="control plane gRPC HOST:PORT (MSM_CONTROL_PLANE)")
    parser.add_argument("--listen", default=_env("MSM_STUB_LISTEN", "0.0.0.0:8554"),
                        help="RTSP HOST:PORT (default 0.0.0.0:8554; 0.0.0.0 or [::]: IPv4 and IPv6)")
    parser.add_argument("--pod", default=_env("MSM_POD_NAME", ""), help="pod name (MSM_POD_NAME)")
    parser.add_argument("--namespace", default=_env("MSM_POD_NAMESPACE", ""), help="MSM_POD_NAMESPACE")
    parser.add_argument("--pod-ip", default=_env("MSM_POD_IP", ""), help="MSM_POD_IP")
    parser.add_argument("--node", default=_env("MSM_NODE_NAME", "local"), help="MSM_NODE_NAME")
    parser.add_argument("--media-host", default=_env("MSM_MEDIA_HOST", ""),
                        help="address of the stub's UDP bridges (default: the pod IP, else 127.0.0.1)")
    parser.add_argument("--session-timeout", type=int, default=int(_env("MSM_SESSION_TIMEOUT", "60")))
    parser.add_argument("--log-level", default=_env("MSM_LOG_LEVEL", "info"))
    add_viewer_arguments(parser)
    add_tls_arguments(parser)
    return parser.parse_args(argv)


def add_viewer_arguments(parser: argparse.ArgumentParser) -> None:
    """What viewers meet: authentication, RTSPS, the server's bounds and its metrics."""
    group = parser.add_argument_group(
        "viewers", "authentication and RTSPS are off unless given; every bound below is counted in "
        "msm_stub_limit_hits_total{limit=...} when hit")
    group.add_argument("--users-file", default=_env("MSM_STUB_USERS_FILE", ""), metavar="FILE",
                       help="viewers must authenticate (Digest) as one of its user:password lines "
                       "(MSM_STUB_USERS_FILE; default: no authentication)")
    group.add_argument("--auth-realm", default=_env("MSM_STUB_AUTH_REALM", "msm"),
                       help="realm of the viewers' challenges (MSM_STUB_AUTH_REALM; default msm)")
    group.add_argument("--allow-basic", action="store_true", default=_env("MSM_STUB_ALLOW_BASIC", "") == "1",
                       help="also accept Basic, which sends the password in clear: over RTSPS only "
                       "(MSM_STUB_ALLOW_BASIC=1; default off)")
    group.add_argument("--tls-cert", default=_env("MSM_STUB_TLS_CERT", ""), metavar="PEM",
                       help="serve RTSPS (interleaved media only) with this certificate chain "
                       "(MSM_STUB_TLS_CERT; needs --tls-key; default: no RTSPS)")
    group.add_argument("--tls-key", default=_env("MSM_STUB_TLS_KEY", ""), metavar="PEM",
                       help="the RTSPS certificate's private key (MSM_STUB_TLS_KEY)")
    group.add_argument("--rtsps-listen", default=_env("MSM_STUB_RTSPS_LISTEN", ""), metavar="HOST:PORT",
                       help=f"RTSPS HOST:PORT with --tls-cert (MSM_STUB_RTSPS_LISTEN; default the --listen "
                       f"host, port {RTSPS_PORT})")
    limits: list[tuple[str, type, object, str]] = [
        ("max-connections", int, MAX_CONNECTIONS, "viewer connections of the whole stub"),
        ("max-connections-per-client", int, MAX_CONNECTIONS_PER_CLIENT, "viewer connections from one address"),
        ("max-sessions-per-connection", int, MAX_SESSIONS_PER_CONNECTION, "RTSP sessions on one connection "
         "(453 past it)"),
        ("header-timeout", float, HEADER_TIMEOUT, "seconds to complete a request after its first byte, and "
         "the RTSPS handshake"),
        ("idle-timeout", float, IDLE_CONNECTION_TIMEOUT, "seconds a connection without a session may stay "
         "silent"),
        ("write-timeout", float, WRITE_TIMEOUT, "seconds a connection may leave its answers unread"),
    ]
    for flag, kind, default, what in limits:
        env = "MSM_STUB_" + flag.upper().replace("-", "_")
        group.add_argument(f"--{flag}", type=kind, default=_env(env, str(default)),
                           metavar="N" if kind is int else "SECONDS", help=f"{what} ({env}; default {default})")
    group.add_argument("--metrics-listen", default=_env("MSM_STUB_METRICS_LISTEN", "127.0.0.1:9091"),
                       metavar="HOST:PORT", help="Prometheus /metrics: limit hits, connections, sessions "
                       "(MSM_STUB_METRICS_LISTEN; default 127.0.0.1:9091; 'off' to disable)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = parse_args(argv)
        config = stub_config(opts)
        check_tls_arguments(opts)
        setup_logging(opts.log_level)
    except (ValueError, ConfigError) as exc:
        print(f"msm-stub: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(config, opts))


def stub_config(opts: argparse.Namespace) -> StubConfig:
    """The stub's settings from parsed flags (ConfigError names a bad one)."""
    # --control is a gRPC target (dns:///, unix: and the like are fine), so only
    # the address this stub binds is parsed here.
    listen = parse_host_port(opts.listen, what="--listen", default_host="0.0.0.0")
    rtsps = parse_host_port(opts.rtsps_listen or format_host_port(listen.host, RTSPS_PORT), what="--rtsps-listen",
                            default_host=listen.host)
    metrics = "" if opts.metrics_listen in ("", "off") else opts.metrics_listen
    if metrics:
        parse_host_port(metrics, what="--metrics-listen", default_host="127.0.0.1")
    pod_id = f"{opts.namespace}/{opts.pod}" if opts.pod else socket.gethostname()
    config = StubConfig(
        control_address=opts.control, listen_host=listen.host, listen_port=listen.port,
        media_host=opts.media_host or opts.pod_ip or "127.0.0.1", node=opts.node, pod=opts.pod,
        namespace=opts.namespace, pod_ip=opts.pod_ip, stub_id=f"stub-{pod_id}",
        session_timeout=opts.session_timeout, users_file=opts.users_file, auth_realm=opts.auth_realm,
        allow_basic=opts.allow_basic, tls_cert=opts.tls_cert, tls_key=opts.tls_key, rtsps_host=rtsps.host,
        rtsps_port=rtsps.port, max_connections=opts.max_connections,
        max_connections_per_client=opts.max_connections_per_client,
        max_sessions_per_connection=opts.max_sessions_per_connection, header_timeout=opts.header_timeout,
        idle_timeout=opts.idle_timeout, write_timeout=opts.write_timeout, metrics_listen=metrics)
    check_config(config)
    return config


async def _run(config: StubConfig, opts: argparse.Namespace) -> int:
    stop = stop_event()
    boot: Bootstrap | None = None
    try:
        # In a pod: a certificate naming this pod, from the control plane, for the pod's token.
        tls, boot = await workload_tls(opts, config.control_address, Role.STUB, "msm-stub")
        stub = Stub(replace(config, tls=tls))
        await stub.start()
    except OSError as exc:
        print(f"msm-stub: error: cannot listen on {_listens(config)}: {exc.strerror or exc}", file=sys.stderr)
        return await _stopped(boot)
    except MsmError as exc:
        print(f"msm-stub: error: {exc}", file=sys.stderr)
        return await _stopped(boot)
    await stop.wait()
    await stub.stop()
    await _stopped(boot)
    return 0


def _listens(config: StubConfig) -> str:
    """The addresses the stub binds, for an error that cannot say which one failed."""
    where = [f"{format_host_port(config.listen_host, config.listen_port)} (RTSP)"]
    if config.tls_cert:
        where.append(f"{format_host_port(config.rtsps_host or config.listen_host, config.rtsps_port)} (RTSPS)")
    if config.metrics_listen:
        where.append(f"{config.metrics_listen} (metrics)")
    return ", ".join(where)


async def _stopped(boot: Bootstrap | None) -> int:
    if boot is not None:
        await boot.stop()
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
