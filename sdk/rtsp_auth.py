"""RTSP authentication, sans-IO: Digest (RFC 7616, and the RFC 2069 form) and Basic (RFC 7617).

Client side, towards cameras: :func:`parse_challenges` reads the ``WWW-Authenticate``
values of a 401, :func:`strongest` picks the best challenge msm can answer (Digest
SHA-256, then Digest MD5, then Basic) and :func:`authorization` computes the
``Authorization`` value for one request. Digest answers with ``qop=auth`` (with
``nc``/``cnonce``) when the server offers it, and in the RFC 2069 form (no qop) that
most IP cameras and GStreamer's RTSP server use when it does not.

Server side, for viewers: :class:`ServerAuth` issues challenges and checks
``Authorization`` values against a user table (:func:`load_users`). Nonces are
stateless: the hex time of issue and an HMAC-SHA256 over it with a random secret of
the server's own, so nothing is stored per client and a restart invalidates every
nonce; a nonce older than ``nonce_lifetime`` gets a new challenge with ``stale=true``.
With ``qop=auth`` the server remembers the highest ``nc`` each nonce was used with, so
a captured request replayed within the nonce's lifetime gets a new challenge instead
of access; the RFC 2069 form (no ``qop``, which live555 and VLC send) has no counter
and can be replayed within the lifetime.

Nothing here touches a socket or a clock it was not given. Malformed headers raise
:class:`~msm.sdk.errors.RtspError` (400); missing or wrong credentials raise
:class:`~msm.sdk.errors.Unauthorized` (401) carrying a ``WWW-Authenticate`` header.
Passwords never appear in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from msm.sdk.errors import ConfigError, RtspError, Unauthorized

__all__ = [
    "Challenge",
    "ServerAuth",
    "authorization",
    "load_users",
    "parse_challenges",
    "parse_params",
    "strongest",
]

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
# Unquoted values: a token, plus '/' ':' which cameras put in unquoted nonces.
_BARE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z/:]+"
_PARAM_RE = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*({_QUOTED}|{_BARE})")
_TOKEN_RE = re.compile(_TOKEN)
_TOKEN68_RE = re.compile(r"([A-Za-z0-9\-._~+/]+=*)[ \t]*(?:,|$)")
_SPACE = " \t"

# Digest algorithm name (upper case) -> hashlib name.
_DIGESTS = {"MD5": "md5", "SHA-256": "sha256"}
MAX_HEADER = 4096


def _hash(algorithm: str, text: str) -> str:
    return hashlib.new(_DIGESTS[algorithm], text.encode("utf-8")).hexdigest()


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` value: its scheme and parameters.

    ``params`` has lower-case names and unquoted values; ``token68`` is set instead
    for schemes that carry a single token.
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str = ""

    @property
    def kind(self) -> str:
        return self.scheme.lower()

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def algorithm(self) -> str:
        """The Digest algorithm, upper case; MD5 when the challenge names none."""
        return self.params.get("algorithm", "MD5").upper()

    @property
    def qop(self) -> tuple[str, ...]:
        return tuple(q.strip().lower() for q in self.params.get("qop", "").split(",") if q.strip())

    @property
    def stale(self) -> bool:
        return self.params.get("stale", "").lower() == "true"

    def strength(self) -> int:
        """How good a choice this is for msm: 0 = cannot answer it."""
        if self.kind == "basic":
            return 1
        if self.kind != "digest" or "nonce" not in self.params:
            return 0
        base = self.algorithm.removesuffix("-SESS")
        if base not in _DIGESTS or (self.qop and "auth" not in self.qop):
            return 0
        return 3 if base == "SHA-256" else 2


class _Scanner:
    """A cursor over one header value; every fault is an RtspError."""

    def __init__(self, text: str) -> None:
        if len(text) > MAX_HEADER:
            raise RtspError("authentication header is too long", status=400)
        self.text = text
        self.pos = 0

    def skip(self, chars: str = _SPACE) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def token(self) -> str:
        match = _TOKEN_RE.match(self.text, self.pos)
        if match is None:
            raise RtspError(f"malformed authentication header near position {self.pos}", status=400)
        self.pos = match.end()
        return match.group(0)

    def param_ahead(self) -> bool:
        return _PARAM_RE.match(self.text, self.pos) is not None

    def params(self) -> dict[str, str]:
        """``name=value`` pairs up to the end or to the start of the next challenge."""
        out: dict[str, str] = {}
        while not self.at_end():
            match = _PARAM_RE.match(self.text, self.pos)
            if match is None:
                raise RtspError(f"malformed authentication parameter near position {self.pos}", status=400)
            name = match.group(1).lower()
            if name in out:
                raise RtspError(f"authentication parameter {name!r} given twice", status=400)
            out[name] = _unquote(match.group(2))
            self.pos = match.end()
            self.skip()
            if self.at_end():
                break
            if self.text[self.pos] != ",":
                raise RtspError(f"malformed authentication header near position {self.pos}", status=400)
            self.skip(_SPACE + ",")
            if not self.param_ahead():
                break       # the next challenge starts here
        return out


def _parse_value(value: str) -> list[Challenge]:
    scanner = _Scanner(value)
    out: list[Challenge] = []
    while True:
        scanner.skip(_SPACE + ",")
        if scanner.at_end():
            return out
        scheme = scanner.token()
        if not scanner.at_end() and scanner.text[scanner.pos] not in _SPACE + ",":
            raise RtspError(f"malformed authentication scheme near position {scanner.pos}", status=400)
        scanner.skip()
        if scanner.at_end() or scanner.text[scanner.pos] == ",":
            out.append(Challenge(scheme))
            continue
        if not scanner.param_ahead():
            token68 = _TOKEN68_RE.match(scanner.text, scanner.pos)
            if token68 is None:
                raise RtspError(f"malformed authentication header near position {scanner.pos}", status=400)
            scanner.pos = token68.end(1)
            out.append(Challenge(scheme, token68=token68.group(1)))
            continue
        out.append(Challenge(scheme, scanner.params()))


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in ``values`` (the ``WWW-Authenticate`` fields of a 401, in order).

    One field may hold several challenges separated by commas (RFC 7235 section 4.1).
    Raises :class:`RtspError` for a value that does not follow the grammar.
    """
    out: list[Challenge] = []
    for value in values:
        if not isinstance(value, str):
            raise RtspError("authentication header must be text", status=400)
        out.extend(_parse_value(value))
    return out


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """An ``Authorization`` value as (scheme, parameters); Basic's token is under ``""``."""
    challenges = _parse_value(value)
    if len(challenges) != 1:
        raise RtspError("an Authorization header carries exactly one credential", status=400)
    found = challenges[0]
    params = dict(found.params)
    if found.token68:
        params[""] = found.token68
    return found.scheme, params


def strongest(challenges: Iterable[Challenge]) -> Challenge | None:
    """The challenge msm answers best (Digest SHA-256 > Digest MD5 > Basic), or None."""
    best: Challenge | None = None
    for challenge in challenges:
        if challenge.strength() > (best.strength() if best else 0):
            best = challenge
    return best


def digest_response(algorithm: str, username: str, realm: str, password: str, method: str, uri: str,
                    nonce: str, *, qop: str = "", nc: str = "", cnonce: str = "") -> str:
    """The Digest ``response`` value (RFC 7616 section 3.4.1; RFC 2069 when ``qop`` is empty)."""
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _DIGESTS:
        raise Unauthorized(f"unsupported Digest algorithm {algorithm!r}")
    ha1 = _hash(base, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _hash(base, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(base, f"{method}:{uri}")
    if qop:
        return _hash(base, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hash(base, f"{ha1}:{nonce}:{ha2}")


def authorization(challenge: Challenge | Sequence[Challenge], username: str, password: str, method: str,
                  uri: str, *, cnonce: str | None = None, nc: int = 1) -> str:
    """The ``Authorization`` value answering ``challenge`` (the strongest, given several).

    ``uri`` is the request URI exactly as on the request line; ``nc`` counts the
    requests made with the same nonce (from 1). Raises :class:`Unauthorized` when
    no challenge can be answered, :class:`~msm.sdk.errors.ConfigError` for a user
    name that cannot go in a header.
    """
    chosen = challenge if isinstance(challenge, Challenge) else strongest(challenge)
    if chosen is None or chosen.strength() == 0:
        offered = ", ".join(sorted({c.scheme for c in ([challenge] if isinstance(challenge, Challenge)
                                                        else challenge)})) or "nothing"
        raise Unauthorized(f"no supported authentication scheme offered (offered: {offered})")
    if re.search(r"[\x00-\x1f\x7f]", username + password):
        raise ConfigError("credentials contain control characters")
    if chosen.kind == "basic":
        if ":" in username:
            raise ConfigError("a Basic user name cannot contain ':'")
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return f"Basic {token}"
    qop = "auth" if chosen.qop else ""
    algorithm = chosen.algorithm
    if (qop or algorithm.endswith("-SESS")) and cnonce is None:
        cnonce = secrets.token_hex(16)
    nc_text = f"{nc:08x}"
    nonce = chosen.params["nonce"]
    response = digest_response(algorithm, username, chosen.realm, password, method, uri, nonce,
                               qop=qop, nc=nc_text, cnonce=cnonce or "")
    fields = [f"username={_quote(username)}", f"realm={_quote(chosen.realm)}", f"nonce={_quote(nonce)}",
              f"uri={_quote(uri)}", f"response={_quote(response)}"]
    if "algorithm" in chosen.params:
        fields.append(f"algorithm={algorithm}")
    if "opaque" in chosen.params:
        fields.append(f"opaque={_quote(chosen.params['opaque'])}")
    if qop:
        fields += [f"qop={qop}", f"nc={nc_text}", f"cnonce={_quote(cnonce or '')}"]
    return "Digest " + ", ".join(fields)


_MAC_HEX = 32   # hex characters of the nonce's HMAC

#: Nonces whose highest ``nc`` the server remembers. Only requests that already
#: proved the password add one, and a nonce lives ``nonce_lifetime`` (60 s): 8192
#: covers well over a hundred new authenticated viewers a second. When it is full
#: the oldest is forgotten and every nonce issued up to it counts as stale, so
#: forgetting never reopens a replay (the client just gets a fresh challenge).
MAX_TRACKED_NONCES = 8192


class ServerAuth:
    """Checks viewers' ``Authorization`` headers against ``users`` (name -> password).

    ``algorithms`` are the Digest algorithms offered, strongest first; Basic is
    offered (last) only with ``allow_basic``. Raises :class:`Unauthorized` whose
    ``headers`` carry one ``WWW-Authenticate``: ``Refused.headers`` is a dict and
    holds one value per name, so it is the strongest challenge; a server that can
    send several header fields should send every value of :meth:`challenges`
    (ffmpeg answers only MD5, and picks the last Digest challenge it was sent).
    """

    def __init__(self, users: Mapping[str, str], realm: str, *,
                 algorithms: Sequence[str] = ("SHA-256", "MD5"), allow_basic: bool = False,
                 nonce_lifetime: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.algorithms = tuple(a.upper() for a in algorithms)
        unknown = [a for a in self.algorithms if a not in _DIGESTS]
        if unknown or (not self.algorithms and not allow_basic):
            raise ConfigError(f"unsupported Digest algorithms {unknown}" if unknown
                              else "no authentication scheme enabled")
        if '"' in realm or re.search(r"[\x00-\x1f\x7f]", realm):
            raise ConfigError("the realm cannot contain quotes or control characters")
        self.users = dict(users)
        self.realm = realm
        self.allow_basic = allow_basic
        self.nonce_lifetime = nonce_lifetime
        self.clock = clock
        self._secret = secrets.token_bytes(32)
        self._dummy = secrets.token_hex(16)   # compared against for unknown users
        self._counts: OrderedDict[str, int] = OrderedDict()   # nonce -> highest nc seen (qop=auth)
        self._forgotten_stamp = -1   # nonces stamped at or before this were forgotten: stale

    # -- nonces ------------------------------------------------------------------------------
    def _mac(self, stamp: str) -> str:
        data = f"{stamp}:{self.realm}".encode()
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()[:_MAC_HEX]

    def nonce(self) -> str:
        stamp = f"{max(int(self.clock() * 1000), 0):x}"
        return stamp + self._mac(stamp)

    def _nonce_state(self, nonce: str) -> str:
        """"fresh", "stale" or "bad"."""
        stamp, mac = nonce[:-_MAC_HEX], nonce[-_MAC_HEX:]
        if not stamp or not re.fullmatch(r"[0-9a-f]{1,16}", stamp):
            return "bad"
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return "bad"
        age = self.clock() * 1000 - int(stamp, 16)
        if age < 0:
            return "bad"
        if int(stamp, 16) <= self._forgotten_stamp and nonce not in self._counts:
            return "stale"
        return "fresh" if age <= self.nonce_lifetime * 1000 else "stale"

    def _count_is_new(self, nonce: str, nc_text: str) -> bool:
        """Record ``nc`` for ``nonce``; False when it is not above the highest seen (a replay)."""
        try:
            nc = int(nc_text, 16)
        except ValueError:
            return False
        if nc <= self._counts.get(nonce, 0):
            return False
        self._counts[nonce] = nc
        self._counts.move_to_end(nonce)
        while len(self._counts) > MAX_TRACKED_NONCES:
            oldest, _ = self._counts.popitem(last=False)
            self._forgotten_stamp = max(self._forgotten_stamp, int(oldest[:-_MAC_HEX], 16))
        return True

    # -- challenges --------------------------------------------------------------------------
    def challenges(self, *, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` values, strongest first, each with a fresh nonce."""
        nonce = self.nonce()
        out = []
        for algorithm in self.algorithms:
            value = f'Digest realm={_quote(self.realm)}, nonce="{nonce}", algorithm={algorithm}, qop="auth"'
            out.append(value + (", stale=true" if stale else ""))
        if self.allow_basic:
            out.append(f"Basic realm={_quote(self.realm)}")
        return out

    def refuse(self, reason: str, *, stale: bool = False) -> Unauthorized:
        return Unauthorized(reason, headers={"WWW-Authenticate": self.challenges(stale=stale)[0]})

    # -- checking ----------------------------------------------------------------------------
    def check(self, method: str, uri: str, authorization: str | None) -> str:
        """The authenticated user name; :class:`Unauthorized` (401) or :class:`RtspError` (400) otherwise."""
        if not authorization:
            raise self.refuse("authentication required")
        scheme, params = parse_params(authorization)
        if scheme.lower() == "basic" and self.allow_basic:
            return self._check_basic(params.get("", ""))
        if scheme.lower() == "digest" and self.algorithms:
            return self._check_digest(method, uri, params)
        raise self.refuse(f"authentication scheme {scheme!r} is not accepted")

    def _password_matches(self, username: str, candidate: Callable[[str], str], given: str) -> bool:
        known = username in self.users
        expected = candidate(self.users[username] if known else self._dummy)
        return hmac.compare_digest(expected.encode(), given.encode()) and known

    def _check_basic(self, token: str) -> str:
        try:
            username, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise RtspError("malformed Basic credentials", status=400) from None
        if not sep or not self._password_matches(username, lambda p: p, password):
            raise self.refuse("wrong user name or password")
        return username

    def _check_digest(self, method: str, uri: str, params: Mapping[str, str]) -> str:
        missing = [n for n in ("username", "realm", "nonce", "uri", "response") if n not in params]
        if missing:
            raise RtspError(f"Digest credentials lack {', '.join(missing)}", status=400)
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in self.algorithms:
            raise self.refuse(f"Digest algorithm {algorithm!r} is not accepted")
        qop = params.get("qop", "").lower()
        if qop not in ("", "auth") or (qop and not ("nc" in params and "cnonce" in params)):
            raise RtspError("Digest credentials have a bad qop, nc or cnonce", status=400)
        if params["realm"] != self.realm:
            raise self.refuse("wrong realm")
        if params["uri"] != uri:
            raise self.refuse("Digest uri does not match the request")
        username, nonce = params["username"], params["nonce"]

        def response(password: str) -> str:
            return digest_response(algorithm, username, self.realm, password, method, uri, nonce,
                                   qop=qop, nc=params.get("nc", ""), cnonce=params.get("cnonce", ""))

        matches = self._password_matches(username, response, params["response"].lower())
        state = self._nonce_state(nonce)
        if not matches or state == "bad":
            raise self.refuse("wrong user name or password")
        if state == "stale":
            raise self.refuse("nonce expired", stale=True)
        if qop and not self._count_is_new(nonce, params["nc"]):
            raise self.refuse("nonce count replayed", stale=True)
        return username


def load_users(path: str | Path) -> dict[str, str]:
    """Users from a file: one ``user:password`` per line (UTF-8).

    The user name is everything before the first ``:`` and may not be empty; the
    password is the rest of the line (it may contain ``:``; nothing is stripped but
    the line ending). Blank lines and lines starting with ``#`` are ignored. A
    malformed line is a :class:`ConfigError` naming its line number, never its text.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"cannot read users file {path}: {reason}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or re.search(r"[\x00-\x1f\x7f\"]", name):
            raise ConfigError(f"users file {path}, line {number}: expected user:password")
        if name in users:
            raise ConfigError(f"users file {path}, line {number}: user {name!r} given twice")
        users[name] = password
    return users
