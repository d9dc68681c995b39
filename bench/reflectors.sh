#!/usr/bin/env bash
# Reflector comparison (docs/reflectors.md#results): in-context ERL (erl-icl, no weight update) on
# FrozenLake with erl-tiny as the policy, and a second engine serving REFLECTOR over the OpenAI API
# (`erl engine serve --openai`) as the reflector. One run per seed; prints per run the second
# attempts' success under the reflector's rulebooks, memory writes, and the final evaluation under
# memory next to the initial prompt (same tasks and seeds).
#
#   bash bench/reflectors.sh models/erl-tiny runs/reflectors   # SEEDS="0 1 2" STEPS=4 by default
#   EXTRA="--set reflector.maxTokens=192" bash bench/reflectors.sh models/smollm2-135m-instruct runs/reflectors
#
# The runs and the logs go into OUT_DIR (created if missing; its parent must exist); nothing is
# written elsewhere. An unknown option is an error.
set -euo pipefail
usage="usage: bash bench/reflectors.sh <reflector model dir> <OUT_DIR>"
die() { echo "reflectors.sh: $*" >&2; echo "$usage" >&2; exit 2; }
pos=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) echo "$usage"; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) pos+=("$arg") ;;
  esac
done
[ "${#pos[@]}" = 2 ] || die "expected a model directory and an output folder"
REFLECTOR=${pos[0]}
OUT=${pos[1]}
[ -f "$REFLECTOR/config.json" ] || die "$REFLECTOR: not a model directory (no config.json)"
[ -d "$(dirname -- "$OUT")" ] || die "$OUT: its folder $(dirname -- "$OUT") does not exist"
[[ "${STEPS:-4}" =~ ^[1-9][0-9]{0,4}$ ]] || die "STEPS must be an integer from 1 to 99999, got ${STEPS}"
mkdir -p -- "$OUT"
REFLECTOR=$(cd -- "$REFLECTOR" && pwd)
OUT=$(cd -- "$OUT" && pwd)
cd "$(dirname "$0")/.."
NAME=$(basename "$REFLECTOR")
SEEDS=${SEEDS:-0 1 2}
STEPS=${STEPS:-4}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
export REFLECTOR_KEY
REFLECTOR_KEY=$(node -e 'console.log(require("crypto").randomBytes(16).toString("hex"))')

ERL_ENGINE_TOKEN=$REFLECTOR_KEY node bin/erl.mjs engine serve --openai --model "$REFLECTOR" --port "$PORT" \
  > "$OUT/reflector-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q "OpenAI-compatible API" "$OUT/reflector-server.log" && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/reflector-server.log"; exit 1; }
  sleep 1
done

for seed in $SEEDS; do
  run="icl-$NAME-seed$seed"
  rm -rf "$OUT/$run"
  node bin/erl.mjs train --config frozenlake-tiny --runs-dir "$OUT" --name "$run" \
    --set algo.name=erl-icl --set seed="$seed" --set steps="$STEPS" --set batchSize=4 --set algo.n=2 \
    --set data.evalTasks=16 --set eval.n=2 --set eval.every=0 --set eval.initial=false \
    --set reflector.kind=openai --set reflector.baseUrl="http://127.0.0.1:$PORT/v1" \
    --set reflector.model="$NAME" --set reflector.apiKeyEnv=REFLECTOR_KEY --set reflector.timeout=900 \
    --set reflector.concurrency=1 ${EXTRA:-} \
    > "$OUT/$run.log" 2>&1 \
    || { tail -20 "$OUT/$run.log"; exit 1; }
  node -e '
    const fs = require("fs");
    const dir = process.argv[1];
    const recs = fs.readFileSync(dir + "/metrics.jsonl", "utf8").trim().split("\n").map(JSON.parse);
    const train = recs.filter((r) => r.kind === "train");
    const ev = recs.filter((r) => r.kind === "eval").at(-1);
    const sum = (k) => train.reduce((a, r) => a + (r[k] ?? 0), 0);
    const seconds = sum("episodes/second");
    const ok2 = train.reduce((a, r) => a + (r["success/second"] ?? 0) * (r["episodes/second"] ?? 0), 0);
    const tags = train.reduce((a, r) => a + (r["reflection/tag_rate"] ?? 0) * (r["episodes/second"] ?? 0), 0);
    console.log(JSON.stringify({
      run: dir.split("/").pop(),
      firstSuccess: +(train.reduce((a, r) => a + r["success/first"], 0) / train.length).toFixed(3),
      secondAttempts: seconds,
      secondSuccess: +(ok2 / Math.max(1, seconds)).toFixed(3),
      tagRate: +(tags / Math.max(1, seconds)).toFixed(3),
      memoryWrites: sum("memory/updates"),
      reflectorLatency: +(sum("reflector/seconds") / Math.max(1, sum("reflector/calls"))).toFixed(2),
      evalUnderMemory: +ev["eval/reward"].toFixed(3),
      evalInitialPrompt: +ev["eval/initial_reward"].toFixed(3),
    }));
  ' "$OUT/$run"
done
