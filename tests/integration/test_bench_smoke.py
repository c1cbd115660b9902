"""``msm bench --smoke``: it runs, and its numbers are sane. Never that a target is met.

The smoke run spends a few seconds on loopback: the C limit, the proxy on both
engines, GStreamer where installed; 1:1, 1:10 and 50 low-rate streams.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msm import bench, ext
from msm_bench import traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_smoke_runs_and_results_are_sane(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if reason := traffic.available() or ext.unavailable_reason():
        pytest.skip(reason)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--nice", "0", "--json", str(out)]) == 0   # (in-process: leave pytest's priority)
    printed = capsys.readouterr().out
    assert "out pkt/s" in printed and "CPU s/Mpkt" in printed

    report = json.loads(out.read_text())
    rows = {(r["case"], r["subject"], r["load"]): r for r in report["results"]}
    for key in [("1:1", "limit", "max"), ("1:1", "native", "50%"), ("1:1", "python", "50%"),
                ("1:10", "native", "full"), ("50x1", "native", "streams")]:
        assert key in rows, f"missing {key}; skipped: {report['skipped']}"
    for r in report["results"]:
        assert r["pps"] >= 0 and 0.0 <= r["loss"] <= 1.0 and r["delivered"] <= r["expected"]
        assert abs(r["gbps"] - r["pps"] * 1316 * 8 / 1e9) < 1e-6
        if r["subject"] not in ("limit", "limit-gso", "direct"):
            assert r["cpu_s"] is not None and r["cpu_s"] >= 0 and r["rss_mib"] > 0
    native = rows[("1:1", "native", "50%")]
    assert native["delivered"] > 0 and native["forwarder"]["received"] > 0
    assert "p99" in native["latency_us"] and "p99" in native["added_us"]
    assert report["limits_pps"]["1:1"] > 0 and report["targets"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
