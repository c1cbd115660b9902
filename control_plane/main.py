"""``msm-control-plane``: the per-cluster control plane (a Deployment in Kubernetes)."""

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

from .kubernetes import KubeClient, KubeError, KubernetesResolver
from .metrics import control_registry
from .resolver import ChainResolver, Resolver, RouteError, StaticResolver, parse_route
from .server import ControlPlaneServer
from .web import WebServer, create_app

log = logging.getLogger("msm.control_plane")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="msm-control-plane", description="The msm control plane: resolves streams (static routes "
        "and/or Kubernetes services), pools one upstream session per stream, programs the RTP proxies. "
        "Flags default to MSM_* variables.")
    parser.add_argument("--listen", default=_env("MSM_CONTROL_LISTEN", "0.0.0.0:9000"),
                        help="gRPC HOST:PORT (default 0.0.0.0:9000)")
    parser.add_argument("--web-listen", default=_env("MSM_WEB_LISTEN", "0.0.0.0:8080"),
                        help="live page, /api/streams and /metrics HOST:PORT ('' to disable)")
    parser.add_argument("--route", action="append", default=[], metavar="NAME=URL",
                        help="a static route (repeatable; also MSM_ROUTES=a=url,b=url)")
    parser.add_argument("--kubernetes", action="store_true", default=_env("MSM_KUBERNETES", "") == "1",
                        help="resolve rtsp://<service>[.<namespace>]:<port>/... through the Kubernetes API")
    parser.add_argument("--kubeconfig", default=_env("KUBECONFIG", ""),
                        help="kubeconfig file (default: in-cluster service account)")
    parser.add_argument("--linger", type=float, default=float(_env("MSM_LINGER", "5")),
                        help="seconds an upstream stays open after its last viewer (default 5)")
    parser.add_argument("--log-level", default=_env("MSM_LOG_LEVEL", "info"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = parse_args(argv)
        parse_host_port(opts.listen, what="--listen", default_host="0.0.0.0")
        if opts.web_listen:
            parse_host_port(opts.web_listen, what="--web-listen", default_host="0.0.0.0")
        setup_logging(opts.log_level)
        resolver, kube = build_resolver(opts)
    except (ValueError, ConfigError, RouteError, KubeError) as exc:
        print(f"msm-control-plane: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(opts, resolver, kube))


def build_resolver(opts: argparse.Namespace) -> tuple[Resolver, KubernetesResolver | None]:
    """Static routes (MSM_ROUTES, then --route), chained with Kubernetes services when asked."""
    static = StaticResolver()
    env_routes = [r for r in _env("MSM_ROUTES", "").split(",") if r.strip()]
    for text in env_routes + opts.route:
        static.add(parse_route(text))
    kube = KubernetesResolver(KubeClient.from_environment(opts.kubeconfig or None)) if opts.kubernetes else None
    return (ChainResolver(static, kube) if kube else static), kube


async def _run(opts: argparse.Namespace, resolver: Resolver, kube: KubernetesResolver | None) -> int:
    server = ControlPlaneServer(resolver, listen=opts.listen, linger=opts.linger)
    web = None
    stop = stop_event()
    try:
        if kube is not None:
            await kube.start()
        await server.start()
        if opts.web_listen:
            web = WebServer(create_app(server.control, registry=control_registry(server.control)))
            await web.start(opts.web_listen)
    except (OSError, RuntimeError, MsmError) as exc:
        print(f"msm-control-plane: error: {exc}", file=sys.stderr)
        await server.stop()
        return 1
    await stop.wait()
    if web is not None:
        await web.stop()
    await server.stop()
    if kube is not None:
        await kube.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
