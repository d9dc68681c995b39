#!/usr/bin/env bash
# README command one: set up what is missing, then run the ERL-vs-RLVR demo on erl-tiny (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/erl.mjs demo "$@"
