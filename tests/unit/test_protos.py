"""The generated gRPC code matches protos/msm.proto."""

from __future__ import annotations

import subprocess
import sys

from msm.protos import msm_pb2 as pb


def test_generated_code_is_current() -> None:
    result = subprocess.run([sys.executable, "-m", "msm.protos.generate", "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_messages_round_trip() -> None:
    message = pb.StubMessage(request=pb.StubRequest(request_id=7, setup=pb.SetupRequest(
        url="rtsp://h/cam", stream_id="cam", track_index=1, session_id="s",
        destination=pb.Endpoint(host="10.0.0.2", rtp_port=5000, rtcp_port=5001))))
    again = pb.StubMessage.FromString(message.SerializeToString())
    assert again == message and again.request.WhichOneof("kind") == "setup"
