"""Every fuzz harness under ``fuzz/`` runs briefly from its seeds without a crash.

Each harness runs in its own process (libFuzzer owns the process) for a few
seconds, starting from its seed corpus in a temporary directory; all of them are
started together, so the smoke costs the suite one run's time.  Known parser
bugs (each harness's ``KNOWN``) are stepped over here so that the short run keeps
looking for new ones; every saved crash under ``fuzz/crashes/<harness>/`` is
replayed without that leniency and is expected to fail while its bug stands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
HARNESSES = sorted(path.stem.removeprefix("fuzz_") for path in FUZZ.glob("fuzz_*.py"))
SECONDS = 2

try:
    import atheris  # noqa: F401
except ImportError as exc:  # pragma: no cover - atheris ships with the dev venv
    ATHERIS_MISSING: str | None = f"atheris cannot be imported ({exc}); the fuzz smoke runs need it"
else:
    ATHERIS_MISSING = None

pytestmark = pytest.mark.skipif(ATHERIS_MISSING is not None, reason=ATHERIS_MISSING or "")


def _run(harness: str, *args: str, tolerate_known: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("MSM_FUZZ_TOLERATE_KNOWN", None)
    if tolerate_known:
        env["MSM_FUZZ_TOLERATE_KNOWN"] = "1"
    return subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{harness}.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=SECONDS * 10 + 30, check=False)


def _report(result: subprocess.CompletedProcess[str], artifacts: Path) -> str:
    lines = [f"exit status {result.returncode}", result.stderr[-4000:]]
    for crash in sorted(artifacts.glob("*")):
        data = crash.read_bytes()
        lines.append(f"crashing input {crash.name} ({len(data)} bytes): {data[:2000]!r}")
    return "\n".join(lines)


def test_every_parser_has_a_harness() -> None:
    assert set(HARNESSES) >= {"rtsp_reader", "rtsp_server", "sdp", "rtp", "rtcp", "rtsp_fields",
                              "admission_review", "cni_config"}


@dataclass
class _Launched:
    proc: subprocess.Popen[str]
    artifacts: Path


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, _Launched]]:
    """Every harness's short run, all started at once: each fuzzes for SECONDS of wall time
    whatever the others do, so running them side by side costs the suite one run, not one per harness."""
    env = dict(os.environ, MSM_FUZZ_TOLERATE_KNOWN="1")
    runs: dict[str, _Launched] = {}
    for harness in HARNESSES:
        root = tmp_path_factory.mktemp(f"fuzz-{harness}")
        artifacts = root / "crashes"
        artifacts.mkdir()
        proc = subprocess.Popen(
            [sys.executable, str(FUZZ / f"fuzz_{harness}.py"), f"-max_total_time={SECONDS}", "-seed=1",
             "-timeout=10", "-rss_limit_mb=1024", f"-artifact_prefix={artifacts}/", str(root / "corpus")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs[harness] = _Launched(proc, artifacts)
    try:
        yield runs
    finally:
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
            run.proc.communicate()


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_runs_clean(harness: str, launched: dict[str, _Launched]) -> None:
    run = launched[harness]
    stdout, stderr = run.proc.communicate(timeout=SECONDS * 10 + 30)
    result = subprocess.CompletedProcess(run.proc.args, run.proc.returncode, stdout, stderr)
    assert result.returncode == 0 and not any(run.artifacts.iterdir()), _report(result, run.artifacts)
    assert "Done " in result.stderr, result.stderr[-2000:]


# Saved crashing inputs (fuzz/crashes/<harness>/<file>) -> the parser bug each one shows.
# While a bug stands its replay fails, so it is an xfail; once the parser is fixed the replay
# passes, the strict xfail turns red, and the entry (and the harness's KNOWN) goes.
KNOWN_CRASHES: dict[str, str] = {}   # saved crash -> the open bug it shows (a strict xfail until fixed)


def _saved_crashes() -> list[object]:
    params: list[object] = []
    for path in sorted((FUZZ / "crashes").glob("*/*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        key = f"{path.parent.name}/{path.name}"
        reason = KNOWN_CRASHES.get(key)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(path.parent.name, path, marks=marks, id=key))
    return params or [pytest.param(None, None, marks=pytest.mark.skip(reason="no saved crashes"))]


@pytest.mark.parametrize(("harness", "crash"), _saved_crashes())
def test_saved_crash_replays_clean(harness: str, crash: Path) -> None:
    result = _run(harness, "-runs=1", str(crash), tolerate_known=False)
    assert result.returncode == 0, result.stderr[-3000:]
