"""The media agent's socket chores: its listening socket, a reply sent without waiting, an app's name."""

from __future__ import annotations

import array
import os
import socket
from typing import Any

from msm.sdk.errors import ConfigError, MsmError
from msm.sdk.media_agent import encode_message

__all__ = ["MAX_APP_NAME", "app_name", "listen_socket", "send_message"]

#: Characters of an app's name kept (from its hello): a table column and a page cell, not a document.
MAX_APP_NAME = 64


def app_name(value: object) -> str:
    """The name an app gave in its hello, as shown by the page and ``msm streams``: printable characters
    only (no control or escape sequences reach a terminal), at most :data:`MAX_APP_NAME`; "" for none.
    Markup stays as text: the page escapes it."""
    if not isinstance(value, str):
        return ""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:MAX_APP_NAME]).strip()


def listen_socket(path: str) -> socket.socket:
    """Binds under a temporary name, sets 0660, then renames: never reachable with looser rights."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        for stale in (tmp, path):
            if os.path.exists(stale):
                os.unlink(stale)
        sock.bind(tmp)
        os.chmod(tmp, 0o660)
        os.rename(tmp, path)
        sock.listen(64)  # backlog: connects beyond this wait in the kernel, then are refused
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"media agent: cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


def send_message(sock: socket.socket, message: dict[str, Any], fd: int = -1) -> bool:
    """Sends one message (with ``fd`` as SCM_RIGHTS when given); False if it could not go now."""
    ancillary = [] if fd < 0 else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    try:
        sock.sendmsg([encode_message(message)], ancillary, socket.MSG_DONTWAIT)
    except (OSError, MsmError):
        return False  # an app that does not read its replies loses them; its socket's end cleans up
    return True
