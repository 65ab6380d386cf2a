#!/usr/bin/env bash
# The full test suite: set-up, lint, type check, then every test except those needing a GPU.
# Extra arguments go to pytest (e.g. scripts/test.sh -k schedule).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${VENV:-.venv}

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy" services trainer reward_server

set +e
"$VENV/bin/python" -m pytest -m "not gpu" -p no:cacheprovider --durations=25 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
