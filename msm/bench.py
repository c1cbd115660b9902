"""``msm bench``: the data plane's benchmark (the harness is in ``bench/``); ``msm bench media``: the media transports'.

Registered in ``msm.cli`` with :func:`add_parser`; also runnable on its own as
``python -m msm.bench``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msm.sdk.errors import ConfigError

if TYPE_CHECKING:
    from msm_bench import harness
SMOKE_DURATION = 0.3   # seconds per run in --smoke: enough for thousands of packets, a few seconds in all
SMOKE_STREAMS = 50     # the "many streams" case in --smoke (1000 in a full run)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``add_subparsers()`` object."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help="benchmark the RTP data plane against the machine's limit and GStreamer",
        description="On loopback, with 1316-byte RTP packets: the machine's limit (a C sender to a C "
        "receiver, recvmmsg/sendmmsg and UDP GSO), the proxy's native and pure-Python engines, and "
        "GStreamer (udpsrc ! udpsink / multiudpsink); cases 1:1, 1:10, 1:100 fan-out and 1000 low-rate "
        "streams. Prints a table and the targets; --json and --plot write the results.")
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true",
                   help=f"a quick sanity run (about 10 s: {SMOKE_DURATION:g} s per run, fewer cases); "
                   "checks that it works and the numbers are sane, not that targets are met")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="seconds per run (default 2)")
    p.add_argument("--cases", metavar="LIST", help="comma-separated: 1:1,1:10,1:100,1000x1 (default all)")
    p.add_argument("--subjects", metavar="LIST",
                   help="comma-separated: native,python,gstreamer (default all); native-srtp and python-srtp "
                        "are the same engines with SRTP on every leg (-srtp-gcm: AEAD_AES_128_GCM)")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="after the runs, forward 1:1 at half load through the native proxy this long with "
                   "legs churning, sampling its memory (600 for the 10-minute soak)")
    p.add_argument("--nice", type=int, default=-10, metavar="N",
                   help="run every process of the benchmark at this nice level where permitted (default -10; "
                   "0 to leave priorities alone)")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--plot", metavar="FILE", help="write a PNG plot (default: next to --json, .png)")
    p.set_defaults(func=run)
    modes = p.add_subparsers(title="other benchmarks", metavar="media", dest="mode")
    configure_media(modes.add_parser(
        "media", help="the media transports (memif, SDK, libfabric, ST 2110) against dpdk-testpmd, fi_pingpong "
        "and GStreamer: `msm bench media --help`",
        description="The media-transport benchmarks, one after the other, each in its own process group: "
        "frames/s, Gbit/s, CPU per frame and latency p50/p99 of ours and of its peer, the ratio, the target and "
        "MET / NOT MET (or 'invalid: why' for numbers that cannot be right, 'not available: why' for a peer "
        "this machine lacks). Parts: memif (frames app -> proxy -> app over memif vs two dpdk-testpmd over memif, "
        "bytes/s, target >= 0.8); sdk (the same through the SDK and the real media agent); fabric-tcp and "
        "fabric-shm (the libfabric frame link vs fi_pingpong, same provider, one 1080p 10-bit frame per "
        "message, bytes/s, target >= 0.8); st2110 (ST 2110-20 1080p30 10-bit in and out of our bridges vs "
        "GStreamer's rtpvrawdepay ! rtpvrawpay: zero loss and relay CPU <= 1/3 of GStreamer's)."))


MEDIA_PARTS = "memif,sdk,fabric-tcp,fabric-shm,st2110"


def configure_media(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", default=MEDIA_PARTS, metavar="LIST",
                   help=f"comma-separated, run in this order (default {MEDIA_PARTS})")
    p.add_argument("--smoke", action="store_true",
                   help="tiny runs (about 40 s in all): checks that every part runs and its numbers are sane, "
                   "not that targets are met")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--plot", metavar="FILE", help="write a PNG plot (default: next to --json, .png)")
    p.set_defaults(func=run_media)


def run_media(opts: argparse.Namespace) -> int:
    """``msm bench media``: exit 1 if a part failed or gave numbers that cannot be right, 2 on bad flags."""
    from msm_bench import media

    parts = [s.strip() for s in opts.parts.split(",") if s.strip()]
    command = "msm bench media" + "".join(f" {flag} {value}" for flag, value in (
        ("--parts", opts.parts if opts.parts != MEDIA_PARTS else None), ("--json", opts.json),
        ("--plot", opts.plot)) if value) + (" --smoke" if opts.smoke else "")
    try:
        report = media.run(parts, smoke=opts.smoke, command=command, echo=lambda line: print(line, flush=True))
    except ValueError as exc:
        print(f"msm bench media: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the running part's processes are already ended
        print("msm bench media: interrupted", file=sys.stderr)
        return 130
    media.write(report, opts.json, opts.plot)
    problems = media.failed(report)
    if problems:
        print("msm bench media: these parts did not give usable numbers:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 1
    return 0


def _sane(report: dict[str, Any]) -> list[str]:
    """What makes a result nonsense (not slow: wrong). A smoke run fails on any of these."""
    problems = []
    for r in report["results"]:
        where = f"{r['case']}/{r['subject']}/{r['load']}"
        for key in ("pps", "gbps", "loss"):
            value = r[key]
            if not isinstance(value, int | float) or math.isnan(value) or value < 0:
                problems.append(f"{where}: {key} is {value!r}")
        if not 0.0 <= r["loss"] <= 1.0:
            problems.append(f"{where}: loss {r['loss']} outside 0..1")
        if r["delivered"] > r["expected"] * 1.001 + 10:
            problems.append(f"{where}: delivered {r['delivered']} > expected {r['expected']}")
        if r["subject"] in ("limit", "direct", "native") and r["delivered"] == 0:
            problems.append(f"{where}: nothing arrived")
    if not report["results"]:
        problems.append("no results")
    return problems


def settings_of(opts: argparse.Namespace) -> harness.Settings:
    """The harness settings the flags ask for (ConfigError names an unknown case or subject)."""
    from msm_bench import harness

    settings = harness.Settings()
    if opts.smoke:
        settings.smoke = True
        settings.duration = SMOKE_DURATION
        settings.cases = ("1:1", "1:10", "1000x1")
        settings.streams = SMOKE_STREAMS
    if opts.duration:
        settings.duration = opts.duration
    if opts.cases:
        cases = tuple(c.strip() for c in opts.cases.split(",") if c.strip())
        unknown = [c for c in cases if c not in harness.CASES]
        if unknown:
            raise ConfigError(f"unknown case {', '.join(unknown)} (have {', '.join(harness.CASES)})")
        settings.cases = cases
    if opts.subjects:
        subjects = tuple(s.strip() for s in opts.subjects.split(",") if s.strip())
        unknown = [s for s in subjects if s not in ("native", "python", "gstreamer", "native-srtp", "python-srtp",
                                                 "native-srtp-gcm", "python-srtp-gcm")]
        if unknown:
            raise ConfigError(f"unknown subject {', '.join(unknown)}")
        settings.subjects = subjects
    settings.soak = opts.soak or 0.0
    settings.nice = opts.nice
    return settings


def run(opts: argparse.Namespace) -> int:
    from msm_bench import harness

    try:
        settings = settings_of(opts)
    except ConfigError as exc:
        print(f"msm bench: {exc}", file=sys.stderr)
        return 2
    try:
        result = harness.Bench(settings, echo=lambda line: print(line, flush=True)).run()
    except RuntimeError as exc:
        print(f"msm bench: {exc}", file=sys.stderr)
        return 1
    _print_report(result, opts)
    problems = _sane(result)
    if problems:
        print("msm bench: results are not sane:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


def _print_report(result: dict[str, Any], opts: argparse.Namespace) -> None:
    """The table and targets on stdout; --json and --plot files."""
    from msm_bench import report

    m = result["machine"]
    print(f"\n{m['cpus']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, {m['gstreamer']}; "
          f"load average {m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end")
    print()
    print(report.table(result))
    print()
    print(report.targets_text(result))
    if result["skipped"]:
        print("\nnot measured: " + "; ".join(f"{k}: {v}" for k, v in result["skipped"].items()))
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {opts.json}")
    plot_path = opts.plot or (str(Path(opts.json).with_suffix(".png")) if opts.json else None)
    if plot_path:
        how = report.plot(result, Path(plot_path))
        print(f"wrote {plot_path} ({how})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msm bench")
    configure(parser)
    opts = parser.parse_args(argv)
    return int(opts.func(opts))


if __name__ == "__main__":
    raise SystemExit(main())
