#!/usr/bin/env bash
# Installs the Tinker side's own virtualenv, .venv-tinker, apart from the engine's .venv so that the
# official SDK's and tinker-cookbook's pins never bind the engine's: torch (the engine's CPU build)
# first, then engine/requirements-tinker.txt (the tinker SDK and the engine's transformers), then
# tinker-cookbook 0.6.1 without its dependencies and then those dependencies less `tml-renderers`:
# the cookbook asks for tml-renderers>=0.4.1, which is not published for Python 3.11, and imports it
# only for the Inkling models and the audio recipes (its math-rl extra is installed: the minimal RL
# recipe grades answers with it). It runs `erl engine serve --tinker` and the `engine.kind: "tinker"` bridge (docs/tinker.md). About
# 1.5 GB and a few minutes the first time; afterwards a stamp file skips it until this script or the
# pins change.
#
# Environment:
#   ERL_TINKER_PYTHON  use this interpreter for the Tinker side instead of creating .venv-tinker
#                      (it needs the packages of engine/requirements-tinker.txt)
#   ERL_TINKER_TORCH   pip requirement for torch in that virtualenv (default torch==2.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .setup-stamps
if [ -n "${ERL_TINKER_PYTHON:-}" ]; then
  echo "[setup-tinker] using ERL_TINKER_PYTHON=$ERL_TINKER_PYTHON for the Tinker side"
  exit 0
fi
torch_spec=${ERL_TINKER_TORCH:-torch==2.13.0}
fp=$( (echo "$torch_spec"; cat "$0" engine/requirements-tinker.txt) | sha256sum | cut -c1-16)
if [ -x .venv-tinker/bin/python ] && [ "$(cat .setup-stamps/tinker 2>/dev/null)" = "$fp" ]; then
  echo "[setup-tinker] .venv-tinker is ready"
  exit 0
fi
echo "[setup-tinker] creating .venv-tinker (tinker SDK, tinker-cookbook; first time: a few minutes)"
rm -rf .venv-tinker
python3 -m venv .venv-tinker
pip=(.venv-tinker/bin/pip install --quiet --disable-pip-version-check)
"${pip[@]}" "$torch_spec"
"${pip[@]}" -r engine/requirements-tinker.txt
cookbook=tinker-cookbook==0.6.1
"${pip[@]}" --no-deps "$cookbook"
.venv-tinker/bin/python - "$cookbook" > .venv-tinker/requirements-cookbook.txt <<'PY'
import re
import sys
from importlib.metadata import distribution

name = re.split(r"[=<>!~ \[]", sys.argv[1], maxsplit=1)[0]
skip = {"torch", "tml-renderers", "tinker", "transformers"}
for req in distribution(name).requires or []:
    # The math-rl extra too: the cookbook's minimal RL loop grades GSM8K answers with it.
    if "extra ==" in req and "math-rl" not in req:
        continue
    req = req.split(";")[0].strip()
    base = re.split(r"[=<>!~ ;\[(]", req, maxsplit=1)[0].strip().lower().replace("_", "-")
    if base not in skip:
        print(req)
PY
"${pip[@]}" -r .venv-tinker/requirements-cookbook.txt
.venv-tinker/bin/python -c "import tinker, tinker_cookbook, importlib.metadata as m; print('[setup-tinker] tinker', m.version('tinker'), 'tinker-cookbook', m.version('tinker-cookbook'))"
echo "$fp" > .setup-stamps/tinker
