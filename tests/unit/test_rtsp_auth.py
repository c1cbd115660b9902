"""RTSP authentication (msm.sdk.rtsp_auth): RFC 7616 vectors, round trips, malformed input."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msm.sdk.errors import ConfigError, RtspError, Unauthorized
from msm.sdk.rtsp_auth import (
    Challenge,
    ServerAuth,
    authorization,
    load_users,
    parse_challenges,
    parse_params,
    strongest,
)

# RFC 7616 section 3.9.1
RFC_REALM = "http-auth@example.org"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def _rfc_challenge(algorithm: str) -> str:
    return (f'Digest realm="{RFC_REALM}", qop="auth, auth-int", algorithm={algorithm}, '
            f'nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"')


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_example(algorithm: str, expected: str) -> None:
    challenges = parse_challenges([_rfc_challenge(algorithm)])
    value = authorization(challenges, "Mufasa", "Circle of Life", "GET", "/dir/index.html",
                          cnonce=RFC_CNONCE, nc=1)
    scheme, params = parse_params(value)
    assert scheme == "Digest"
    assert params["response"] == expected
    assert params["nc"] == "00000001" and params["qop"] == "auth" and params["cnonce"] == RFC_CNONCE
    assert params["opaque"] == RFC_OPAQUE and params["uri"] == "/dir/index.html"
    assert params["algorithm"] == algorithm


def test_rfc7616_both_challenges_pick_sha256() -> None:
    challenges = parse_challenges([_rfc_challenge("SHA-256") + ", " + _rfc_challenge("MD5")])
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    chosen = strongest(challenges)
    assert chosen is not None and chosen.algorithm == "SHA-256"
    # ...and in separate fields, MD5 first
    chosen = strongest(parse_challenges([_rfc_challenge("MD5"), _rfc_challenge("SHA-256")]))
    assert chosen is not None and chosen.algorithm == "SHA-256"


def test_rfc2069_form_gstreamer_style() -> None:
    """No qop: response = H(HA1:nonce:HA2), no nc/cnonce sent."""
    import hashlib
    challenge = parse_challenges(['Digest realm="GStreamer RTSP Server", nonce="abc123"'])
    value = authorization(challenge, "user", "pass", "DESCRIBE", "rtsp://127.0.0.1:8554/test")
    _, params = parse_params(value)

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()
    ha1 = md5("user:GStreamer RTSP Server:pass")
    ha2 = md5("DESCRIBE:rtsp://127.0.0.1:8554/test")
    assert params["response"] == md5(f"{ha1}:abc123:{ha2}")
    assert "qop" not in params and "nc" not in params and "cnonce" not in params


def test_basic_only_when_offered_and_digest_preferred() -> None:
    basic = parse_challenges(['Basic realm="cam"'])
    value = authorization(basic, "admin", "Super:Secret", "OPTIONS", "rtsp://h/x")
    assert base64.b64decode(value.split()[1]) == b"admin:Super:Secret"
    both = parse_challenges(['Basic realm="cam"', 'Digest realm="cam", nonce="n"'])
    assert authorization(both, "a", "b", "OPTIONS", "rtsp://h/x").startswith("Digest ")


def test_nothing_supported_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="Negotiate"):
        authorization(parse_challenges(["Negotiate"]), "a", "b", "OPTIONS", "rtsp://h/x")
    with pytest.raises(Unauthorized):
        authorization(parse_challenges(['Digest realm="r", nonce="n", algorithm=SHA-512']),
                      "a", "b", "OPTIONS", "rtsp://h/x")


def test_token68_and_multiple_in_one_field() -> None:
    parsed = parse_challenges(['Newauth abc==, Basic realm="x, y"', ""])
    assert parsed == [Challenge("Newauth", token68="abc=="), Challenge("Basic", {"realm": "x, y"})]
    quoted = parse_challenges([r'Digest realm="a \"b\"", nonce=n/1:2, stale=TRUE'])
    assert quoted[0].realm == 'a "b"' and quoted[0].params["nonce"] == "n/1:2" and quoted[0].stale


@pytest.mark.parametrize("value", [
    'Digest realm="unterminated', "Digest =x", 'Digest realm="a" nonce="b"', "Digest realm=a, realm=b",
    "Dig\x01est", "Digest realm=\"a\"junk", "x" * 5000, "Basic a=b=c d",
])
def test_malformed_challenges_raise_rtsp_error(value: str) -> None:
    with pytest.raises(RtspError):
        parse_challenges([value])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('Digest Basic realm=nonce",\\ \t=/abcXYZ019\x00é')), max_size=80))
def test_any_header_parses_or_raises_rtsp_error(value: str) -> None:
    try:
        parsed = parse_challenges([value])
    except RtspError:
        return
    for challenge in parsed:
        if challenge.strength():
            authorization(challenge, "u", "p", "OPTIONS", "rtsp://h/")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_server_check_any_authorization_is_401_400_or_user(value: str) -> None:
    auth = ServerAuth({"u": "p"}, "msm")
    try:
        auth.check("OPTIONS", "rtsp://h/", value)
    except (Unauthorized, RtspError):
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _answer(auth: ServerAuth, user: str, password: str, *, index: int = 0, stale: bool = False,
            uri: str = "rtsp://h/cam") -> str:
    challenge = parse_challenges([auth.challenges(stale=stale)[index]])
    return authorization(challenge, user, password, "DESCRIBE", uri)


@pytest.mark.parametrize("index", [0, 1])
def test_round_trip_digest(index: int) -> None:
    auth = ServerAuth({"viewer": "s3cret:x", "other": "y"}, "msm mesh")
    assert auth.check("DESCRIBE", "rtsp://h/cam", _answer(auth, "viewer", "s3cret:x", index=index)) == "viewer"


def test_round_trip_rfc2069_client_and_challenge_headers() -> None:
    auth = ServerAuth({"viewer": "pw"}, "msm", algorithms=("MD5",))
    nonce = parse_challenges(auth.challenges())[0].params["nonce"]
    gst_like = authorization(Challenge("Digest", {"realm": "msm", "nonce": nonce}),
                             "viewer", "pw", "PLAY", "rtsp://h/cam")
    assert auth.check("PLAY", "rtsp://h/cam", gst_like) == "viewer"
    with pytest.raises(Unauthorized) as info:
        auth.check("PLAY", "rtsp://h/cam", None)
    assert info.value.headers["WWW-Authenticate"].startswith('Digest realm="msm"')


@pytest.mark.parametrize(("user", "password", "method", "uri"), [
    ("viewer", "wrong", "DESCRIBE", "rtsp://h/cam"),
    ("nobody", "pw", "DESCRIBE", "rtsp://h/cam"),
    ("viewer", "pw", "DESCRIBE", "rtsp://h/other"),
])
def test_wrong_credentials_are_401_without_the_password(user: str, password: str, method: str, uri: str) -> None:
    auth = ServerAuth({"viewer": "pw"}, "msm")
    value = _answer(auth, user, password, uri=uri)
    with pytest.raises(Unauthorized) as info:
        auth.check(method, "rtsp://h/cam", value)
    assert "pw" not in str(info.value) and "WWW-Authenticate" in info.value.headers


def test_forged_and_foreign_nonces_are_refused() -> None:
    auth = ServerAuth({"viewer": "pw"}, "msm")
    other = ServerAuth({"viewer": "pw"}, "msm")
    with pytest.raises(Unauthorized):
        auth.check("DESCRIBE", "rtsp://h/cam", _answer(other, "viewer", "pw"))
    forged = Challenge("Digest", {"realm": "msm", "nonce": "1" + "0" * 32, "qop": "auth",
                                  "algorithm": "SHA-256"})
    with pytest.raises(Unauthorized):
        auth.check("DESCRIBE", "rtsp://h/cam", authorization(forged, "viewer", "pw", "DESCRIBE", "rtsp://h/cam"))


def test_expired_nonce_is_stale() -> None:
    clock = Clock()
    auth = ServerAuth({"viewer": "pw"}, "msm", nonce_lifetime=60.0, clock=clock)
    value = _answer(auth, "viewer", "pw")
    clock.now += 61
    with pytest.raises(Unauthorized) as info:
        auth.check("DESCRIBE", "rtsp://h/cam", value)
    assert parse_challenges([info.value.headers["WWW-Authenticate"]])[0].stale
    assert auth.check("DESCRIBE", "rtsp://h/cam", _answer(auth, "viewer", "pw")) == "viewer"


def test_basic_server_side() -> None:
    auth = ServerAuth({"viewer": "pw"}, "msm", allow_basic=True)
    basic = parse_challenges(auth.challenges())[-1]
    assert basic.kind == "basic"
    assert auth.check("OPTIONS", "*", authorization(basic, "viewer", "pw", "OPTIONS", "*")) == "viewer"
    with pytest.raises(Unauthorized):
        auth.check("OPTIONS", "*", authorization(basic, "viewer", "nope", "OPTIONS", "*"))
    with pytest.raises(RtspError):
        auth.check("OPTIONS", "*", "Basic !!!notbase64")
    strict = ServerAuth({"viewer": "pw"}, "msm")
    with pytest.raises(Unauthorized, match="not accepted"):
        strict.check("OPTIONS", "*", authorization(basic, "viewer", "pw", "OPTIONS", "*"))


@pytest.mark.parametrize("value", [
    'Digest username="viewer"', 'Digest username="v", realm="msm", nonce="n", uri="u", response="r", qop=auth',
    "Digest realm=", "Basic a b",
])
def test_malformed_authorization_is_400(value: str) -> None:
    with pytest.raises(RtspError):
        ServerAuth({"viewer": "pw"}, "msm").check("OPTIONS", "*", value)


def test_bad_server_settings() -> None:
    with pytest.raises(ConfigError):
        ServerAuth({}, "msm", algorithms=("SHA-512",))
    with pytest.raises(ConfigError):
        ServerAuth({}, 'bad"realm')
    with pytest.raises(ConfigError):
        authorization(parse_challenges(['Basic realm="x"']), "a:b", "c", "OPTIONS", "*")


def test_load_users(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# viewers\n\nalice:pa:ss word\nbob:\n", encoding="utf-8")
    assert load_users(path) == {"alice": "pa:ss word", "bob": ""}
    path.write_text("alice:x\nTopSecretLine\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2") as info:
        load_users(path)
    assert "TopSecret" not in str(info.value)
    path.write_text("alice:x\nalice:y\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="twice"):
        load_users(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_users(tmp_path / "missing")


def test_digest_replay_of_a_nonce_count_gets_a_fresh_challenge() -> None:
    """A captured qop=auth request replayed within the nonce's lifetime is refused; the next nc is not."""
    auth = ServerAuth({"viewer": "pw"}, "msm")
    challenge = parse_challenges(auth.challenges())
    first = authorization(challenge, "viewer", "pw", "DESCRIBE", "rtsp://h/cam", nc=1)
    assert auth.check("DESCRIBE", "rtsp://h/cam", first) == "viewer"
    with pytest.raises(Unauthorized) as info:
        auth.check("DESCRIBE", "rtsp://h/cam", first)
    assert "replayed" in str(info.value)
    assert parse_challenges([info.value.headers["WWW-Authenticate"]])[0].stale
    second = authorization(challenge, "viewer", "pw", "SETUP", "rtsp://h/cam/track0", nc=2)
    assert auth.check("SETUP", "rtsp://h/cam/track0", second) == "viewer"
    older = authorization(challenge, "viewer", "pw", "PLAY", "rtsp://h/cam", nc=2)
    with pytest.raises(Unauthorized):
        auth.check("PLAY", "rtsp://h/cam", older)


def test_forgotten_nonces_count_as_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the table of nonce counts is full, forgetting the oldest never reopens its replay."""
    import msm.sdk.rtsp_auth as rtsp_auth

    monkeypatch.setattr(rtsp_auth, "MAX_TRACKED_NONCES", 2)
    clock = Clock()
    auth = ServerAuth({"viewer": "pw"}, "msm", clock=clock)
    used = []
    for _ in range(3):
        clock.now += 1
        value = authorization(parse_challenges(auth.challenges()), "viewer", "pw", "DESCRIBE", "rtsp://h/cam")
        assert auth.check("DESCRIBE", "rtsp://h/cam", value) == "viewer"
        used.append(value)
    with pytest.raises(Unauthorized) as info:
        auth.check("DESCRIBE", "rtsp://h/cam", used[0])
    assert "expired" in str(info.value)
    with pytest.raises(Unauthorized):
        auth.check("DESCRIBE", "rtsp://h/cam", used[2])
