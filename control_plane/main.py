"""``msm-control-plane``: the per-cluster control plane (a Deployment in Kubernetes)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from msm.runtime.hostport import parse_host_port
from msm.runtime.process import setup_logging, stop_event
from msm.sdk.errors import ConfigError, MsmError
from msm.security.bootstrap import add_tls_arguments, check_tls_arguments
from msm.security.ca import CertificateAuthority
from msm.security.identity import Identity, Role
from msm.security.issuer import CertificateIssuer
from msm.security.tls import Rotator, TlsFiles

from .kubernetes import KubeClient, KubeError, KubernetesResolver
from .metrics import control_registry
from .multicast import DEFAULT_POOL, DEFAULT_TTL, MAX_GROUPS
from .planner import MAX_LEGS_PER_STUB, MAX_TRACKS, REKEY_INTERVAL, PlannerSettings
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
    parser.add_argument("--bootstrap-listen", default=_env("MSM_BOOTSTRAP_LISTEN", "127.0.0.1:9002"),
                        help="HOST:PORT of the certificate bootstrap port: server-only TLS, IssueCertificate "
                        "alone, for workloads that have no certificate yet ('' to disable; default "
                        "127.0.0.1:9002; the chart listens on 0.0.0.0:9002)")
    parser.add_argument("--web-listen", default=_env("MSM_WEB_LISTEN", "127.0.0.1:8080"),
                        help="live page, /api/streams and /metrics HOST:PORT ('' to disable; default "
                        "127.0.0.1:8080: the page shows every stream, so it is not on the network unless asked)")
    parser.add_argument("--route", action="append", default=[], metavar="NAME=URL",
                        help="a static route (repeatable; also MSM_ROUTES=a=url,b=url)")
    parser.add_argument("--kubernetes", action="store_true", default=_env("MSM_KUBERNETES", "") == "1",
                        help="resolve rtsp://<service>[.<namespace>]:<port>/... through the Kubernetes API")
    parser.add_argument("--kubeconfig", default=_env("KUBECONFIG", ""),
                        help="kubeconfig file (default: in-cluster service account)")
    parser.add_argument("--linger", type=float, default=float(_env("MSM_LINGER", "5")),
                        help="seconds an upstream stays open after its last viewer (default 5)")
    parser.add_argument("--srtp", action=argparse.BooleanOptionalAction,
                        default=_env("MSM_SRTP", "1").lower() not in ("0", "false", "no", "off"),
                        help="SRTP on every relay leg between nodes (MSM_SRTP, default on; legs to viewers "
                        "stay plain RTP); --no-srtp sends media between nodes in the clear")
    parser.add_argument("--srtp-profile", default=_env("MSM_SRTP_PROFILE", "AEAD_AES_128_GCM"),
                        choices=("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"),
                        help="SRTP profile of relay legs when both proxies can do it, else AES_CM_128_HMAC_SHA1_80 "
                        "(MSM_SRTP_PROFILE, default AEAD_AES_128_GCM)")
    parser.add_argument("--srtp-rekey", type=float, default=float(_env("MSM_SRTP_REKEY", str(REKEY_INTERVAL))),
                        metavar="SECONDS", help=f"seconds between a relay's SRTP keys (MSM_SRTP_REKEY, default "
                        f"{REKEY_INTERVAL:g})")
    parser.add_argument("--max-tracks", type=int, default=int(_env("MSM_MAX_TRACKS", str(MAX_TRACKS))),
                        help=f"the most tracks a source may have; more is refused with 453 (MSM_MAX_TRACKS, "
                        f"default {MAX_TRACKS})")
    parser.add_argument("--max-legs-per-stub", type=int,
                        default=int(_env("MSM_MAX_LEGS_PER_STUB", str(MAX_LEGS_PER_STUB))),
                        help=f"legs one stub may hold across all streams; more SETUPs get 453 "
                        f"(MSM_MAX_LEGS_PER_STUB, default {MAX_LEGS_PER_STUB})")
    _multicast_arguments(parser)
    parser.add_argument("--log-level", default=_env("MSM_LOG_LEVEL", "info"))
    add_tls_arguments(parser, bootstrap=False)
    parser.add_argument("--ca-dir", default=_env("MSM_CA_DIR", ""),
                        help="the mesh CA (ca-cert.pem, ca-key.pem) this control plane signs workload "
                        "certificates with; without --tls-dir it also issues its own (MSM_CA_DIR)")
    parser.add_argument("--token-audience", default=_env("MSM_TOKEN_AUDIENCE", "msm"),
                        help="audience workloads' projected tokens must be for (default msm)")
    parser.add_argument("--proxy-service-account", action="append", metavar="NAMESPACE/NAME",
                        default=[a for a in _env("MSM_PROXY_SERVICE_ACCOUNT", "").split(",") if a],
                        help="service account whose pods may get proxy certificates (repeatable; "
                        "MSM_PROXY_SERVICE_ACCOUNT=ns/name,...)")
    parser.add_argument("--namespace", default=_env("MSM_POD_NAMESPACE", "msm-system"),
                        help="this control plane's namespace, in its own identity (MSM_POD_NAMESPACE)")
    parser.add_argument("--service-account", default=_env("MSM_SERVICE_ACCOUNT", "msm-control-plane"),
                        help="this control plane's service account, in its own identity (MSM_SERVICE_ACCOUNT)")
    return parser.parse_args(argv)


def _multicast_arguments(parser: argparse.ArgumentParser) -> None:
    """Where routes that allow multicast get their groups (see control_plane/multicast.py)."""
    parser.add_argument("--multicast-pool", default=_env("MSM_MULTICAST_POOL", DEFAULT_POOL), metavar="CIDR",
                        help=f"IPv4 multicast network the groups of multicast routes are leased from "
                        f"(MSM_MULTICAST_POOL, default {DEFAULT_POOL})")
    parser.add_argument("--multicast-ttl", type=int, default=int(_env("MSM_MULTICAST_TTL", str(DEFAULT_TTL))),
                        help=f"TTL of multicast packets, 1-255 (MSM_MULTICAST_TTL, default {DEFAULT_TTL})")
    parser.add_argument("--max-multicast-groups", type=int,
                        default=int(_env("MSM_MAX_MULTICAST_GROUPS", str(MAX_GROUPS))),
                        help=f"multicast groups leased at once; past it a multicast SETUP gets 453 "
                        f"(MSM_MAX_MULTICAST_GROUPS, default {MAX_GROUPS})")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = parse_args(argv)
        parse_host_port(opts.listen, what="--listen", default_host="0.0.0.0")
        if opts.bootstrap_listen:
            parse_host_port(opts.bootstrap_listen, what="--bootstrap-listen", default_host="0.0.0.0")
        if opts.web_listen:
            parse_host_port(opts.web_listen, what="--web-listen", default_host="0.0.0.0")
        check_tls_arguments(opts, also="--ca-dir")
        proxy_accounts(opts)
        settings = planner_settings(opts)
        setup_logging(opts.log_level)
        resolver, kube = build_resolver(opts)
    except (ValueError, ConfigError, RouteError, KubeError) as exc:
        print(f"msm-control-plane: error: {exc}", file=sys.stderr)
        return 2
    if not settings.srtp:
        log.warning("--no-srtp: media between nodes is plain RTP; anyone on the node network can read it")
    return asyncio.run(_run(opts, resolver, kube, settings))


def planner_settings(opts: argparse.Namespace) -> PlannerSettings:
    """The planner's tunables from the flags (ConfigError names an impossible one)."""
    return PlannerSettings(linger=opts.linger, max_tracks=opts.max_tracks, max_legs_per_stub=opts.max_legs_per_stub,
                           srtp=opts.srtp,
                           srtp_profile=opts.srtp_profile, rekey_interval=opts.srtp_rekey,
                           multicast_pool=opts.multicast_pool, multicast_ttl=opts.multicast_ttl,
                           max_multicast_groups=opts.max_multicast_groups)


def proxy_accounts(opts: argparse.Namespace) -> list[tuple[str, str]]:
    accounts = []
    for text in opts.proxy_service_account:
        namespace, sep, name = text.strip().partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ConfigError(f"--proxy-service-account must be NAMESPACE/NAME, not {text!r}")
        accounts.append((namespace, name))
    return accounts


class Security:
    """The control plane's TLS files, and the issuer and rotator when it holds the CA."""

    def __init__(self, opts: argparse.Namespace, kube: KubernetesResolver | None) -> None:
        self.tls: TlsFiles | None = None
        self.issuer: CertificateIssuer | None = None
        self.rotator: Rotator | None = None
        if opts.insecure:
            log.warning("--insecure: plaintext gRPC; anyone who reaches %s can act as a stub or proxy", opts.listen)
            return
        # Helm's genCAWithKey names no trust domain in the CA: --trust-domain says it.
        ca = CertificateAuthority.load(opts.ca_dir, opts.trust_domain) if opts.ca_dir else None
        if opts.tls_dir:
            self.tls = TlsFiles(opts.tls_dir)
            self.tls.read()   # unusable files: one clear error now
        elif ca is not None:   # its own certificate, from its own CA, renewed at half lifetime
            self.rotator = Rotator(ca)
            self.tls = self.rotator.add(
                Identity(opts.trust_domain, opts.namespace, opts.service_account, Role.CONTROL_PLANE),
                TlsFiles(tempfile.mkdtemp(prefix="msm-control-plane-tls-")))
        if ca is not None and kube is not None:
            self.issuer = CertificateIssuer(ca, kube.client, opts.trust_domain, opts.token_audience,
                                            proxy_service_accounts=proxy_accounts(opts))
        elif ca is not None:
            log.warning("--ca-dir without --kubernetes: no workload can prove who it is, IssueCertificate "
                        "refuses every request")


def build_resolver(opts: argparse.Namespace) -> tuple[Resolver, KubernetesResolver | None]:
    """Static routes (MSM_ROUTES, then --route), chained with Kubernetes services when asked."""
    static = StaticResolver()
    env_routes = [r for r in _env("MSM_ROUTES", "").split(",") if r.strip()]
    for text in env_routes + opts.route:
        static.add(parse_route(text))
    kube = KubernetesResolver(KubeClient.from_environment(opts.kubeconfig or None)) if opts.kubernetes else None
    return (ChainResolver(static, kube) if kube else static), kube


async def _run(opts: argparse.Namespace, resolver: Resolver, kube: KubernetesResolver | None,
               settings: PlannerSettings) -> int:
    try:
        security = Security(opts, kube)
    except MsmError as exc:
        print(f"msm-control-plane: error: {exc}", file=sys.stderr)
        return 2
    # The bootstrap port only when there is something to bootstrap from (TLS and an issuer).
    bootstrap = opts.bootstrap_listen if security.tls is not None and security.issuer is not None else None
    server = ControlPlaneServer(resolver, listen=opts.listen, tls=security.tls, issuer=security.issuer,
                                bootstrap_listen=bootstrap or None, settings=settings)
    web = None
    stop = stop_event()
    try:
        if kube is not None:
            await kube.start()
        if security.rotator is not None:
            security.rotator.start()
        await server.start()
        if server.bootstrap is not None:
            log.info("certificate bootstrap (IssueCertificate only, server TLS) on %s", server.bootstrap.address)
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
    if security.rotator is not None:
        await security.rotator.stop()
    if kube is not None:
        await kube.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
