"""What the harnesses under ``fuzz/`` share: seed corpora, known bugs, the run loop.

A harness is ``fuzz/fuzz_<name>.py``; run it with libFuzzer flags and a corpus directory::

    .venv/bin/python fuzz/fuzz_sdp.py -max_total_time=60 fuzz/corpus/sdp

A corpus directory that does not exist yet, or is empty, is first filled with the
harness's seeds: the recorded captures under ``tests/data`` it names, plus any
hand-written inputs under ``fuzz/seeds/<name>/``.  ``fuzz/corpus/`` is scratch
space (ignored by git); only the seeds are kept.

Known bugs: a harness lists the parser bugs already reported (``KnownBug``, each
with its saved input under ``fuzz/crashes/<name>/``).  By default a known bug is a
crash like any other; with ``MSM_FUZZ_TOLERATE_KNOWN=1`` in the environment (the
smoke test sets it) the harness counts it as expected, so a short run keeps
looking for new bugs instead of stopping at the old one.  The smoke test also
replays every saved crash without that variable, so a fixed bug shows up.
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
DATA_DIR = ROOT / "tests" / "data"
SEEDS_DIR = FUZZ_DIR / "seeds"
CRASHES_DIR = FUZZ_DIR / "crashes"

TOLERATE_KNOWN = os.environ.get("MSM_FUZZ_TOLERATE_KNOWN") == "1"


@dataclass(frozen=True)
class KnownBug:
    """A reported parser bug: an exception of ``kind`` raised with ``where`` in its traceback."""

    kind: type[BaseException]
    where: str  # a function name in the traceback, e.g. "decode_json"
    summary: str

    def matches(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.kind):
            return False
        return any(frame.name == self.where for frame in traceback.extract_tb(exc.__traceback__))


def tolerate(exc: BaseException, known: Iterable[KnownBug]) -> bool:
    """Whether ``exc`` is a known bug this run is told to step over."""
    return TOLERATE_KNOWN and any(bug.matches(exc) for bug in known)


def data_files(*patterns: str) -> list[Path]:
    """Files under ``tests/data`` matching the glob ``patterns`` (sorted, no READMEs)."""
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in DATA_DIR.glob(pattern) if p.is_file() and p.name != "README.md")
    return sorted(found)


def seeds(name: str, patterns: Iterable[str]) -> list[bytes]:
    """The seed inputs of harness ``name``: recorded captures, then ``fuzz/seeds/<name>/``."""
    inputs = [path.read_bytes() for path in data_files(*patterns)]
    own = SEEDS_DIR / name
    if own.is_dir():
        inputs += [path.read_bytes() for path in sorted(own.iterdir()) if path.is_file()]
    return inputs


def fill_corpus(argv: list[str], inputs: Iterable[bytes]) -> None:
    """Write ``inputs`` into every corpus directory named in ``argv`` that is missing or empty.

    Positional arguments that are existing files are inputs to replay, left alone.
    """
    inputs = list(inputs)
    for arg in argv[1:]:
        if arg.startswith("-"):
            continue
        path = Path(arg)
        if path.is_file():
            continue
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            continue
        for data in inputs:
            (path / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def main(test_one: Callable[[bytes], None], name: str, inputs: Iterable[bytes]) -> None:
    """Fill the corpus directories from ``inputs``, then hand over to libFuzzer."""
    import atheris

    argv = list(sys.argv)
    fill_corpus(argv, inputs)
    atheris.Setup(argv, test_one)
    atheris.Fuzz()
