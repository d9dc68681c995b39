#!/usr/bin/env bash
# The vLLM sampler's integration test (test/vllm/): installs .venv-vllm if needed (scripts/setup-vllm.sh,
# cached like .venv by a stamp), then runs vLLM for real on erl-tiny. Kept out of `npm test` so that
# the main suite stays under 20 minutes on a fresh machine; .ci/run runs both.
set -uo pipefail
[ "$#" = 0 ] || { echo "test-vllm.sh: takes no arguments, got: $*" >&2; exit 2; }
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "set-up failed"; exit 1; }
bash scripts/setup-vllm.sh 2>&1 | grep -v "^WARNING: Location" || true
[ -x .venv-vllm/bin/python ] || [ -n "${ERL_VLLM_PYTHON:-}" ] || { echo "the vLLM virtualenv is missing"; exit 1; }
export ERL_TEST=1
node --import tsx --test --test-reporter=spec --test-concurrency=1 test/vllm/vllm-sampler.itest.ts
