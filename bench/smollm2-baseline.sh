#!/usr/bin/env bash
# SmolLM2-135M-Instruct's first-attempt baseline on the three test splits, with the paper's prompts and
# the compact ones, then the summary table (bench/model-baseline.ts). On the 2-core development CPU the
# whole splits do not fit: ERL_BASELINE_TASKS (default 20) takes the first N tasks of each test split,
# one sample each at the evaluation sampling (T 0.7, top-p 0.8, top-k 20), replies of at most
# ERL_BASELINE_TURN_TOKENS (default 96) tokens, ERL_BASELINE_DTYPE (default auto: bf16 where the
# engine measures it faster, as on AMX; fp32 on AVX2) and one engine thread per run.
#
#   flock /tmp/erl-heavy.lock bash bench/smollm2-baseline.sh frozenlake paper runs/baseline-smollm2   # one evaluation
#   node --import tsx bench/model-baseline.ts runs/baseline-smollm2/*.jsonl        # the table
#
# The rollouts go into OUT_DIR/<env>-<profile>.jsonl (OUT_DIR created if missing; its parent must
# exist); nothing is written elsewhere. An unknown option or value is an error.
set -euo pipefail
usage="usage: bash bench/smollm2-baseline.sh <frozenlake|sokoban|hotpotqa> <paper|compact> <OUT_DIR>"
die() { echo "smollm2-baseline.sh: $*" >&2; echo "$usage" >&2; exit 2; }
pos=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) echo "$usage"; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) pos+=("$arg") ;;
  esac
done
[ "${#pos[@]}" -ge 1 ] || die "the env is required"
env=${pos[0]}
case "$env" in frozenlake|sokoban|hotpotqa) ;; *) die "env must be one of frozenlake, sokoban, hotpotqa; got $env" ;; esac
[ "${#pos[@]}" -ge 2 ] || die "the prompt profile is required"
profile=${pos[1]}
case "$profile" in paper|compact) ;; *) die "profile must be paper or compact; got $profile" ;; esac
[ "${#pos[@]}" = 3 ] || die "expected <env> <profile> <OUT_DIR>"
OUT=${pos[2]}
[ -d "$(dirname -- "$OUT")" ] || die "$OUT: its folder $(dirname -- "$OUT") does not exist"
TASKS=${ERL_BASELINE_TASKS:-20}
TURN=${ERL_BASELINE_TURN_TOKENS:-96}
[[ "$TASKS" =~ ^[1-9][0-9]{0,5}$ ]] || die "ERL_BASELINE_TASKS must be a positive integer, got $TASKS"
[[ "$TURN" =~ ^[1-9][0-9]{0,5}$ ]] || die "ERL_BASELINE_TURN_TOKENS must be a positive integer, got $TURN"
mkdir -p -- "$OUT"
OUT=$(cd -- "$OUT" && pwd)
cd "$(dirname "$0")/.."
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
