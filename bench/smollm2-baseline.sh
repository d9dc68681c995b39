#!/usr/bin/env bash
# SmolLM2-135M-Instruct's first-attempt baseline on the three test splits, with the paper's prompts and
# the compact ones, then the summary table (bench/model-baseline.ts). On the 2-core development CPU the
# whole splits do not fit: ERL_BASELINE_TASKS (default 20) takes the first N tasks of each test split,
# one sample each at the evaluation sampling (T 0.7, top-p 0.8, top-k 20), replies of at most
# ERL_BASELINE_TURN_TOKENS (default 96) tokens, ERL_BASELINE_DTYPE (default auto: bf16 where the
# engine measures it faster, as on AMX; fp32 on AVX2) and one engine thread per run.
#
#   flock /tmp/erl-heavy.lock bash bench/smollm2-baseline.sh frozenlake paper     # one evaluation
#   node --import tsx bench/model-baseline.ts runs/baseline-smollm2/*.jsonl        # the table
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${ERL_BASELINE_OUT:-runs/baseline-smollm2}
TASKS=${ERL_BASELINE_TASKS:-20}
TURN=${ERL_BASELINE_TURN_TOKENS:-96}
mkdir -p "$OUT"
env=${1:?env}; profile=${2:?paper|compact}
case "$env" in
  hotpotqa) preset=hotpotqa-smol ;;
  *) preset=$env-tiny ;;
esac
file="$OUT/$env-$profile.jsonl"
rm -f "$file"
t0=$SECONDS
ERL_ENGINE_THREADS=${ERL_ENGINE_THREADS:-1} node bin/erl.mjs eval --model models/smollm2-135m-instruct --env "$env" \
  --config "$preset" --split test --tasks "$TASKS" --n 1 --seed 0 --out "$file" \
  --set model.dtype="${ERL_BASELINE_DTYPE:-auto}" --set model.lora=null --set algo.profile="$profile" \
  --set algo.maxTokensPerTurn="$TURN" --set algo.maxContextTokens=4096 --set algo.contextOverflow=shrink
echo "$env $profile: $(( SECONDS - t0 )) s"
