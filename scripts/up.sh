#!/usr/bin/env bash
# The main job: install what is needed, then run the local mesh.
# With no arguments it serves the built-in demo at rtsp://127.0.0.1:8554/demo;
# any arguments are passed to `msm up` instead (see `msm up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ $# -eq 0 ]; then set -- --demo; fi
exec .venv/bin/msm up "$@"
