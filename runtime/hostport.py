"""One HOST:PORT parser for every flag, setting and address msm reads.

Accepted forms: ``1.2.3.4:80``, ``[::1]:80``, ``name.example:80``, ``:80`` (the
caller's default host) and, where the caller allows it, a bare ``80``. A bare
IPv6 address without brackets is refused: ``::1:80`` cannot be split safely.
Every fault is a :class:`ConfigError` with a one-line message naming the setting.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from msm.sdk.errors import ConfigError

# RFC 1123 host names (labels of letters, digits and hyphens); underscores are
# accepted because Kubernetes and Docker names sometimes carry them.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A parsed address; ``host`` carries no brackets (``::1``, not ``[::1]``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets so the result parses again."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, *, what: str = "address", default_host: str | None = None,
                    allow_bare_port: bool = False) -> HostPort:
    """Parse ``text`` as HOST:PORT; ``what`` names the setting in the error message.

    ``default_host`` fills in ``:PORT`` (and a bare ``PORT`` when ``allow_bare_port``);
    without it, both forms are errors.
    """
    value = text.strip()
    wanted = "HOST:PORT or PORT" if allow_bare_port else "HOST:PORT"

    def bad(why: str = "") -> ConfigError:
        return ConfigError(f"{what} must be {wanted}, got {text!r}" + (f" ({why})" if why else ""))

    if allow_bare_port and value.isascii() and value.isdigit():
        host, port_text = "", value
    elif value.startswith("["):
        inner, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise bad("an IPv6 address in brackets needs :PORT after them")
        try:
            ipaddress.IPv6Address(inner.split("%", 1)[0])
        except ValueError:
            raise bad(f"{inner!r} is not an IPv6 address") from None
        host = inner
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise bad()
        if ":" in host:
            raise bad("put an IPv6 address in brackets: [ADDR]:PORT")
        if host and not _HOSTNAME.match(host):
            raise bad(f"{host!r} is not a host name or address")
    port = _port(port_text, bad)
    if not host:
        if default_host is None:
            raise bad("the host is missing")
        host = default_host
    return HostPort(host, port)


def _port(text: str, bad: Callable[[str], ConfigError]) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise bad("the port must be 0-65535")
    return int(text)


def other_family_host(host: str) -> str | None:
    """The address of the other IP family that stands for the same place as ``host``.

    Loopback for loopback (``127.0.0.1`` and ``::1``), any for any (``0.0.0.0`` and ``::``);
    ``None`` for anything else (a specific address has no counterpart one can derive).
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.is_unspecified:
        return "0.0.0.0" if ip.version == 6 else "::"
    if ip.is_loopback:
        return "127.0.0.1" if ip.version == 6 else "::1"
    return None
