"""What every msm entry point does the same way: log set-up and stopping on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from msm.sdk.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def log_level(text: str) -> int:
    """The numeric level for ``debug``, ``info``, ``warning``, ``error`` (any case)."""
    level = logging.getLevelName(str(text).upper())
    if not isinstance(level, int):
        raise ConfigError(f"unknown log level {text!r} (debug, info, warning, error)")
    return level


def setup_logging(text: str) -> None:
    """Log to stderr at ``text``'s level; gRPC's own chatter only from WARNING up."""
    level = log_level(text)
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT)
    logging.getLogger("grpc").setLevel(max(level, logging.WARNING))


def stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call from inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
