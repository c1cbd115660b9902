"""``msm bench media``: the media-transport benchmarks in one run, each against its peer.

    .venv/bin/msm bench media [--parts memif,sdk,fabric-tcp,fabric-shm,st2110] [--json FILE] [--plot FILE] [--smoke]

Parts (each runs in its own process group, torn down whole when it ends or times out):

* ``memif``: frames app -> proxy -> app over memif (:mod:`msm_bench.memif_bench`) against two
  ``dpdk-testpmd`` over memif (run before and after ours, the faster is the reference); bytes/s, target >= 0.8.
* ``sdk``: the same frames through the SDK and the real media agent (:mod:`msm_bench.sdk_bench`) against
  the same testpmd pair; bytes/s, target >= 0.8.
* ``fabric-tcp``, ``fabric-shm``: the libfabric frame link against ``fi_pingpong`` on the same provider
  (``tcp;ofi_rxm``, ``shm``), ping-pong of one 1080p 10-bit frame (:mod:`msm_bench.fabric_bench`);
  bytes/s, target >= 0.8.
* ``st2110``: ST 2110-20 1080p30 10-bit from GStreamer's rtpvrawpay in and out of our bridges against
  GStreamer's rtpvrawdepay ! rtpvrawpay relay (:mod:`msm_bench.st2110_bench`); zero loss and relay CPU
  at most 1/3 of GStreamer's.

The runners are imported and called, not copied; this module only sizes the runs, validates the numbers
and scores them. A number that cannot be right (zero, negative, not finite, frames missing or corrupt,
a peer that failed) is never scored: the verdict says ``invalid: <why>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARTS = ("memif", "sdk", "fabric-tcp", "fabric-shm", "st2110")
PROVIDERS = {"fabric-tcp": "tcp;ofi_rxm", "fabric-shm": "shm"}
FRAME = 1920 * 1080 * 5 // 2  # one 1080p 4:2:2 10-bit frame: 5,184,000 bytes
THROUGHPUT_TARGET = 0.8       # ours / peer, bytes/s
CPU_TARGET = 1 / 3            # ST 2110: our relay's CPU / GStreamer's
TIMEOUT = {True: 90.0, False: 1200.0}  # seconds per part, smoke / full
METRICS = ("frames_per_s", "gbit_per_s", "cpu_ms_per_frame", "latency_ms_p50", "latency_ms_p99")


def _row(name: str, size: int, fps: float | None, bytes_per_s: float | None, cpu_ms: float | None,
         p50_ms: float | None = None, p99_ms: float | None = None, **extra: Any) -> dict[str, Any]:
    """One subject's numbers, in the units every part reports."""
    return {"name": name, "size": size, "frames_per_s": fps,
            "gbit_per_s": None if bytes_per_s is None else bytes_per_s * 8 / 1e9,
            "cpu_ms_per_frame": cpu_ms, "latency_ms_p50": p50_ms, "latency_ms_p99": p99_ms, **extra}


def _absent(reason: str) -> dict[str, Any]:
    return {"status": "not available", "reason": reason}


# ----------------------------------------------------------------------------- the parts (in the worker process)

def _testpmd(smoke: bool, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """The testpmd pair's row: the faster of the run before ours and (full runs) the one after."""
    from msm_bench import memif_bench

    runs = [before or memif_bench.measure_testpmd(0.5 if smoke else 5.0)]
    if not smoke:
        runs.append(memif_bench.measure_testpmd(5.0))
    best = max(runs, key=lambda r: float(r.get("bytes_per_s") or 0.0))
    if "error" in best:
        return {"name": "dpdk-testpmd txonly -> rxonly", "error": best["error"]}
    return _row("dpdk-testpmd txonly -> rxonly", memif_bench.TESTPMD_PACKET, best["pps"], best["bytes_per_s"], None,
                note="its frames are 1400-byte packets; txonly/rxonly measure neither CPU (they busy-poll) "
                "nor latency", runs_pps=[r.get("pps") for r in runs])


def _frames_row(name: str, r: dict[str, Any], frames: int) -> dict[str, Any]:
    """memif_bench/sdk_bench's row (microseconds) in this report's units, with what validates it."""
    return _row(name, r["size"], r["fps"], r["bytes_per_s"], r["cpu_us_per_frame"] / 1e3, r["p50_us"] / 1e3,
                r["p99_us"] / 1e3, frames=frames, received=r["received"], bad=r["bad"],
                proxy_cpu_ms_per_frame=r["proxy_cpu_us_per_frame"] / 1e3,
                detail={k: v for k, v in r.items() if k not in ("proxy", "receiver_counters")})


def part_memif(smoke: bool) -> dict[str, Any]:
    from msm_bench import memif_bench

    if shutil.which("dpdk-testpmd") is None:
        return _absent("dpdk-testpmd is not installed")
    frames = 20 if smoke else 300
    before = memif_bench.measure_testpmd(0.5 if smoke else 5.0)
    ours = memif_bench.measure_ours(frames, FRAME)
    return {"ours": _frames_row("msm app -> proxy -> app (memif)", ours, frames) | {
                "same_memfd": ours["same_memfd"], "proxy_payload_bytes": ours["proxy_payload_bytes"]},
            "peer": _testpmd(smoke, before)}


def part_sdk(smoke: bool) -> dict[str, Any]:
    try:
        from msm_bench import sdk_bench
    except ImportError as exc:
        return _absent(f"msm_bench.sdk_bench cannot be imported ({exc})")
    from msm_bench import memif_bench

    if shutil.which("dpdk-testpmd") is None:
        return _absent("dpdk-testpmd is not installed")
    frames = 20 if smoke else 300
    before = memif_bench.measure_testpmd(0.5 if smoke else 5.0)
    ours = sdk_bench.measure_sdk(frames, FRAME)
    row = _frames_row("msm SDK app -> media agent -> app", ours, frames) | {"drops": ours.get("drops")}
    return {"ours": row, "peer": _testpmd(smoke, before)}


def part_fabric(provider: str, smoke: bool) -> dict[str, Any]:
    from msm.ext import fabric

    if shutil.which("fi_pingpong") is None:
        return _absent("fi_pingpong is not installed (libfabric-bin)")
    if reason := fabric.unavailable_reason() or fabric.probe(provider):
        return _absent(f"the libfabric link cannot run on provider {provider}: {reason}")
    from msm_bench import fabric_bench

    iters, rounds = (5, 1) if smoke else (50, 3)
    refs, ours = [], []
    for _ in range(rounds):  # alternate; the best of each is compared, as fabric_bench does
        refs.append(fabric_bench.run_fi_pingpong(provider, FRAME, iters))
        ours.append(fabric_bench.run_ours(provider, FRAME, iters, 4))
    ref = max(refs, key=lambda r: float(r["mb_per_s"]))
    best = max(ours, key=lambda r: float(r["mb_per_s"]))
    mine = _row(f"msm libfabric link ({provider})", FRAME, best["frames_per_s"], best["mb_per_s"] * 1e6,
                best["cpu_ms_per_frame"], best["latency_ms_p50"], best["latency_ms_p99"], iters=iters,
                rounds=rounds, stream_frames_per_s=best["stream_frames_per_s"],
                stream_gbit_per_s=best["stream_gbit_per_s"], all_mb_per_s=[o["mb_per_s"] for o in ours])
    peer = _row(f"fi_pingpong ({provider})", FRAME, ref["frames_per_s"], ref["mb_per_s"] * 1e6,
                ref["cpu_ms_per_frame"], latency_ms_mean=ref["usec_per_xfer"] / 1e3,
                note=f"latency: mean one-way only, {ref['usec_per_xfer'] / 1e3:.2f} ms; CPU: its whole run, "
                "start-up included",
                all_mb_per_s=[r["mb_per_s"] for r in refs])
    return {"ours": mine, "peer": peer}


def _st2110_row(name: str, r: dict[str, Any], lat: dict[str, Any]) -> dict[str, Any]:
    sent, complete = int(r["frames_sent"]), int(r["frames_complete"])
    fps = 30.0 * complete / sent if sent else None  # complete frames delivered per second of the 30 fps stream
    return _row(name, FRAME, fps, None if fps is None else fps * FRAME, r["cpu_ms_per_frame"], lat["latency_ms_p50"],
                lat["latency_ms_p99"],
                note="frames/s and Gbit/s: complete frames delivered, of the 30 fps stream; CPU: the relay's "
                f"process per frame sent; latency: a second run (st2110_latency), last packet sent -> frame "
                f"complete at the receiver, {lat['frames_matched']} of {lat['frames_sent'] - lat['warmup']} frames "
                "through (after a warm-up)",
                frames=sent, received=complete, packets_lost=r["packets_lost"], loss=r["loss"],
                cpu_s=r["cpu_s"], detail=r, latency_run=lat)


def part_st2110(smoke: bool) -> dict[str, Any]:
    if shutil.which("gst-launch-1.0") is None:
        return _absent("GStreamer (gst-launch-1.0) is not installed")
    from msm.ext import st2110

    try:
        st2110.load()
    except Exception as exc:  # NativeUnavailable: built without a C compiler
        return _absent(f"the ST 2110 C core is not built: {exc}")
    from msm_bench import st2110_bench, st2110_latency

    frames = 30 if smoke else 300
    ours = st2110_bench.run_one("msm", 1920, 1080, frames)
    theirs = st2110_bench.run_one("gstreamer", 1920, 1080, frames)
    lat_frames = 20 if smoke else 155
    mine = _st2110_row("msm ST 2110 ingress -> egress", ours, st2110_latency.measure("msm", lat_frames))
    mine["pacing"] = ours.get("egress_pacing") or "the egress's own (st2110_bench reports none)"
    peer = _st2110_row("GStreamer rtpvrawdepay ! rtpvrawpay", theirs, st2110_latency.measure("gstreamer", lat_frames))
    peer["pacing"] = "none: udpsink sends each frame's packets as rtpvrawpay makes them"
    return {"ours": mine, "peer": peer}


def run_part(part: str, smoke: bool) -> dict[str, Any]:
    if part == "memif":
        return part_memif(smoke)
    if part == "sdk":
        return part_sdk(smoke)
    if part in PROVIDERS:
        return part_fabric(PROVIDERS[part], smoke)
    if part == "st2110":
        return part_st2110(smoke)
    raise ValueError(f"unknown part {part}")


def worker(part: str, smoke: bool, out: Path) -> int:
    """The child: one part, its numbers (or why there are none) as JSON in ``out``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # ended early: the runners' cleanup still runs
    try:
        result = run_part(part, smoke)
        result.setdefault("status", "measured")
    except (Exception, SystemExit) as exc:  # the runners say a peer failed with SystemExit
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(result, default=str))
    return 0


# ----------------------------------------------------------------------------- scoring

def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def problems(part: str, ours: dict[str, Any], peer: dict[str, Any]) -> list[str]:
    """Why these numbers cannot be scored (empty: they can)."""
    out = []
    if "error" in peer:
        return [f"the peer failed: {peer['error']}"]
    if part == "st2110":
        need = {"ours": ("cpu_ms_per_frame",), "peer": ("cpu_ms_per_frame", "frames_per_s")}
    else:
        need = {"ours": METRICS, "peer": ("frames_per_s", "gbit_per_s")}
    for who, row in (("ours", ours), ("peer", peer)):
        out += [f"{who} {key} is {row.get(key)!r}" for key in need[who] if not _positive(row.get(key))]
    for who, row in (("ours", ours), ("peer", peer)):
        out += [f"{who} {key} is {row[key]!r}" for key in ("latency_ms_p50", "latency_ms_p99")
                if row.get(key) is not None and not _positive(row[key])]
    if _positive(ours.get("latency_ms_p50")) and ours["latency_ms_p99"] < ours["latency_ms_p50"]:
        out.append("ours p99 below p50")
    if ours.get("bad"):
        out.append(f"{ours['bad']} frames arrived corrupt or out of order")
    if "received" in ours and not ours["received"]:
        out.append("nothing arrived through ours")
    if part == "memif" and ours.get("received") != ours.get("frames"):
        out.append(f"ours received {ours.get('received')} of {ours.get('frames')} frames")
    return out


def score(part: str, result: dict[str, Any]) -> dict[str, Any]:
    """The part's row in the report: ours, the peer, the ratio, the target and the verdict."""
    st = part == "st2110"
    row: dict[str, Any] = {"part": part, "status": result["status"], "reason": result.get("reason"),
                           "ours": result.get("ours"), "peer": result.get("peer"), "ratio": None,
                           "ratio_of": "relay CPU per frame, ours / peer" if st else "bytes/s, ours / peer",
                           "target": "zero loss and ratio <= 0.33" if st else f"ratio >= {THROUGHPUT_TARGET}",
                           "valid": False}
    if result["status"] != "measured":
        row["verdict"] = f"{result['status']}: {result.get('reason')}"
        return row
    ours, peer = result["ours"], result["peer"]
    bad = problems(part, ours, peer)
    if bad:
        row["verdict"] = "invalid: " + "; ".join(bad)
        return row
    row["valid"] = True
    if st:
        row["ratio"] = ratio = ours["cpu_ms_per_frame"] / peer["cpu_ms_per_frame"]
        misses = [] if ratio <= CPU_TARGET else [f"CPU ratio {ratio:.2f} > 0.33"]
        if ours["packets_lost"] or ours["received"] != ours["frames"]:
            misses.append(f"{ours['packets_lost']} packets lost, {ours['received']}/{ours['frames']} frames complete")
    else:
        row["ratio"] = ratio = ours["gbit_per_s"] / peer["gbit_per_s"]
        misses = [] if ratio >= THROUGHPUT_TARGET else [f"ratio {ratio:.2f} < {THROUGHPUT_TARGET}"]
    row["verdict"] = "NOT MET: " + "; ".join(misses) if misses else "MET"
    return row


# ----------------------------------------------------------------------------- running the parts

def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End the part's process group (its runner's peers too), politely first."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    if proc.poll() is None:
        proc.wait(5)


def run_isolated(part: str, smoke: bool, timeout: float) -> dict[str, Any]:
    """One part in its own process group; whatever it leaves running is ended with it."""
    with tempfile.TemporaryDirectory(prefix="msm-media-bench-") as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "log"
        cmd = [sys.executable, "-m", "msm_bench.media", "--worker", part, "--out", str(out)]
        with log.open("wb") as sink:
            proc = subprocess.Popen([*cmd, *(["--smoke"] if smoke else [])], stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout)
                failure = None if proc.returncode == 0 else f"exited with {proc.returncode}"
            except subprocess.TimeoutExpired:
                failure = f"timed out after {timeout:.0f} s"
            finally:
                _kill_group(proc)
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        if failure is None and out.exists():
            result: dict[str, Any] = json.loads(out.read_text())
            return result
        return {"status": "failed", "reason": f"{failure or 'no result'}{': ' + tail if tail else ''}"}


def _machine() -> dict[str, Any]:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg()}


def run(parts: list[str], *, smoke: bool = False, command: str = "",
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every part, one after the other; the report (see the module's docstring)."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {', '.join(unknown)} (have {', '.join(PARTS)})")
    report: dict[str, Any] = {"command": command, "smoke": smoke, "machine": _machine(), "parts": []}
    # SIGTERM as Ctrl+C: either way the running part's process group is ended before this returns.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        for part in parts:
            echo(f"media bench: {part} ...")
            start = time.monotonic()
            row = score(part, run_isolated(part, smoke, TIMEOUT[smoke]))
            row["seconds"] = round(time.monotonic() - start, 1)
            report["parts"].append(row)
            echo(f"media bench: {part}: {row['verdict']} ({row['seconds']:.0f} s)")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    report["machine"]["loadavg_end"] = os.getloadavg()
    return report


# ----------------------------------------------------------------------------- output

def _fmt(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(report: dict[str, Any]) -> str:
    head = (f"{'part':<11}{'subject':<38}{'size B':>9}{'frames/s':>10}{'Gbit/s':>8}{'CPU ms/fr':>10}"
            f"{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}  {'target':<27} verdict")
    lines = [head, "-" * len(head)]
    for row in report["parts"]:
        if not row["ours"]:
            lines.append(f"{row['part']:<11}{'':<38}{'':>9}{'':>10}{'':>8}{'':>10}{'':>8}{'':>8}{'-':>7}  "
                         f"{row['target']:<27} {row['verdict']}")
            continue
        for i, who in enumerate(("ours", "peer")):
            r = row[who] or {}
            if "error" in r:
                lines.append(f"{'':<11}{r.get('name', who)[:37]:<38} failed: {r['error'][:80]}")
                continue
            ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
            tail = (f"{ratio:>7}  {row['target']:<27} {row['verdict']}" if i == 0
                    else "")
            lines.append(f"{row['part'] if i == 0 else '':<11}{r.get('name', who)[:37]:<38}{r.get('size', 0):>9}"
                         + "".join(f"{_fmt(r.get(k)):>{w}}" for k, w in zip(METRICS, (10, 8, 10, 8, 8), strict=True))
                         + tail)
    notes = [f"  {row['part']}, {row[who]['name']}: " + "; ".join(
                 ([row[who]["note"]] if row[who].get("note") else [])
                 + ([f"pacing: {row[who]['pacing']}"] if row[who].get("pacing") else []))
             for row in report["parts"] for who in ("ours", "peer")
             if row[who] and (row[who].get("note") or row[who].get("pacing"))]
    lines += ["", "notes:", *notes] if notes else []
    m = report["machine"]
    lines.append(f"\n{m['cpus']} CPUs ({m['cpu_model']}), Linux {m['kernel']}; load average "
                 f"{m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end"
                 + ("; --smoke: tiny runs, the verdicts mean nothing" if report["smoke"] else ""))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> str:
    """A PNG: per part, ours against the peer (Gbit/s, CPU per frame, p99) and the ratio against its target."""
    rows = [r for r in report["parts"] if r["ours"] and r["peer"] and "error" not in r["peer"]]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from msm_bench import report as bench_report  # the plain built-in PNG, one bar per subject

        bench_report._plain_png({"results": [{"pps": 1e3 * (r[w].get("gbit_per_s") or 0.0) + 1,
                                              "subject": "native" if w == "ours" else "gstreamer"}
                                             for r in rows for w in ("ours", "peer")]}, path)
        return "builtin"
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    fig.suptitle(f"msm bench media: {report['machine']['cpus']} CPUs, {report['machine']['cpu_model']}", fontsize=11)
    names = [r["part"] for r in rows]
    xs = range(len(rows))
    for ax, key, label in ((axes[0][0], "gbit_per_s", "Gbit/s"), (axes[0][1], "cpu_ms_per_frame", "CPU ms per frame"),
                           (axes[1][0], "latency_ms_p99", "latency p99, ms (where measured)")):
        for off, who in ((-0.2, "ours"), (0.2, "peer")):
            ax.bar([x + off for x in xs], [r[who].get(key) or 0.0 for r in rows], 0.4, label=who)
        ax.set_xticks(list(xs), names)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    ax = axes[1][1]
    ax.bar(list(xs), [r["ratio"] or 0.0 for r in rows], 0.5, color=["tab:green" if r["verdict"] == "MET" else "tab:red"
                                                                     for r in rows])
    for x, r in zip(xs, rows, strict=True):
        ax.plot([x - 0.3, x + 0.3], [CPU_TARGET if r["part"] == "st2110" else THROUGHPUT_TARGET] * 2, "k--")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("ratio (log); dashes: its target")
    ax.set_yscale("log")
    ax.set_title("bytes/s ours / peer (st2110: relay CPU ours / peer)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


def write(report: dict[str, Any], json_path: str | None, plot_path: str | None,
          echo: Callable[[str], None] = print) -> None:
    """Print the table; --json and --plot files (the plot defaults to next to the JSON)."""
    echo("\n" + table(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, default=str) + "\n")
        echo(f"\nwrote {json_path}")
    plot_path = plot_path or (str(Path(json_path).with_suffix(".png")) if json_path else None)
    if plot_path:
        echo(f"wrote {plot_path} ({plot(report, Path(plot_path))})")


def failed(report: dict[str, Any]) -> list[str]:
    """Parts that ran and failed or gave numbers that cannot be right (not the ones absent here)."""
    return [f"{r['part']}: {r['verdict']}" for r in report["parts"]
            if r["status"] == "failed" or (r["status"] == "measured" and not r["valid"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msm_bench.media", description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.smoke, args.out)
    report = run([p.strip() for p in args.parts.split(",") if p.strip()], smoke=args.smoke,
                 command=" ".join(["python -m msm_bench.media", *(argv or sys.argv[1:])]))
    write(report, args.json, args.plot)
    return 1 if failed(report) else 0


if __name__ == "__main__":
    raise SystemExit(main())
