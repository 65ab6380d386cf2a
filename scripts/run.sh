#!/usr/bin/env bash
# The main job on the embedded default (local processes, embedded Redis, CPU). Extra arguments go to `rlvr run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/rlvr run --config deploy/presets/tiny-cpu.toml "$@"
