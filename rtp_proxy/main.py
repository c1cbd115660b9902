"""``msm-proxy``: one RTP proxy (a DaemonSet pod on the host network, in Kubernetes)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from msm.runtime.hostport import parse_host_port
from msm.runtime.process import setup_logging, stop_event
from msm.sdk.errors import ConfigError, MsmError
from msm.security.bootstrap import Bootstrap, add_tls_arguments, check_tls_arguments, workload_tls
from msm.security.identity import Role

from .service import RtpProxy

log = logging.getLogger("msm.proxy")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="msm-proxy", description="The msm RTP proxy: forwards, fans out and measures RTP flows "
        "programmed by the control plane over its DataPlane gRPC. Flags default to MSM_* variables.")
    parser.add_argument("--node", default=_env("MSM_NODE_NAME", "local"), help="node name (MSM_NODE_NAME)")
    parser.add_argument("--listen", default=_env("MSM_PROXY_LISTEN", "0.0.0.0:9001"),
                        help="DataPlane gRPC HOST:PORT (default 0.0.0.0:9001)")
    parser.add_argument("--advertise", default=_env("MSM_PROXY_ADVERTISE", ""),
                        help="DataPlane address the control plane dials (default MEDIA_HOST:PORT)")
    parser.add_argument("--media-host", default=_env("MSM_HOST_IP", "127.0.0.1"),
                        help="address RTP sockets bind to and are reached at (MSM_HOST_IP)")
    parser.add_argument("--control", default=_env("MSM_CONTROL_PLANE", "127.0.0.1:9000"),
                        help="control plane gRPC HOST:PORT (MSM_CONTROL_PLANE)")
    parser.add_argument("--metrics-listen", default=_env("MSM_METRICS_LISTEN", "0.0.0.0:9090"),
                        help="Prometheus /metrics HOST:PORT ('' to disable)")
    parser.add_argument("--port-range", default=_env("MSM_PORT_RANGE", "30000-39999"), metavar="LOW-HIGH")
    parser.add_argument("--log-level", default=_env("MSM_LOG_LEVEL", "info"))
    add_tls_arguments(parser)
    return parser.parse_args(argv)


def port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    if not (low.isascii() and low.isdigit() and high.isascii() and high.isdigit()
            and 1024 <= int(low) < int(high) < 65536):
        raise ConfigError(f"bad --port-range {text!r}")
    return int(low), int(high)


def check_addresses(opts: argparse.Namespace) -> None:
    """Every address this proxy binds or advertises parses (ConfigError names the first that does not).

    --control is a gRPC target (dns:///, unix: and the like are fine) and is left to gRPC.
    """
    parse_host_port(opts.listen, what="--listen", default_host="0.0.0.0")
    if opts.advertise:
        parse_host_port(opts.advertise, what="--advertise")
    if opts.metrics_listen:
        parse_host_port(opts.metrics_listen, what="--metrics-listen", default_host="0.0.0.0")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        ports = port_range(opts.port_range)
        check_addresses(opts)
        check_tls_arguments(opts)
        setup_logging(opts.log_level)
    except ConfigError as exc:
        print(f"msm-proxy: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(opts, ports))


async def _run(opts: argparse.Namespace, ports: tuple[int, int]) -> int:
    stop = stop_event()
    boot: Bootstrap | None = None
    proxy: RtpProxy | None = None
    try:
        # In Kubernetes the certificate names the node the API server says this pod runs on.
        tls, boot = await workload_tls(opts, opts.control, Role.PROXY, "msm-proxy")
        proxy = RtpProxy(node=opts.node, media_host=opts.media_host, grpc_listen=opts.listen,
                         control_address=opts.control, port_range=ports,
                         metrics_listen=opts.metrics_listen or None, advertise=opts.advertise, tls=tls)
        await proxy.start()
        await proxy.start_metrics()
    except (OSError, RuntimeError, MsmError) as exc:
        print(f"msm-proxy: error: {exc}", file=sys.stderr)
        if proxy is not None:
            await proxy.stop()
        if boot is not None:
            await boot.stop()
        return 1
    await stop.wait()
    await proxy.stop()
    if boot is not None:
        await boot.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
