"""``msm-webhook``: serve the sidecar-injecting admission webhook over HTTPS.

Every flag has an ``MSM_*`` environment variable; a flag wins over the environment. A bad value
or an unusable certificate is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from msm.sdk.errors import MsmError
from msm.webhook.errors import ConfigError
from msm.webhook.media import MAX_GID, MEDIA_GID
from msm.webhook.review import (
    BOOTSTRAP_PORT,
    DEFAULT_CONTROL_PLANE,
    DEFAULT_MESH_NAMESPACE,
    DEFAULT_TOKEN_AUDIENCE,
    DEFAULT_TOKEN_EXPIRATION,
    DEFAULT_TRUST_DOMAIN,
    MAX_TRUST_BUNDLE,
    InjectConfig,
)
from msm.webhook.server import ReloadingTLS, WebhookServer

log = logging.getLogger("webhook")

# flag destination -> environment variable
ENVIRONMENT = {
    "host": "MSM_WEBHOOK_HOST",
    "port": "MSM_WEBHOOK_PORT",
    "tls_cert": "MSM_TLS_CERT",
    "tls_key": "MSM_TLS_KEY",
    "stub_image": "MSM_STUB_IMAGE",
    "control_plane": "MSM_CONTROL_PLANE",
    "bootstrap": "MSM_BOOTSTRAP",
    "mesh_namespace": "MSM_MESH_NAMESPACE",
    "trust_bundle": "MSM_TRUST_BUNDLE",
    "trust_domain": "MSM_TRUST_DOMAIN",
    "token_audience": "MSM_TOKEN_AUDIENCE",
    "token_expiration": "MSM_TOKEN_EXPIRATION",
    "insecure_stubs": "MSM_INSECURE_STUBS",
    "media_gid": "MSM_MEDIA_GID",
    "log_level": "MSM_LOG_LEVEL",
}
DEFAULTS = {
    "host": "0.0.0.0",
    "port": "8443",
    "control_plane": DEFAULT_CONTROL_PLANE,
    "bootstrap": "",
    "mesh_namespace": DEFAULT_MESH_NAMESPACE,
    "trust_bundle": "",
    "trust_domain": DEFAULT_TRUST_DOMAIN,
    "token_audience": DEFAULT_TOKEN_AUDIENCE,
    "token_expiration": str(DEFAULT_TOKEN_EXPIRATION),
    "insecure_stubs": "",
    "media_gid": str(MEDIA_GID),
    "log_level": "info",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="msm-webhook",
        description="Mutating admission webhook (admission.k8s.io/v1) that adds the msm stub sidecar "
        "to Pods annotated or labelled sidecar.mediastreamingmesh.io/inject: \"true\", and the node proxy's "
        "media socket directory (/run/msm/media, MSM_PROXY) to Pods annotated "
        "media.mediastreamingmesh.io/memif: \"true\". Serves "
        "POST /mutate and GET /healthz over HTTPS and reloads the certificate when its files change.",
        epilog="Each flag can also be set in the environment: "
        + ", ".join(f"--{dest.replace('_', '-')}={env}" for dest, env in ENVIRONMENT.items())
        + ". Flags win over the environment.",
    )
    parser.add_argument("--host", metavar="ADDR", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", metavar="PORT", help="HTTPS port (default 8443; 0 picks a free one)")
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) to serve (required)")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of that certificate (required)")
    parser.add_argument("--stub-image", metavar="IMAGE", help="image of the injected stub container (required)")
    parser.add_argument("--control-plane", metavar="HOST:PORT",
                        help=f"control plane gRPC address given to the stub (default {DEFAULT_CONTROL_PLANE})")
    parser.add_argument("--bootstrap", metavar="HOST:PORT",
                        help=f"the control plane's certificate bootstrap port given to the stub (default the "
                        f"--control-plane host, port {BOOTSTRAP_PORT})")
    parser.add_argument("--mesh-namespace", metavar="NAMESPACE",
                        help=f"the mesh's own namespace, never injected (default {DEFAULT_MESH_NAMESPACE})")
    parser.add_argument("--trust-bundle", metavar="FILE",
                        help="the mesh CA's certificate (the chart's trust-bundle ConfigMap), handed to each stub")
    parser.add_argument("--trust-domain", metavar="DOMAIN", help=f"default {DEFAULT_TRUST_DOMAIN}")
    parser.add_argument("--token-audience", metavar="AUDIENCE",
                        help=f"audience of the stub's projected token (default {DEFAULT_TOKEN_AUDIENCE})")
    parser.add_argument("--token-expiration", metavar="SECONDS",
                        help=f"lifetime of the stub's projected token (default {DEFAULT_TOKEN_EXPIRATION})")
    parser.add_argument("--insecure-stubs", action="store_const", const="1",
                        help="inject stubs with --insecure (plaintext, no identity): test clusters only")
    parser.add_argument("--media-gid", metavar="GID",
                        help="the proxy's group, added to the supplementalGroups of pods annotated "
                        f"media.mediastreamingmesh.io/memif (default {MEDIA_GID}; 0: none)")
    parser.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)")
    return parser


def inject_config(values: dict[str, str]) -> InjectConfig:
    """The stub the webhook injects, from :func:`settings` (ConfigError names a bad one)."""
    bundle = ""
    if values["trust_bundle"]:
        try:
            with open(values["trust_bundle"], encoding="ascii") as f:
                bundle = f.read(MAX_TRUST_BUNDLE + 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the trust bundle {values['trust_bundle']}: {exc}") from exc
    expiration = values["token_expiration"]
    if not expiration.isascii() or not expiration.isdigit():
        raise ConfigError(f"token expiration must be seconds, got {expiration!r}")
    gid = values["media_gid"]
    if not gid.isascii() or not gid.isdigit() or int(gid) > MAX_GID:
        raise ConfigError(f"media gid must be a group id 0-{MAX_GID}, got {gid!r}")
    return InjectConfig(stub_image=values["stub_image"], control_plane=values["control_plane"],
                        bootstrap=values["bootstrap"], mesh_namespace=values["mesh_namespace"], trust_bundle_pem=bundle,
                        trust_domain=values["trust_domain"], token_audience=values["token_audience"],
                        token_expiration=int(expiration),
                        insecure_stubs=values["insecure_stubs"].lower() in ("1", "true"), media_gid=int(gid))


def settings(opts: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """Flags over environment over defaults; ConfigError names whatever is missing."""
    values: dict[str, str] = {}
    for dest, env in ENVIRONMENT.items():
        value = getattr(opts, dest)
        if value is None:
            value = environ.get(env) or DEFAULTS.get(dest)
        if value is None:
            raise ConfigError(f"--{dest.replace('_', '-')} (or {env}) is required")
        values[dest] = value
    return values


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ConfigError(f"port must be 0-65535, got {text!r}")
    return int(text)


def _log_level(text: str) -> int:
    level = logging.getLevelName(text.upper())
    if text.lower() not in ("debug", "info", "warning", "error") or not isinstance(level, int):
        raise ConfigError(f"log level must be debug, info, warning or error, got {text!r}")
    return level


def config_warnings(config: InjectConfig) -> list[str]:
    if config.insecure_stubs:
        return ["--insecure-stubs: injected stubs talk plaintext gRPC and prove no identity"]
    if not config.trust_bundle_pem:
        return ["no --trust-bundle: injected stubs cannot check the control plane and will not start"]
    return []


async def serve(server: WebhookServer, host: str, port: int, warnings: Sequence[str] = ()) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    await server.start(host, port)
    log.info("msm-webhook listening on %s", server.url)
    for warning in warnings:   # after the first line, which says where it listens
        log.warning("%s", warning)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("msm-webhook stopping")
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = build_parser().parse_args(argv)
        values = settings(opts, os.environ)
        port = _port(values["port"])
        level = _log_level(values["log_level"])
        config = inject_config(values)
        tls = ReloadingTLS(values["tls_cert"], values["tls_key"])
    except MsmError as exc:  # ConfigError, CertificateError: one line and exit status 2
        print(f"msm-webhook: error: {exc.reason}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(WebhookServer(config, tls), values["host"], port, config_warnings(config)))
    except OSError as exc:
        print(f"msm-webhook: error: cannot listen on {values['host']}:{port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
