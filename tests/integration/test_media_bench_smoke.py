"""``msm bench media --smoke``: every part runs and reports numbers, in under a minute.

Never that a target is met (smoke runs are too short to say). A part may say
"not available: <reason>" only for a peer truly absent from the machine (no
dpdk-testpmd, no fi_pingpong, no GStreamer); where the peer is installed, the
part must give numbers, and numbers that cannot be right are a failure.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MSM = Path(sys.executable).with_name("msm")
PEERS = {"memif": "dpdk-testpmd", "sdk": "dpdk-testpmd", "fabric-tcp": "fi_pingpong", "fabric-shm": "fi_pingpong",
         "st2110": "gst-launch-1.0"}
METRICS = ("frames_per_s", "gbit_per_s", "cpu_ms_per_frame", "latency_ms_p50", "latency_ms_p99")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_media_smoke_reports_every_part(tmp_path: Path) -> None:
    out = tmp_path / "media.json"
    start = time.monotonic()
    run = subprocess.run([str(MSM), "bench", "media", "--smoke", "--json", str(out)], capture_output=True, text=True,
                         timeout=110)
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert elapsed < 60, f"the smoke run took {elapsed:.0f} s"
    assert "verdict" in run.stdout and "Gbit/s" in run.stdout
    assert (tmp_path / "media.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["command"].startswith("msm bench media")
    assert report["machine"]["cpus"] and len(report["machine"]["loadavg_end"]) == 3
    parts = {p["part"]: p for p in report["parts"]}
    assert list(parts) == list(PEERS)
    for name, part in parts.items():
        for key in ("status", "reason", "ours", "peer", "ratio", "ratio_of", "target", "verdict", "valid", "seconds"):
            assert key in part, f"{name}: no {key}"
        if part["status"] == "not available":
            assert part["verdict"].startswith("not available: ") and part["reason"]
            absent = shutil.which(PEERS[name]) is None or (
                name == "sdk" and importlib.util.find_spec("msm_bench.sdk_bench") is None)
            assert absent, f"{name} says {part['verdict']!r} but its peer is installed"
            continue
        assert part["status"] == "measured" and part["valid"], f"{name}: {part['verdict']}"
        assert part["verdict"] == "MET" or part["verdict"].startswith("NOT MET"), part["verdict"]
        assert _number(part["ratio"])
        ours, peer = part["ours"], part["peer"]
        assert ours["name"] and peer["name"] and ours["size"] > 0
        for key in METRICS:
            assert _number(ours[key]), f"{name}: ours {key} = {ours[key]!r}"
        assert _number(peer["gbit_per_s"]) and _number(peer["frames_per_s"])
        assert ours["latency_ms_p99"] >= ours["latency_ms_p50"]
        if name == "st2110":
            assert _number(peer["cpu_ms_per_frame"]) and ours["pacing"] and ours["latency_run"]["frames_matched"] > 0


def test_numbers_that_cannot_be_right_are_never_scored() -> None:
    from msm_bench import media

    good = {"frames_per_s": 10.0, "gbit_per_s": 1.0, "cpu_ms_per_frame": 1.0, "latency_ms_p50": 1.0,
            "latency_ms_p99": 2.0}
    assert media.score("fabric-tcp", {"status": "measured", "ours": good, "peer": good})["verdict"] == "MET"
    for part, ours, peer, why in [
            ("memif", good, {"error": "no port stats"}, "the peer failed"),
            ("fabric-tcp", dict(good, gbit_per_s=0.0), good, "ours gbit_per_s is 0.0"),
            ("fabric-shm", dict(good, frames_per_s=float("inf")), good, "ours frames_per_s is inf"),
            ("fabric-shm", good, dict(good, gbit_per_s=-1.0), "peer gbit_per_s is -1.0"),
            ("memif", dict(good, frames=20, received=19, bad=0), good, "ours received 19 of 20"),
            ("sdk", dict(good, frames=20, received=20, bad=3), good, "3 frames arrived corrupt"),
            ("st2110", dict(good, frames=30, received=30, packets_lost=0), dict(good, cpu_ms_per_frame=0.0),
             "peer cpu_ms_per_frame is 0.0")]:
        row = media.score(part, {"status": "measured", "ours": ours, "peer": peer})
        assert row["verdict"].startswith("invalid: ") and why in row["verdict"], (part, row["verdict"])
        assert not row["valid"] and row["ratio"] is None
    lossy = media.score("st2110", {"status": "measured", "ours": dict(good, frames=30, received=29, packets_lost=4),
                                   "peer": dict(good, cpu_ms_per_frame=10.0)})
    assert lossy["valid"] and lossy["verdict"].startswith("NOT MET") and "4 packets lost" in lossy["verdict"]
    report = {"parts": [media.score("memif", {"status": "failed", "reason": "timed out after 90 s"}),
                        media.score("sdk", {"status": "not available", "reason": "dpdk-testpmd is not installed"})]}
    assert media.failed(report) == ["memif: failed: timed out after 90 s"]
