"""The benchmark's table, targets, and plot (PNG)."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any

SUBJECT_ORDER = ["limit", "limit-gso", "direct", "native", "native-gso", "python", "gstreamer"]


def _num(value: float | None, fmt: str, dash: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return dash
    return format(value, fmt)


CLIP_US = 20_000


def _lat(value: float | None) -> str:
    if value is not None and value >= CLIP_US:
        return ">20000"
    return _num(value, ".0f")


def table(report: dict[str, Any]) -> str:
    head = ("case", "subject", "load", "in pkt/s", "out pkt/s", "Gbit/s", "loss", "CPU s/Mpkt", "RSS MiB",
            "p50 us", "p99 us", "+p50 us", "+p99 us", "x limit", "x gst")
    rows = [head]
    for r in report["results"]:
        lat, added = r["latency_us"], r["added_us"]
        rows.append((
            r["case"], r["subject"], r["load"], _num(r["offered_pps"], ",.0f"), _num(r["pps"], ",.0f"),
            _num(r["gbps"], ".2f"), _num(r["loss"], ".2%"), _num(r["cpu_s_per_mpkt"], ".2f"),
            _num(r["rss_mib"], ".1f"), _lat(lat.get("p50")), _lat(lat.get("p99")),
            _num(added.get("p50"), "+.0f"), _num(added.get("p99"), "+.0f"),
            _num(r["vs_limit"], ".2f"), _num(r["vs_gstreamer"], ".2f"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i < 3 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets_text(report: dict[str, Any]) -> str:
    lines = []
    for t in report["targets"]:
        mark = {True: "MET    ", False: "NOT MET", None: "       "}[t["met"]]
        value = t["value"]
        shown = _num(value, ".3f") if isinstance(value, float) else str(value)
        goal = f" (goal {t['goal']})" if t["goal"] else ""
        lines.append(f"{mark} {t['target']}: {shown}{goal}; {t['detail']}")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table (for the README)."""
    head = ("| case | subject | load | out pkt/s | Gbit/s | loss | CPU s/Mpkt | RSS MiB | p99 µs | added p99 µs "
            "| × limit | × GStreamer |")
    out = [head, "|" + "---|" * 12]
    for r in report["results"]:
        out.append("| " + " | ".join([
            r["case"], r["subject"], r["load"], _num(r["pps"], ",.0f"), _num(r["gbps"], ".2f"),
            _num(r["loss"], ".2%"), _num(r["cpu_s_per_mpkt"], ".2f"), _num(r["rss_mib"], ".0f"),
            _lat(r["latency_us"].get("p99")), _num(r["added_us"].get("p99"), "+.0f"),
            _num(r["vs_limit"], ".2f"), _num(r["vs_gstreamer"], ".2f")]) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- plot

def plot(report: dict[str, Any], path: Path) -> str:
    """Write a PNG; returns which renderer made it (matplotlib, or a plain built-in bar chart)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plain_png(report, path)
        return "builtin"
    results = report["results"]
    cases = list(dict.fromkeys(r["case"] for r in results))
    subjects = [s for s in SUBJECT_ORDER if any(r["subject"] == s for r in results)]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    title = f"msm bench: {report['machine'].get('cpus')} CPUs, {report['machine'].get('cpu_model', '')}"
    fig.suptitle(title, fontsize=11)

    def bars(ax: Any, pick: Any, ylabel: str, *, log: bool = False, loads: tuple[str, ...]) -> None:
        width = 0.8 / max(1, len(subjects))
        for i, subject in enumerate(subjects):
            values = []
            for case in cases:
                row = next((r for r in results if r["case"] == case and r["subject"] == subject
                            and r["load"] in loads), None)
                v = pick(row) if row is not None else None
                values.append(v if v is not None and not (isinstance(v, float) and math.isnan(v)) else 0.0)
            xs = [c + (i - (len(subjects) - 1) / 2) * width for c in range(len(cases))]
            ax.bar(xs, values, width, label=subject)
        ax.set_xticks(range(len(cases)), cases)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)

    bars(axes[0][0], lambda r: r["pps"], "delivered packets/s (max / full load)", log=True,
         loads=("max", "full", "streams"))
    axes[0][0].legend(fontsize=8)
    bars(axes[0][1], lambda r: r["cpu_s_per_mpkt"], "CPU s per million packets (half load)", log=True,
         loads=("50%", "streams"))
    bars(axes[1][0], lambda r: min(r["latency_us"].get("p99", 0.0), CLIP_US),
         "latency p99, us (half load; 20000 = 20 ms or more)", log=True, loads=("50%", "streams"))
    soak = report.get("soak")
    ax = axes[1][1]
    if soak and soak.get("samples"):
        ts = [s[0] for s in soak["samples"]]
        ax.plot(ts, [s[1] for s in soak["samples"]])
        ax.set_xlabel("seconds")
        ax.set_ylabel("native proxy RSS, MiB (soak)")
        ax.grid(alpha=0.3)
    else:
        bars(ax, lambda r: 100 * r["loss"], "loss % (max / full load)", loads=("max", "full", "streams"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


def _plain_png(report: dict[str, Any], path: Path) -> None:
    """Without matplotlib: delivered packets/s per result as bars (log scale), no text."""
    results = report["results"]
    width, height, margin = 800, 400, 20
    pixels = [[(255, 255, 255)] * width for _ in range(height)]
    colours = {"limit": (90, 90, 90), "limit-gso": (150, 150, 150), "direct": (200, 200, 200),
               "native": (31, 119, 180), "native-gso": (100, 170, 220), "python": (255, 127, 14),
               "gstreamer": (44, 160, 44)}
    top = max((r["pps"] for r in results), default=1.0) or 1.0
    n = max(1, len(results))
    bar = max(1, (width - 2 * margin) // n)
    for i, r in enumerate(results):
        frac = math.log10(max(r["pps"], 1.0)) / math.log10(max(top, 10.0))
        h = int((height - 2 * margin) * max(0.0, min(1.0, frac)))
        x0 = margin + i * bar
        for y in range(height - margin - h, height - margin):
            row = pixels[y]
            for x in range(x0, min(x0 + max(1, bar - 2), width)):
                row[x] = colours.get(r["subject"], (0, 0, 0))
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    path.write_bytes(png)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report FILE.json [--markdown]``: show a stored run again (targets re-evaluated)."""
    import json
    import sys

    from msm_bench.harness import targets

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m bench.report FILE.json [--markdown]", file=sys.stderr)
        return 2
    report = json.loads(Path(args[0]).read_text())
    report["targets"] = targets(report)
    print(markdown(report) if "--markdown" in args else table(report))
    print()
    print(targets_text(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
