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
.venv/bin/python -m pytest -q -ra "$@"
