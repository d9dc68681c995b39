#!/usr/bin/env bash
# Reflector comparison (docs/reflectors.md#results): in-context ERL (erl-icl, no weight update) on
# FrozenLake with erl-tiny as the policy, and a second engine serving REFLECTOR over the OpenAI API
# (`erl engine serve --openai`) as the reflector. One run per seed; prints per run the second
# attempts' success under the reflector's rulebooks, memory writes, and the final evaluation under
# memory next to the initial prompt (same tasks and seeds).
#
#   bash bench/reflectors.sh models/erl-tiny                  # SEEDS="0 1 2" STEPS=4 by default
#   EXTRA="--set reflector.maxTokens=192" bash bench/reflectors.sh models/smollm2-135m-instruct
set -euo pipefail
cd "$(dirname "$0")/.."
REFLECTOR=${1:?usage: bench/reflectors.sh <model dir>}
NAME=$(basename "$REFLECTOR")
SEEDS=${SEEDS:-0 1 2}
STEPS=${STEPS:-4}
OUT=${OUT:-runs/reflectors}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
export REFLECTOR_KEY
REFLECTOR_KEY=$(node -e 'console.log(require("crypto").randomBytes(16).toString("hex"))')

ERL_ENGINE_TOKEN=$REFLECTOR_KEY node bin/erl.mjs engine serve --openai --model "$REFLECTOR" --port "$PORT" \
  > "/tmp/erl-reflector-$PORT.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q "OpenAI-compatible API" "/tmp/erl-reflector-$PORT.log" && break
  kill -0 $SERVER 2>/dev/null || { cat "/tmp/erl-reflector-$PORT.log"; exit 1; }
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
    > "/tmp/erl-$run.log" 2>&1 \
    || { tail -20 "/tmp/erl-$run.log"; exit 1; }
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
