"""``msm-proxy``: one RTP proxy (a DaemonSet pod on the host network, in Kubernetes)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    low, _, high = opts.port_range.partition("-")
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) < 65536):
        print(f"msm-proxy: error: bad --port-range {opts.port_range!r}", file=sys.stderr)
        return 2
    level = logging.getLevelName(opts.log_level.upper())
    if not isinstance(level, int):
        print(f"msm-proxy: error: unknown log level {opts.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    proxy = RtpProxy(node=opts.node, media_host=opts.media_host, grpc_listen=opts.listen,
                     control_address=opts.control, port_range=(int(low), int(high)),
                     metrics_listen=opts.metrics_listen or None, advertise=opts.advertise)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await proxy.start()
            await proxy.start_metrics()
        except (OSError, RuntimeError) as exc:
            print(f"msm-proxy: error: {exc}", file=sys.stderr)
            await proxy.stop()
            return 1
        await stop.wait()
        await proxy.stop()
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
