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
import signal
import socket
import sys
from collections.abc import Sequence

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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = parse_args(argv)
    except ValueError as exc:
        print(f"msm-stub: error: {exc}", file=sys.stderr)
        return 2
    host, sep, port = opts.listen.rpartition(":")
    if not sep or not port.isdigit():
        print(f"msm-stub: error: --listen must be HOST:PORT, got {opts.listen!r}", file=sys.stderr)
        return 2
    level = logging.getLevelName(opts.log_level.upper())
    if not isinstance(level, int):
        print(f"msm-stub: error: unknown log level {opts.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    pod_id = f"{opts.namespace}/{opts.pod}" if opts.pod else socket.gethostname()
    config = StubConfig(control_address=opts.control, listen_host=host.strip("[]"), listen_port=int(port),
                        media_host=opts.media_host or opts.pod_ip or "127.0.0.1", node=opts.node,
                        pod=opts.pod, namespace=opts.namespace, pod_ip=opts.pod_ip,
                        stub_id=f"stub-{pod_id}", session_timeout=opts.session_timeout)

    async def run() -> int:
        stub = Stub(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stub.start()
        except OSError as exc:
            print(f"msm-stub: error: cannot listen on {opts.listen}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        await stop.wait()
        await stub.stop()
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
