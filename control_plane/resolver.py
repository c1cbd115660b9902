"""Resolve the URL a viewer asked for to the upstream stream it names.

Errors are leaves of msm's one tree (``msm.sdk.errors``): an unknown URL is
:class:`~msm.sdk.errors.NotFound` (404; re-exported here), a bad route
definition is :class:`RouteError`, a :class:`~msm.sdk.errors.ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, unquote_to_bytes, urlsplit

from msm.runtime.redact import redact_url
from msm.sdk.errors import ConfigError, NotFound, Refused

__all__ = ["NO_ASKER", "Asker", "BadPath", "ChainResolver", "NotFound", "Resolver", "Route", "RouteError",
           "StaticResolver", "normalise_path", "parse_route", "parse_switch", "stream_name"]

# A viewer's path goes to an upstream server on the viewer's behalf; anything that could
# make it name something else there is refused. Longer paths than this are no stream's.
MAX_PATH = 1024
_SAFE = "!$&'()*+,;=:@~"   # RFC 3986 pchar besides unreserved; '/' is never in a segment

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*(/[A-Za-z0-9._~-]+)*$")


class RouteError(ConfigError):
    """A route definition is invalid (bad name or URL)."""


class BadPath(Refused):
    """A viewer's URL path that could name something other than a stream upstream (400)."""

    status = 400


def normalise_path(path: str) -> str:
    """The viewer's path, percent-decoded and checked: ``/seg/seg`` (or ``/``), or :class:`BadPath`.

    Refused: ``.`` and ``..`` segments (``%2e%2e`` too, once decoded), an encoded ``/`` or
    ``\\`` or control character, bytes that are not UTF-8, empty segments inside the path,
    and anything over ``MAX_PATH``. Each segment is then percent-encoded again where needed,
    so the upstream sees exactly the segments checked here.
    """
    if len(path) > MAX_PATH:
        raise BadPath(f"path longer than {MAX_PATH} characters")
    raw = path.split("/")
    segments = raw[1:] if raw and raw[0] == "" else raw
    if segments and segments[-1] == "":
        segments = segments[:-1]   # one trailing slash is harmless
    out = []
    for segment in segments:
        try:
            text = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            raise BadPath("path is not UTF-8") from None
        if text in ("", ".", ".."):
            raise BadPath(f"path segment {text!r} is not allowed")
        if any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise BadPath("path segments may not hold '/', '\\' or control characters")
        out.append(text)
    return "/" + "/".join(quote(text, safe=_SAFE) for text in out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str                # path viewers use: rtsp://<mesh>/<name>
    url: str                 # upstream RTSP URL
    transport: str = ""      # "udp", "tcp", "multicast" (the server's group: multicast in) or "" (udp, then tcp)
    node: str = ""           # node the source lives on ("" = any)
    namespace: str = ""      # the source pod, when known: its stub opens the upstream
    pod: str = ""
    # Viewers may ask RTP/AVP;multicast: each node sends the stream once to a group of the
    # control plane's pool, and DESCRIBE announces it (c=IN IP4 group/ttl). Off: 461.
    multicast: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise RouteError(f"invalid route name {self.name!r}")
        parts = urlsplit(self.url)
        if parts.scheme == "file" and parts.path.endswith(".sdp") and not parts.netloc:
            return    # an SDP file's stream (multicast in, control_plane/sdp_source.py)
        if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
            raise RouteError(f"route {self.name}: not an rtsp:// URL: {redact_url(self.url)!r}")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise RouteError(f"route {self.name}: bad port in {redact_url(self.url)!r}") from exc
        if self.transport not in ("", "udp", "tcp", "multicast"):
            raise RouteError(f"route {self.name}: transport must be udp, tcp or multicast, not {self.transport!r}")


def parse_route(text: str) -> Route:
    """Parse ``name=rtsp://host:port/path[#transport=tcp][&multicast=on]`` (the CLI form)."""
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise RouteError(f"route must look like NAME=rtsp://host:port/path, got {text!r}")
    transport = ""
    multicast = False
    if "#" in url:
        url, _, fragment = url.partition("#")
        for option in fragment.split("&"):
            key, _, value = option.partition("=")
            if key == "transport":
                transport = value
            elif key == "multicast":
                multicast = parse_switch(value, f"route {name}: multicast")
            else:
                raise RouteError(f"route {name}: unknown option {option!r} (transport=udp|tcp, multicast=on|off)")
    return Route(name=name.strip().strip("/"), url=url.strip(), transport=transport, multicast=multicast)


def parse_switch(value: object, what: str) -> bool:
    """``on``/``true``/``yes``/``1`` or ``off``/``false``/``no``/``0`` (or a YAML bool); else RouteError."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0", ""):
        return False
    raise RouteError(f"{what} must be on or off, not {str(value)[:20]!r}")


def stream_name(url: str) -> str:
    """The stream name a viewer URL addresses: its path, without slashes at the ends."""
    return urlsplit(url).path.strip("/")


@dataclass(frozen=True, slots=True, kw_only=True)
class Asker:
    """Who asks: the viewer's stub, and where its app was connecting (SO_ORIGINAL_DST)."""

    namespace: str = ""
    original_dst: str = ""


NO_ASKER = Asker()


class Resolver(Protocol):
    async def resolve(self, url: str, asker: Asker = NO_ASKER) -> Route: ...


class ChainResolver:
    """Try resolvers in order; the first that knows the URL wins."""

    def __init__(self, *resolvers: Resolver) -> None:
        self.resolvers = list(resolvers)

    async def resolve(self, url: str, asker: Asker = NO_ASKER) -> Route:
        errors = []
        for resolver in self.resolvers:
            try:
                return await resolver.resolve(url, asker)
            except NotFound as exc:
                errors.append(str(exc))
        raise NotFound("; ".join(errors) or f"no route for {url}")


class StaticResolver:
    """Routes given by flags or the config file."""

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})

    def add(self, route: Route) -> None:
        self.routes[route.name] = route

    async def resolve(self, url: str, asker: Asker = NO_ASKER) -> Route:
        name = stream_name(url)
        route = self.routes.get(name)
        if route is None:
            raise NotFound(f"no route for {name!r}")
        return route
