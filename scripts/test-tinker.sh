#!/usr/bin/env bash
# The Tinker integration tests (test/tinker/): installs .venv-tinker if needed (scripts/setup-tinker.sh,
# cached by a stamp), then runs the official tinker SDK and tinker-cookbook's recipes against
# `erl engine serve --tinker` on erl-tiny, and `erl train` with engine.kind "tinker" against a local
# run. Kept out of `npm test` (its own virtualenv, several minutes); .ci/run runs it.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "set-up failed"; exit 1; }
bash scripts/setup-tinker.sh 2>&1 | grep -v "^WARNING: Location" || true
[ -x .venv-tinker/bin/python ] || [ -n "${ERL_TINKER_PYTHON:-}" ] || { echo "the Tinker virtualenv is missing"; exit 1; }
export ERL_TEST=1 ERL_ENGINE_THREADS=${ERL_ENGINE_THREADS:-1}
node --import tsx --test --test-reporter=spec --test-concurrency=1 \
  test/tinker/sdk.itest.ts test/tinker/train.itest.ts test/tinker/cookbook.itest.ts
