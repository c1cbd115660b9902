"""Any input either parses or raises the protocol's own error: the parsers the other suites leave out.

``test_rtsp.py``, ``test_sdp.py``, ``test_rtp.py`` and ``test_webhook.py`` already feed
arbitrary bytes to the RTSP reader, the header-field parsers, SDP, RTP, compound RTCP
and the webhook.  This module covers the rest: the RTSP server session, single RTSP
messages and frames, each RTCP packet type alone, Transport-shaped header soup, RTP
and SDP round trips on arbitrary bytes, and the CNI plugin's environment and
network config.  The same contracts are fuzzed for longer by ``fuzz/``.
"""

from __future__ import annotations

import io
import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msm.cni_plugin import config
from msm.cni_plugin.errors import INTERNAL, CniError
from msm.cni_plugin.main import run_plugin
from msm.cni_plugin.plugin import Plugin
from msm.sdk.errors import MsmError, RtcpError, RtpError, RtspError, SdpError, Unavailable
from msm.sdk.rtp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtpPacket,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
)
from msm.sdk.rtsp import InterleavedFrame, Request, Response, format_transport, parse_transport
from msm.sdk.rtsp_server import (
    FrameReceived,
    Reply,
    RtspSession,
    ServerConnection,
    SessionTable,
)
from msm.sdk.sdp import SessionDescription
from tests.datafiles import load

# -- RTSP ----------------------------------------------------------------------------------------------

_REQUEST_PIECES = [
    b"OPTIONS rtsp://h/cam RTSP/1.0\r\n", b"DESCRIBE rtsp://h/cam RTSP/1.0\r\n",
    b"SETUP rtsp://h/cam/track0 RTSP/1.0\r\n", b"PLAY rtsp://h/cam RTSP/1.0\r\n",
    b"TEARDOWN rtsp://h/cam RTSP/1.0\r\n", b"RECORD rtsp://h/cam RTSP/1.0\r\n",
    b"CSeq: 1\r\n", b"CSeq: x\r\n", b"Session: 12345678\r\n", b"Session: ;timeout=\r\n",
    b"Transport: RTP/AVP;unicast;client_port=5000-5001\r\n", b"Transport: RTP/AVP/TCP;interleaved=0-1\r\n",
    b"Transport: RTP/AVP/TCP;interleaved=254\r\n", b"Require: x\r\n", b"Accept: text/html\r\n",
    b"Content-Length: 3\r\n", b"\r\n", b"abc", b"$\x00\x00\x02ab", b"$\x01\x00\x00", b"RTSP/1.0 200 OK\r\n",
]


def _serve(data: bytes, chunk: int) -> list[object]:
    """Feed ``data`` to a server connection ``chunk`` bytes at a time; refuse every request."""
    table: SessionTable[RtspSession] = SessionTable(clock=lambda: 0.0)
    conn: ServerConnection[RtspSession] = ServerConnection(table, date=lambda: "now")
    events: list[object] = []
    for start in range(0, len(data), chunk):
        conn.receive_data(data[start : start + chunk])
        while (event := conn.next_event()) is not None:
            events.append(event)
            if isinstance(event, Reply):
                assert Response.parse(event.data).status != 500, event.data
                if event.close:
                    return events
            elif not isinstance(event, FrameReceived):
                reply = Response.parse(conn.fail(Unavailable("refused")))
                assert reply.status == 503
    return events


@settings(max_examples=300)
@given(
    st.one_of(st.binary(max_size=400),
              st.lists(st.sampled_from(_REQUEST_PIECES), max_size=14).map(b"".join)),
    st.integers(1, 64),
)
def test_server_connection_answers_any_bytes(data: bytes, chunk: int) -> None:
    """Whatever a viewer sends, the session answers; it never raises and never answers 500."""
    _serve(data, chunk)


@pytest.mark.parametrize("uri", [b"rtsp://[::1/cam", b"rtsp://h]/cam/track0"])
def test_server_connection_answers_a_malformed_authority_with_400(uri: bytes) -> None:
    for method in (b"DESCRIBE", b"SETUP"):
        events = _serve(method + b" " + uri + b" RTSP/1.0\r\nCSeq: 2\r\n\r\n", 64)
        assert events and isinstance(events[0], Reply)
        assert Response.parse(events[0].data).status == 400


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_single_rtsp_messages_parse_or_raise_rtsp_error(data: bytes) -> None:
    for kind in (Request, Response, InterleavedFrame):
        try:
            message = kind.parse(data)
        except RtspError as exc:
            assert 400 <= exc.status < 600
        else:
            assert kind.parse(bytes(message)) == message


_transport_param = st.one_of(
    st.sampled_from(["unicast", "multicast", "client_port=", "server_port=", "interleaved=", "port=",
                     "ttl=", "ssrc=", "mode=", "destination=", "source=", "x-extra=", "mode=\"PLAY\""]),
    st.text(alphabet=string.printable, max_size=8),
)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.sampled_from(["RTP/AVP", "RTP/AVP/UDP", "RTP/AVP/TCP", "rtp/avp", "RTP/SAVP", "RAW/RAW/UDP"]),
                  st.lists(st.tuples(_transport_param, st.text(alphabet="0123456789-AbF\" ", max_size=12)),
                           max_size=5)),
        min_size=1, max_size=3,
    )
)
def test_transport_soup_parses_and_formats_back_or_raises_rtsp_error(
        alternatives: list[tuple[str, list[tuple[str, str]]]]) -> None:
    value = ",".join(";".join([protocol, *(key + raw for key, raw in params)])
                     for protocol, params in alternatives)
    try:
        specs = parse_transport(value)
    except RtspError as exc:
        assert exc.status in (400, 461)
        return
    assert parse_transport(format_transport(specs)) == specs


# -- RTP and RTCP --------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=128))
def test_rtp_packets_from_any_bytes_round_trip(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert RtpPacket.parse(bytes(packet)) == packet


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=128),
        # A plausible header over a random body reaches each type's body parser.
        st.builds(lambda first, ptype, body: bytes((first, ptype)) + (len(body) // 4).to_bytes(2, "big")
                  + body[: len(body) // 4 * 4],
                  st.sampled_from([0x80, 0x81, 0x9F, 0xA1, 0x82]), st.integers(190, 210),
                  st.binary(max_size=120)),
    )
)
def test_each_rtcp_packet_type_parses_or_raises_rtcp_error(data: bytes) -> None:
    for kind in (SenderReport, ReceiverReport, SourceDescription, Bye, UnknownRtcp, ReportBlock):
        try:
            packet = kind.parse(data)
        except RtcpError:
            continue
        assert kind.parse(bytes(packet)) == packet


# -- SDP ------------------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.sampled_from(load("sdp/ffmpeg_h264_pcmu.sdp").splitlines(keepends=True)
                                + load("sdp/gst_rtsp_server.sdp").splitlines(keepends=True)),
                max_size=30),
       st.binary(max_size=20))
def test_sdp_from_recorded_lines_round_trips_or_raises_sdp_error(lines: list[bytes], junk: bytes) -> None:
    """Recorded lines in any order and number, plus junk: SdpError, or bytes that serialise to a fixed point."""
    try:
        sdp = SessionDescription.parse(b"v=0\r\n" + b"".join(lines) + junk)
    except SdpError:
        return
    assert bytes(SessionDescription.parse(bytes(sdp))) == bytes(sdp)


def test_sdp_extra_lines_round_trip_to_an_equal_value() -> None:
    sdp = SessionDescription.parse(
        (Path(__file__).resolve().parents[2] / "fuzz" / "seeds" / "sdp" / "extra_lines_reordered.sdp").read_bytes())
    assert SessionDescription.parse(bytes(sdp)) == sdp


@pytest.mark.parametrize("line", [
    pytest.param(b"b=AS:" + b"9" * 4301, id="bandwidth"),
    pytest.param(b"t=" + b"1" * 4301 + b" 0", id="timing"),
    pytest.param(b"m=video " + b"1" * 4301 + b" RTP/AVP 96", id="media-port"),
])
def test_sdp_numbers_too_long_for_int_are_sdp_errors(line: bytes) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n" + line + b"\r\n")


# -- CNI plugin -----------------------------------------------------------------------------------------

ADD_ENV = {
    "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "3f2a9c", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=media;K8S_POD_NAME=viewer", "CNI_PATH": "/opt/cni/bin",
}
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_conf_keys = st.sampled_from(["cniVersion", "name", "type", "interceptPorts", "redirectPort", "proxyUid",
                              "redirectMode", "excludeNamespaces", "kubernetes", "cgroupPath", "bpfPinPath",
                              "prevResult"])


class _NoBackend:
    def install(self, env: Any, settings: Any) -> None:
        pass

    def remove(self, env: Any) -> None:
        pass

    def verify(self, env: Any, settings: Any) -> None:
        pass

    def collect_garbage(self, valid: set[tuple[str, str]]) -> None:
        pass

    def unavailable(self) -> str:
        return ""


_PLUGIN = Plugin(backends={"nftables": _NoBackend(), "ebpf": _NoBackend()},
                 pod_source=lambda kubeconfig, namespace, name, timeout: json.loads(load("k8s/cni_pod_plain.json")))


def _cni_answer(data: bytes) -> tuple[int, Any]:
    stdout = io.StringIO()
    status = run_plugin(ADD_ENV, io.BytesIO(data), stdout, _PLUGIN)
    return status, json.loads(stdout.getvalue())


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200), _json_values.map(lambda v: json.dumps(v).encode())))
def test_cni_stdin_decodes_or_raises_cni_error(data: bytes) -> None:
    try:
        value = config.decode_json(data)
    except CniError:
        return
    assert isinstance(value, dict)


@settings(max_examples=300)
@given(st.fixed_dictionaries({"cniVersion": st.sampled_from(["1.0.0", "0.4.0", "1.1.0", "2.0.0", ""]),
                              "name": st.just("k8s"), "type": st.just("msm-cni")}),
       st.dictionaries(_conf_keys, _json_values, max_size=5))
def test_cni_config_of_any_shape_parses_or_raises_cni_error(base: dict[str, Any], fields: dict[str, Any]) -> None:
    raw = {**base, **fields}
    try:
        _, settings_ = config.parse_conf(raw)
    except CniError:
        pass
    else:
        assert settings_.redirect_port not in settings_.intercept_ports
    status, answer = _cni_answer(json.dumps(raw).encode())
    assert status == 0 or answer["code"] != INTERNAL, answer


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(sorted(ADD_ENV)), st.text(max_size=20), max_size=6))
def test_cni_environment_parses_or_raises_cni_error(changes: dict[str, str]) -> None:
    try:
        config.parse_env({**ADD_ENV, **changes})
    except CniError as exc:
        assert isinstance(exc, MsmError)


@pytest.mark.parametrize("data", [
    pytest.param(b"[" * 2000, id="deep-nesting"),
    pytest.param(b'{"cniVersion":' + b"1" * 4301 + b"}", id="long-integer"),
])
def test_cni_stdin_that_json_loads_refuses_oddly_is_a_decode_failure(data: bytes) -> None:
    """Saved under fuzz/crashes/cni_config/: bytes that json.loads rejects with other exceptions."""
    try:
        config.decode_json(data)
    except CniError as exc:
        assert exc.cni_code == 6
    else:
        raise AssertionError("decoded")
