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

from msm.runtime.hostport import parse_host_port
from msm.runtime.process import setup_logging, stop_event
from msm.sdk.errors import ConfigError, MsmError
from msm.security.bootstrap import Bootstrap, add_tls_arguments, check_tls_arguments, workload_tls
from msm.security.identity import Role

from .app import Stub, StubConfig

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
                        help="RTSP HOST:PORT (default 0.0.0.0:8554)")
    parser.add_argument("--pod", default=_env("MSM_POD_NAME", ""), help="pod name (MSM_POD_NAME)")
    parser.add_argument("--namespace", default=_env("MSM_POD_NAMESPACE", ""), help="MSM_POD_NAMESPACE")
    parser.add_argument("--pod-ip", default=_env("MSM_POD_IP", ""), help="MSM_POD_IP")
    parser.add_argument("--node", default=_env("MSM_NODE_NAME", "local"), help="MSM_NODE_NAME")
    parser.add_argument("--media-host", default=_env("MSM_MEDIA_HOST", ""),
                        help="address of the stub's UDP bridges (default: the pod IP, else 127.0.0.1)")
    parser.add_argument("--session-timeout", type=int, default=int(_env("MSM_SESSION_TIMEOUT", "60")))
    parser.add_argument("--log-level", default=_env("MSM_LOG_LEVEL", "info"))
    add_tls_arguments(parser)
    return parser.parse_args(argv)


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
    pod_id = f"{opts.namespace}/{opts.pod}" if opts.pod else socket.gethostname()
    return StubConfig(control_address=opts.control, listen_host=listen.host, listen_port=listen.port,
                      media_host=opts.media_host or opts.pod_ip or "127.0.0.1", node=opts.node,
                      pod=opts.pod, namespace=opts.namespace, pod_ip=opts.pod_ip,
                      stub_id=f"stub-{pod_id}", session_timeout=opts.session_timeout)


async def _run(config: StubConfig, opts: argparse.Namespace) -> int:
    stop = stop_event()
    boot: Bootstrap | None = None
    try:
        # In a pod: a certificate naming this pod, from the control plane, for the pod's token.
        tls, boot = await workload_tls(opts, config.control_address, Role.STUB, "msm-stub")
        stub = Stub(config)
        stub.control.tls = tls   # read by ControlClient at each (re)connection
        await stub.start()
    except OSError as exc:
        print(f"msm-stub: error: cannot listen on {opts.listen}: {exc.strerror or exc}", file=sys.stderr)
        return await _stopped(boot)
    except MsmError as exc:
        print(f"msm-stub: error: {exc}", file=sys.stderr)
        return await _stopped(boot)
    await stop.wait()
    await stub.stop()
    await _stopped(boot)
    return 0


async def _stopped(boot: Bootstrap | None) -> int:
    if boot is not None:
        await boot.stop()
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
