#!/usr/bin/env bash
# The whole test suite: install what is needed, check layering and generated
# code, then run pytest (unit, integration, end-to-end against real peers).
# Extra arguments go to pytest, e.g. scripts/test.sh -k stub -x
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/mypy msm                       # strict (pyproject.toml), every package
.venv/bin/mypy bench/msm_bench
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q -ra "$@"
fi
# Unit tests are CPU-bound and independent of each other: two workers. End-to-end and
# integration tests time real peers, create namespaces and measure loss and jitter on a
# shared machine: one at a time. Both run whatever the first gives; either failing fails.
status=0
.venv/bin/python -m pytest -q -ra -n 2 tests/unit || status=$?
.venv/bin/python -m pytest -q -ra --durations=20 tests/e2e tests/integration || status=$?
exit "$status"
