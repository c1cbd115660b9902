"""Run one end of a QUIC leg: ``python -m msm.rtp_proxy.quic send|receive ...``.

Sending node (the engine sends the leg to 127.0.0.1:RTP_PORT/RTCP_PORT, from SOURCE addresses)::

    python -m msm.rtp_proxy.quic send --tls-dir DIR --peer 10.0.0.2:4433 --peer-node node-b \\
        --source 127.0.0.1:40000 --source 127.0.0.1:40001 --rtp-port 5004 --rtcp-port 5005

Receiving node (delivers to the engine's leg ports)::

    python -m msm.rtp_proxy.quic receive --tls-dir DIR --listen 0.0.0.0:4433 \\
        --engine-rtp 127.0.0.1:30000 --engine-rtcp 127.0.0.1:30001

``DIR`` holds the proxy's ca.pem, cert.pem and key.pem (msm.security.tls.TlsFiles). The counters
are logged every ``--report`` seconds and at exit (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from msm.runtime.hostport import parse_host_port
from msm.sdk.errors import MsmError
from msm.security.tls import TlsFiles

from .leg import DEFAULT_MTU, QuicLegReceiver, QuicLegSender

log = logging.getLogger("msm.rtp_proxy.quic")


def _address(text: str) -> tuple[str, int]:
    try:
        parsed = parse_host_port(text)
    except MsmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return parsed.host, parsed.port


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msm.rtp_proxy.quic", description=__doc__.splitlines()[0])
    p.add_argument("--tls-dir", required=True, help="the proxy's TLS files (ca.pem, cert.pem, key.pem)")
    p.add_argument("--mtu", type=int, default=DEFAULT_MTU, help="UDP payload of the QUIC packets (path MTU - 48)")
    p.add_argument("--report", type=float, default=10.0, help="seconds between counter logs")
    sub = p.add_subparsers(dest="end", required=True)
    send = sub.add_parser("send", help="the sending node's end (QUIC client)")
    send.add_argument("--peer", type=_address, required=True, help="the receiving end's HOST:PORT")
    send.add_argument("--peer-node", required=True, help="the receiving proxy's node (its certificate's name)")
    send.add_argument("--source", type=_address, action="append", required=True,
                      help="an address the engine sends the leg from (repeat for RTP and RTCP)")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--rtp-port", type=int, default=0)
    send.add_argument("--rtcp-port", type=int, default=0)
    recv = sub.add_parser("receive", help="the receiving node's end (QUIC server)")
    recv.add_argument("--listen", type=_address, required=True)
    recv.add_argument("--engine-rtp", type=_address, required=True)
    recv.add_argument("--engine-rtcp", type=_address, required=True)
    return p


async def run(opts: argparse.Namespace) -> None:
    files = TlsFiles(opts.tls_dir)
    end: QuicLegSender | QuicLegReceiver
    if opts.end == "send":
        end = QuicLegSender(files, opts.peer, opts.peer_node, opts.source, host=opts.host, rtp_port=opts.rtp_port,
                            rtcp_port=opts.rtcp_port, mtu=opts.mtu)
        await end.start()
        log.info("QUIC leg to %s: RTP in on %s:%d, RTCP on %s:%d", opts.peer_node, opts.host, end.rtp_port,
                 opts.host, end.rtcp_port)
    else:
        end = QuicLegReceiver(files, opts.listen, opts.engine_rtp, opts.engine_rtcp, mtu=opts.mtu)
        await end.start()
        log.info("QUIC leg listening on port %d", end.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), opts.report)
            log.info("counters: %s", end.counters.as_dict())
    finally:
        await end.stop()


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(opts))
    except MsmError as exc:
        print(f"msm.rtp_proxy.quic: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
