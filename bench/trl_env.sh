#!/usr/bin/env bash
# The separate environment bench/trl_update.py runs in: TRL's GRPOTrainer beside (not inside) the project's .venv.
#
#   bash bench/trl_env.sh            # creates /work/main/.venv-trl (or $TRL_VENV); idempotent
#
# torch is the local CPU wheel (pip finds torch==2.13.0 in /opt/wheels) and stays pinned by a constraints file for
# every later install, so nothing can pull a CUDA torch; transformers is pinned to the project's version so both
# sides of the comparison run the same modeling code. Then trl==1.16.*, or the newest 1.x when 1.16 is missing.
# The venv gets a `.gitignore` of `*` inside it (what `python -m venv` writes itself from Python 3.13 on), so git
# ignores it without any change to the repository's .gitignore.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRL_VENV:-$ROOT/.venv-trl}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
printf '*\n' >"$VENV/.gitignore"

CONSTRAINTS="$VENV/constraints.txt"
cat >"$CONSTRAINTS" <<'EOF'
# Pins of the TRL bench environment (written by bench/trl_env.sh): the local CPU torch wheel, and the project's
# transformers (constraints.txt at the repository root).
torch==2.13.0
transformers==5.19.0
EOF

PIP=("$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS")
"${PIP[@]}" torch==2.13.0
if ! "${PIP[@]}" 'trl==1.16.*'; then
  echo "trl 1.16 is not available: installing the newest trl 1.x" >&2
  "${PIP[@]}" 'trl>=1,<2'
fi

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

import torch

assert torch.version.cuda is None, f"a CUDA torch was installed: {torch.__version__}"
print({name: md.version(name) for name in ("torch", "transformers", "trl", "accelerate", "datasets")})
EOF
