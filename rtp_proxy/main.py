"""``msm-proxy``: one RTP proxy (a DaemonSet pod on the host network, in Kubernetes)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from msm.media_config import MediaConfig, load_media_file
from msm.runtime.hostport import parse_host_port
from msm.runtime.process import setup_logging, stop_event
from msm.sdk.errors import ConfigError, MsmError
from msm.security.bootstrap import Bootstrap, add_tls_arguments, check_tls_arguments, workload_tls
from msm.security.identity import Role
from msm.security.tls import TlsFiles

from .media.agent import add_media_arguments, start_media_agent
from .media.bridges import BridgeSet
from .media.metrics import MediaCollector, fill_stats
from .media.plane import MediaNode, add_media_plane, open_endpoints
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
    parser.add_argument("--media-host-alt", default=_env("MSM_HOST_IP_ALT", ""), metavar="ADDR",
                        help="the node's address of the other IP family: flows bind it too (same ports) for "
                        "viewers of that family (MSM_HOST_IP_ALT; default: ::1 for 127.0.0.1, :: for 0.0.0.0 "
                        "and the reverse, none for another address)")
    parser.add_argument("--control", default=_env("MSM_CONTROL_PLANE", "127.0.0.1:9000"),
                        help="control plane gRPC HOST:PORT (MSM_CONTROL_PLANE)")
    parser.add_argument("--metrics-listen", default=_env("MSM_METRICS_LISTEN", "0.0.0.0:9090"),
                        help="Prometheus /metrics HOST:PORT ('' to disable)")
    parser.add_argument("--port-range", default=_env("MSM_PORT_RANGE", "30000-39999"), metavar="LOW-HIGH")
    parser.add_argument("--log-level", default=_env("MSM_LOG_LEVEL", "info"))
    parser.add_argument("--fabric-provider", default=_env("MSM_FABRIC_PROVIDER", "tcp;ofi_rxm"),
                        help="libfabric providers for group frames between proxies, comma-separated: tcp;ofi_rxm "
                        "(between nodes), shm (proxies on one host); 'none' for none (MSM_FABRIC_PROVIDER)")
    parser.add_argument("--fabric-address", default=_env("MSM_FABRIC_ADDRESS", ""), metavar="HOST[:PORT]",
                        help="where the tcp;ofi_rxm endpoint binds and is reached (default the media host, "
                        "any port; MSM_FABRIC_ADDRESS); a fixed port keeps a restarted proxy's address")
    parser.add_argument("--fabric-max-frame", default=_env("MSM_FABRIC_MAX_FRAME", str(8 << 20)), metavar="BYTES",
                        help="largest group frame between proxies (MSM_FABRIC_MAX_FRAME, default 8 MiB)")
    parser.add_argument("--fabric-credits", default=_env("MSM_FABRIC_CREDITS", "4"), metavar="N",
                        help="frames in flight from each peer (MSM_FABRIC_CREDITS)")
    parser.add_argument("--fabric-peers", default=_env("MSM_FABRIC_PEERS", "4"), metavar="N",
                        help="other proxies one endpoint exchanges frames with; receive memory is "
                        "max frame x credits x peers per provider (MSM_FABRIC_PEERS)")
    add_media_arguments(parser)
    parser.add_argument("--media-config", default=_env("MSM_MEDIA_CONFIG", ""), metavar="FILE",
                        help="groups and ST 2110 bridges this proxy runs: a YAML or JSON file of msm up's media: "
                        "section (its groups: and bridges:, or a media: key holding them; MSM_MEDIA_CONFIG)")
    add_tls_arguments(parser)
    return parser.parse_args(argv)


def port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    if not (low.isascii() and low.isdigit() and high.isascii() and high.isdigit()
            and 1024 <= int(low) < int(high) < 65536):
        raise ConfigError(f"bad --port-range {text!r}")
    return int(low), int(high)


@dataclass(frozen=True)
class FabricSettings:
    providers: list[str]
    host: str
    port: int
    max_frame: int
    credits: int
    peers: int


def fabric_settings(opts: argparse.Namespace) -> FabricSettings:
    """The libfabric endpoints' settings from the flags (ConfigError names a bad one)."""
    providers = [p.strip() for p in opts.fabric_provider.split(",") if p.strip() and p.strip() != "none"]
    host, port = opts.media_host, 0
    if opts.fabric_address:   # HOST:PORT (PORT 0: any), or a HOST alone
        text = opts.fabric_address if ":" in opts.fabric_address else f"{opts.fabric_address}:0"
        parsed = parse_host_port(text, what="--fabric-address", default_host=opts.media_host)
        host, port = parsed.host, parsed.port
    numbers = {}
    for flag, low, high in (("max_frame", 1, 256 << 20), ("credits", 1, 64), ("peers", 1, 1024)):
        text = str(getattr(opts, f"fabric_{flag}"))
        if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            raise ConfigError(f"--fabric-{flag.replace('_', '-')} must be {low}..{high}, not {text!r}")
        numbers[flag] = int(text)
    return FabricSettings(providers, host, port, **numbers)


def check_addresses(opts: argparse.Namespace) -> None:
    """Every address this proxy binds or advertises parses (ConfigError names the first that does not).

    --control is a gRPC target (dns:///, unix: and the like are fine) and is left to gRPC.
    """
    parse_host_port(opts.listen, what="--listen", default_host="0.0.0.0")
    if opts.advertise:
        parse_host_port(opts.advertise, what="--advertise")
    if opts.metrics_listen:
        parse_host_port(opts.metrics_listen, what="--metrics-listen", default_host="0.0.0.0")
    alt_media_host(opts.media_host, opts.media_host_alt)


def alt_media_host(media_host: str, alt: str) -> str | None:
    """--media-host-alt checked: an address of the other IP family than --media-host's (None: derived)."""
    if not alt:
        return None
    try:
        ip, media = ipaddress.ip_address(alt), ipaddress.ip_address(media_host)
    except ValueError:
        raise ConfigError(f"--media-host-alt {alt!r} and --media-host {media_host!r} must be IP addresses") from None
    if ip.version == media.version:
        raise ConfigError(f"--media-host-alt {alt} must be of the other IP family than --media-host {media_host}")
    return str(ip)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        ports = port_range(opts.port_range)
        check_addresses(opts)
        fabric_settings(opts)
        check_tls_arguments(opts)
        media_config = load_media_file(opts.media_config) if opts.media_config else MediaConfig()
        setup_logging(opts.log_level)
    except ConfigError as exc:
        print(f"msm-proxy: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(opts, ports, media_config))


async def start_proxy(opts: argparse.Namespace, ports: tuple[int, int],
                      tls: TlsFiles | None) -> tuple[RtpProxy, MediaNode]:
    """The proxy and its part in groups (MediaPlane on the DataPlane port), started and registering."""
    fabric = fabric_settings(opts)
    endpoints = open_endpoints(fabric.providers, fabric.host, fabric.port, max_frame=fabric.max_frame,
                               credits=fabric.credits, max_peers=fabric.peers)
    media = MediaNode(opts.node, endpoints=endpoints, control=opts.control, tls=tls)
    proxy = RtpProxy(node=opts.node, media_host=opts.media_host, grpc_listen=opts.listen,
                     control_address=opts.control, port_range=ports,
                     metrics_listen=opts.metrics_listen or None, advertise=opts.advertise, tls=tls,
                     services=[lambda server: add_media_plane(media, server)],
                     media_host_alt=alt_media_host(opts.media_host, opts.media_host_alt))
    try:
        await proxy.start()
        await proxy.start_metrics()
    except BaseException:
        await media.stop()
        await proxy.stop()
        raise
    if proxy.agent is not None:
        media.start(proxy.agent.registered, proxy.agent.hello.proxy_id)
    else:
        media.start()
    return proxy, media


async def start_bridges(media: MediaNode, config: MediaConfig, media_dir: str) -> BridgeSet | None:
    """``--media-config``'s groups and bridges, started (an egress's SDP defaults to ``<media dir>/<name>.sdp``,
    none without ``--media-dir``); None when it declares neither."""
    if not config.groups and not config.bridges:
        return None
    bridges = BridgeSet(media, media_dir=Path(media_dir) if media_dir else None)
    await bridges.start(config.bridges, config.groups)   # each bridge logs what it does, or that it is not for here
    return bridges


async def _run(opts: argparse.Namespace, ports: tuple[int, int], media_config: MediaConfig) -> int:
    stop = stop_event()
    boot: Bootstrap | None = None
    proxy: RtpProxy | None = None
    media: MediaNode | None = None
    media_agent = None
    bridges: BridgeSet | None = None
    try:
        # In Kubernetes the certificate names the node the API server says this pod runs on.
        tls, boot = await workload_tls(opts, opts.control, Role.PROXY, "msm-proxy")
        proxy, media = await start_proxy(opts, ports, tls)
        media_agent = await start_media_agent(opts, media)
        bridges = await start_bridges(media, media_config, opts.media_dir)
        apps = media_agent.snapshot if media_agent is not None else None
        if proxy.metrics is not None:   # groups, fabric links, bridges and, with --media-dir, the agent's apps
            proxy.metrics.registry.register(MediaCollector(media, bridges, agent=apps))
        # The control plane's ListGroups carries the bridges and app connections, with or without /metrics.
        media.extra_stats = functools.partial(fill_stats, bridges=bridges, agent=apps)
    except (OSError, RuntimeError, MsmError) as exc:
        print(f"msm-proxy: error: {exc}", file=sys.stderr)
        if media_agent is not None:
            await media_agent.stop()
        if media is not None:
            await media.stop()
        if proxy is not None:
            await proxy.stop()
        if boot is not None:
            await boot.stop()
        return 1
    await stop.wait()
    if bridges is not None:
        await bridges.stop()
    if media_agent is not None:
        await media_agent.stop()
    await media.stop()
    await proxy.stop()
    if boot is not None:
        await boot.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
