"""The msm command line: help everywhere, one-line errors, config precedence."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from msm import cli
from msm.mesh import MeshConfig

pytestmark = pytest.mark.timeout(60)


# `msm up` keeps its CA in a state directory: the tests' own, never the user's.
_STATE = tempfile.TemporaryDirectory(prefix="msm-cli-state-")


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "MSM_STATE_DIR": _STATE.name, **extra}


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env if env is not None else cli_env())


@pytest.mark.parametrize("args", [["--help"], ["up", "--help"], ["streams", "--help"]])
def test_help(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0
    assert "usage: msm" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["up", "--route", "cam1"], "NAME=rtsp://"),
    (["up", "--route", "cam1=http://example/x"], "not an rtsp:// URL"),
    (["up", "--route", "cam1=rtsp://h:99999/x"], "bad port"),
    (["up", "--demo", "--rtsp-listen", "nonsense"], "HOST:PORT"),
    (["up", "--demo", "--port-range", "9-5"], "port range"),
    (["up"], "nothing to serve"),
    (["up", "--demo", "--log-level", "loud"], "log level"),
    (["up", "--demo", "--metrics-listen", "9090"], "HOST:PORT"),
    (["up", "--bogus"], "unrecognized arguments"),
    (["streams", "--control", "x"], "HOST:PORT"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [unclosed\n")
    result = run("up", "--config", str(bad))
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("up", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read config" in result.stderr


@pytest.mark.parametrize(("flag", "what"), [("--rtsp-listen", "RTSP"), ("--control-listen", "control plane"),
                                          ("--proxy-listen", "RTP proxy"), ("--web-listen", "web page"),
                                          ("--metrics-listen", "proxy metrics")])
def test_port_in_use_is_a_one_line_error(flag: str, what: str) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    listen = {"--rtsp-listen": "127.0.0.1:0", "--control-listen": "127.0.0.1:0", "--proxy-listen": "127.0.0.1:0",
              "--metrics-listen": "127.0.0.1:0", "--web-listen": "127.0.0.1:0"}
    listen[flag] = f"127.0.0.1:{port}"
    try:
        result = run("up", "--route", "a=rtsp://127.0.0.1:1/x", *[x for kv in listen.items() for x in kv])
    finally:
        busy.close()
    assert result.returncode == 1
    assert f"cannot listen for {what}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("msm: error: cannot listen"), result.stderr


def test_streams_without_control_plane(tmp_path: Path) -> None:
    from msm.security.local import LocalPki

    LocalPki(tmp_path / "state").prepare()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("streams", "--control", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1 and "unreachable" in result.stderr


def test_streams_without_an_operator_certificate(tmp_path: Path) -> None:
    result = run("streams", "--state-dir", str(tmp_path / "empty"))
    assert result.returncode == 2 and "no operator certificate" in result.stderr
    assert "Traceback" not in result.stderr


def test_insecure_stays_on_loopback() -> None:
    result = run("up", "--demo", "--insecure", "--control-listen", "0.0.0.0:9000")
    assert result.returncode == 2 and "loopback" in result.stderr
    result = run("up", "--demo", "--proxy-listen", "0.0.0.0:9001", env=cli_env(MSM_INSECURE="1"))
    assert result.returncode == 2 and "loopback" in result.stderr


def _up(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start `msm up` on free ports with a route to nowhere; its control address once it is up."""
    proc = subprocess.Popen([sys.executable, "-m", "msm.cli", "up", "--route", "a=rtsp://127.0.0.1:1/x",
                             "--rtsp-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
                             "--proxy-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                             "--web-listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    control = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip().startswith("control "):
            control = line.split()[1]
        if line.startswith("Ctrl+C"):
            return proc, control
    proc.kill()
    raise AssertionError(f"msm up did not come up: {proc.communicate()[1][-2000:]}")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    return err


def test_up_is_mutual_tls_and_streams_uses_the_operator_certificate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, control = _up("--state-dir", str(state), env=cli_env())
    try:
        assert (state / "ca" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
        assert state.stat().st_mode & 0o777 == 0o700
        ok = run("streams", "--json", "--control", control, "--state-dir", str(state))
        assert ok.returncode == 0 and ok.stdout.strip() == "[]", ok.stderr
        plain = run("streams", "--json", "--control", control, "--insecure")
        assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
    finally:
        err = _stop(proc)
    assert "without TLS" not in err and "plaintext" not in err and "Traceback" not in err, err


def test_up_insecure_warns() -> None:
    proc, control = _up("--insecure", env=cli_env())
    try:
        ok = run("streams", "--json", "--control", control, "--insecure")
        assert ok.returncode == 0, ok.stderr
    finally:
        err = _stop(proc)
    assert "WARNING" in err and "--insecure" in err and "plaintext" in err, err


def test_routes_merge_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "msm.yaml"
    config.write_text("linger: 7\nroutes:\n  a: rtsp://file/a\n  b: {url: 'rtsp://file/b', transport: tcp}\n")
    monkeypatch.setenv("MSM_ROUTES", "b=rtsp://env/b,c=rtsp://env/c")
    monkeypatch.setenv("MSM_LINGER", "3")
    opts = cli.build_parser().parse_args(["up", "--config", str(config), "--route", "c=rtsp://flag/c"])
    values = cli.settings(opts, ["linger", "rtsp_listen"])
    assert values["linger"] == "3"                      # env beats file
    assert values["rtsp_listen"] == "127.0.0.1:8554"    # default
    routes = {r.name: r for r in cli._routes(opts, values["_file"])}
    assert routes["a"].url == "rtsp://file/a"
    assert routes["b"].url == "rtsp://env/b"            # env beats file
    assert routes["c"].url == "rtsp://flag/c"           # flag beats env


def test_table_rendering() -> None:
    from msm.protos import msm_pb2 as pb

    response = pb.ListStreamsResponse()
    stream = response.streams.add(name="cam", upstream_url="rtsp://u/x", upstream_state="playing")
    stream.viewers.add(session_tag="s1", playing=True)
    stream.tracks.add(track=pb.Track(index=0, kind="video"),
                      flow=pb.FlowStats(packets_received=990, packets_expected=1000, packets_lost=10,
                                        jitter_ms=1.5, bitrate_bps=2_500_000))
    flow = stream.tracks[0].flow
    flow.legs.add(leg_id="s1/0", enabled=True, packets_sent=1000, has_report=True, viewer_packets_lost=20,
                  viewer_jitter_ms=3.25, rtt_ms=1.5, destination=pb.Endpoint(host="10.1.2.3"))
    stream.viewers[0].host = "10.1.2.3"
    stream.viewers[0].legs.add(leg_id="s1/0")
    rows = cli.stream_rows(response)
    assert rows[0]["hop"] == "ingress" and rows[0]["loss_percent"] == 1.0 and rows[0]["playing"] == 1
    assert rows[1] == {"hop": "viewer", "stream": "cam", "track": "0:video", "node": "", "viewer": "10.1.2.3",
                       "session": "s1", "state": "playing", "packets": 1000, "loss_percent": 2.0, "lost": 20,
                       "jitter_ms": 3.25, "rtt_ms": 1.5}
    table = cli.render_table(rows)
    assert "cam" in table and "1.00%" in table and "2.50 Mbit/s" in table and "1/1" in table
    assert "-> 10.1.2.3 (s1) on" in table and "2.00%" in table and "1.50 ms" in table
    assert "no streams" in cli.render_table([])


def test_table_shows_viewers_by_tag_never_by_session_id() -> None:
    from msm.protos import msm_pb2 as pb

    response = pb.ListStreamsResponse()
    stream = response.streams.add(name="cam", upstream_url="rtsp://u/x")
    stream.viewers.add(session_id="SECRETSESSIONID", session_tag="ab12cd34", host="10.0.0.9")
    stream.viewers[0].legs.add(leg_id="ab12cd34/0")
    flow = stream.tracks.add(track=pb.Track(index=0, kind="video")).flow
    flow.legs.add(leg_id="ab12cd34/0", destination=pb.Endpoint(host="10.0.0.9"))
    flow.legs.add(leg_id="ef56ab78/0", destination=pb.Endpoint(host="10.0.0.10"))   # no viewer record
    rows = cli.stream_rows(response)
    assert [r["session"] for r in rows if r["hop"] == "viewer"] == ["ab12cd34", "ef56ab78"]
    assert "SECRETSESSIONID" not in cli.render_table(rows)


# --- the gateway stub's viewers, the planner, route credentials -----------------------------------


def _up_config(*args: str) -> MeshConfig:
    return cli.up_config(cli.build_parser().parse_args(["up", "--route", "a=rtsp://127.0.0.1:1/x", *args]))


def test_viewer_settings_defaults_are_the_stubs_and_the_planners() -> None:
    from msm.control_plane.planner import MAX_TRACKS
    from msm.stub import server

    config = _up_config()
    assert (config.users_file, config.tls_cert, config.tls_key, config.allow_basic) == ("", "", "", False)
    assert config.rtsps_port == server.RTSPS_PORT
    assert config.max_connections == server.MAX_CONNECTIONS
    assert config.max_connections_per_client == server.MAX_CONNECTIONS_PER_CLIENT
    assert (config.header_timeout, config.idle_timeout) == (server.HEADER_TIMEOUT, server.IDLE_CONNECTION_TIMEOUT)
    assert config.max_tracks == MAX_TRACKS


def test_viewer_settings_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = tmp_path / "users"
    users.write_text("alice:wonder:land\n")
    config_file = tmp_path / "msm.yaml"
    config_file.write_text(f"users_file: {users}\nmax_connections: 7\nidle_timeout: 3.5\nmax_tracks: 4\n"
                           "allow_basic: true\nmax_sessions_per_connection: 2\n")
    monkeypatch.setenv("MSM_MAX_CONNECTIONS", "9")
    monkeypatch.setenv("MSM_HEADER_TIMEOUT", "2")
    config = _up_config("--config", str(config_file), "--max-sessions-per-connection", "3")
    assert config.users_file == str(users) and config.allow_basic
    assert config.max_connections == 9                  # env beats file
    assert config.max_sessions_per_connection == 3      # flag beats file
    assert config.idle_timeout == 3.5 and config.header_timeout == 2.0 and config.max_tracks == 4
    from msm.mesh import gateway_stub_config

    stub = gateway_stub_config(config)
    assert (stub.users_file, stub.max_connections, stub.idle_timeout) == (str(users), 9, 3.5)


@pytest.mark.parametrize(("args", "message"), [
    (["--max-connections", "many"], "--max-connections must be a whole number, got 'many'"),
    (["--idle-timeout", "soon"], "--idle-timeout must be a number of seconds"),
    (["--max-connections-per-client", "0"], "--max-connections-per-client must be positive"),
    (["--header-timeout", "-1"], "--header-timeout must be positive"),
    (["--max-tracks", "0"], "--max-tracks must be positive"),
    (["--rtsps-port", "70000"], "--rtsps-port must be 0-65535"),
    (["--users-file", "/nonexistent/users"], "cannot read users file /nonexistent/users"),
    (["--tls-cert", "/nonexistent/cert.pem"], "needs both a certificate"),
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "RTSPS certificate"),
])
def test_bad_viewer_settings_are_one_line_errors(args: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up", "--route", "a=rtsp://127.0.0.1:1/x", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


PASSWORD = "p@ss:w/rd%Secret"


def _credentials_config(tmp_path: Path, **route: str) -> Path:
    lines = [f"    {key}: '{value}'" for key, value in route.items()]
    path = tmp_path / "msm.yaml"
    path.write_text("routes:\n  cam:\n    url: rtsp://10.0.0.5:554/live\n" + "\n".join(lines) + "\n")
    return path


def test_route_credentials_from_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "cam-password"
    secret.write_text(PASSWORD + "\n")
    path = _credentials_config(tmp_path, username="ad min", password_file=str(secret), transport="tcp")
    (route,) = cli._routes(cli.build_parser().parse_args(["up"]), cli.load_config_file(str(path)))
    assert route.url == "rtsp://ad%20min:p%40ss%3Aw%2Frd%25Secret@10.0.0.5:554/live"
    assert route.transport == "tcp"
    from msm.stub.rtsp_client import credentials_of

    assert credentials_of(route.url) == ("ad min", PASSWORD)   # what the stub will present


def test_route_credentials_from_an_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PASSWORD", PASSWORD)
    path = _credentials_config(tmp_path, username="admin", password_env="CAM_PASSWORD")
    (route,) = cli._routes(cli.build_parser().parse_args(["up"]), cli.load_config_file(str(path)))
    assert route.url == "rtsp://admin:p%40ss%3Aw%2Frd%25Secret@10.0.0.5:554/live"


@pytest.mark.parametrize(("route", "message"), [
    ({"username": "admin", "password_env": "MSM_TEST_UNSET"}, "password_env MSM_TEST_UNSET is not set"),
    ({"username": "admin", "password_file": "/nonexistent/pw"}, "cannot read password_file /nonexistent/pw"),
    ({"username": "admin", "password_file": "/x", "password_env": "X"}, "not both"),
    ({"password_env": "HOME"}, "a password needs a username"),
    ({"username": "admin", "password": PASSWORD}, "unknown key 'password' (use password_file or password_env)"),
])
def test_route_credential_errors_name_the_route_not_the_secret(tmp_path: Path, route: dict[str, str], message: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up", "--config", str(_credentials_config(tmp_path, **route))]) == 2
    err = capsys.readouterr().err
    assert message in err and "route cam" in err and PASSWORD not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_banner_shows_routes_without_their_credentials(tmp_path: Path) -> None:
    secret = tmp_path / "cam-password"
    secret.write_text(PASSWORD)
    config = _credentials_config(tmp_path, username="admin", password_file=str(secret))
    proc = subprocess.Popen(
        [sys.executable, "-m", "msm.cli", "up", "--config", str(config), "--route", f"b=rtsp://bob:{PASSWORD[:4]}"
         "x@127.0.0.1:1/y", "--rtsp-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
         "--proxy-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0",
         "--log-level", "debug"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        banner = _read_banner(proc)
    finally:
        err = _stop(proc)
    assert "rtsp://***@10.0.0.5:554/live" in banner and "rtsp://***@127.0.0.1:1/y" in banner, banner
    assert "viewers  no authentication" in banner
    for text in (banner, err):
        assert PASSWORD not in text and "p%40ss" not in text and f"{PASSWORD[:4]}x" not in text


def _read_banner(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl+C"):
            return "".join(lines)
    proc.kill()
    raise AssertionError(f"msm up did not come up: {''.join(lines)} {proc.communicate()[1][-2000:]}")
