#!/usr/bin/env bash
# The GPU check: everything this project can measure on one CUDA GPU in under 8 minutes, with no
# network and no vLLM. Writes log.txt, summary.md and the figures (JSON) into OUT_DIR.
#
#   bash bench/gpu-check.sh OUT_DIR             # on a GPU machine (torch >= 2.11 with CUDA, transformers)
#   bash bench/gpu-check.sh OUT_DIR --dry-run   # on CPU: the same steps, tiny sizes, gloo instead of NCCL
#                                               # (the flag may come first)
#
# Steps (each under its own time limit):
#   1. environment: GPU, driver, torch, transformers
#   2. the engine benchmark on CUDA (bench/engine_bench.py --quick --device cuda)
#   3. sampling and training throughput of a randomly initialised Qwen3-0.6B-shaped bf16 model against
#      prime-rl's reported 11.9k tokens/s for 0.6B full fine-tuning on one H100 (bench/gpu_throughput.py)
#   4. one NCCL rank under torchrun equal to the plain engine (engine/tests/test_ranks.py, 1 rank, cuda)
#   5. the engine's model tests on CUDA (engine/tests with ERL_TEST_DEVICE=cuda)
#
# Python: $ERL_PYTHON, else python3 (or .venv/bin/python in a dry run). Pure-Python packages the GPU
# machine lacks (pytest, peft) can travel in .gpu-pydeps/ (made here by `bash bench/gpu-check.sh
# --prepare`, about 16 MB), which is put on PYTHONPATH when present.
#
# Arguments: OUT_DIR is required (created if missing; its parent must exist) and everything is written
# there; an unknown option is an error. Nothing is written outside OUT_DIR (no bytecode either).
set -uo pipefail
usage="usage: bash bench/gpu-check.sh OUT_DIR [--dry-run] | bash bench/gpu-check.sh --prepare"
die() { echo "gpu-check.sh: $*" >&2; echo "$usage" >&2; exit 2; }
out="" dry=0 prepare=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    --prepare) prepare=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) [ -z "$out" ] || die "one OUT_DIR only (got $out and $arg)"; out=$arg ;;
  esac
done
if [ "$prepare" = 1 ]; then
  [ -z "$out" ] && [ "$dry" = 0 ] || die "--prepare takes no other arguments"
elif [ -z "$out" ]; then
  die "OUT_DIR is required"
else
  parent=$(dirname -- "$out")
  [ -d "$parent" ] || die "$out: its folder $parent does not exist"
  [ -e "$out" ] && [ ! -d "$out" ] && die "$out exists and is not a folder"
  mkdir -- "$out" 2>/dev/null || [ -d "$out" ] || die "$out: cannot create the folder"
  out=$(cd -- "$out" && pwd) || die "$out: cannot enter the folder"
fi
cd "$(dirname "$0")/.."
repo=$PWD
export PYTHONDONTWRITEBYTECODE=1

if [ "$prepare" = 1 ]; then
  rm -rf .gpu-pydeps
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --target .gpu-pydeps \
    pytest==9.2.0 pluggy iniconfig peft==0.21.2 accelerate==1.15.0 2>&1 | grep -v "^WARNING: Location" || true
  rm -rf .gpu-pydeps/bin
  du -sh .gpu-pydeps
  exit 0
fi

log=$out/log.txt
summary=$out/summary.md
: > "$log"
if [ "$dry" = 1 ]; then
  py=${ERL_PYTHON:-.venv/bin/python}
  dev=cpu
else
  py=${ERL_PYTHON:-python3}
  dev=cuda
fi
export PYTHONPATH="$repo/engine${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu-pydeps ] && export PYTHONPATH="$PYTHONPATH:$repo/.gpu-pydeps"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ "$dry" = 1 ] && echo ' (DRY RUN on CPU: no GPU figures)')"
  echo
  echo "| step | result | seconds |"
  echo "| --- | --- | --- |"
} > "$summary"

# Time limits: on the GPU they add up to under 8 minutes; a dry run on a shared CPU gets more.
lim() { if [ "$dry" = 1 ]; then echo "$2"; else echo "$1"; fi; }

step() { # name, time limit (s), command...
  local name=$1 limit=$2
  shift 2
  echo "===== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  local res="ok"
  [ "$rc" = 124 ] && res="TIMEOUT"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && res="FAILED (exit $rc)"
  echo "----- $name: $res in $((SECONDS - t0))s" | tee -a "$log"
  echo "| $name | $res | $((SECONDS - t0)) |" >> "$summary"
}

step environment $(lim 45 180) bash -c "command -v nvidia-smi >/dev/null && nvidia-smi; $py -c '
import sys, torch, transformers
print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"available\", torch.cuda.is_available(), \"transformers\", transformers.__version__)
if torch.cuda.is_available(): print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory // 2**30, \"GiB\")
for m in (\"peft\", \"pytest\", \"safetensors\", \"accelerate\"):
    try: __import__(m); print(m, \"present\")
    except ImportError: print(m, \"MISSING (bash bench/gpu-check.sh --prepare, then carry .gpu-pydeps)\")
'"
if [ "$dry" = 1 ]; then
  step engine-bench 400 "$py" bench/engine_bench.py --quick --only train --device cpu
else
  step engine-bench 90 "$py" bench/engine_bench.py --quick --device cuda
fi
step qwen3-0.6b-throughput $(lim 150 300) "$py" bench/gpu_throughput.py --device "$dev" --out "$out/throughput.json" \
  $([ "$dry" = 1 ] && echo --dry-run)
step one-rank-under-torchrun $(lim 120 600) env ERL_TEST_RANKS=1 ERL_TEST_DEVICE="$dev" \
  "$py" -m pytest -q -p no:cacheprovider engine/tests/test_ranks.py
if [ "$dry" = 1 ]; then
  step engine-tests-on-device 300 env ERL_TEST_DEVICE=cpu "$py" -m pytest -q -p no:cacheprovider \
    engine/tests/test_engine.py
else
  step engine-tests-on-device 70 env ERL_TEST_DEVICE=cuda "$py" -m pytest -q -p no:cacheprovider \
    engine/tests/test_engine.py engine/tests/test_sampler.py engine/tests/test_losses.py
fi

if [ -f "$out/throughput.json" ]; then
  {
    echo
    echo "Throughput (bench/gpu_throughput.py):"
    echo
    echo '```json'
    cat "$out/throughput.json"
    echo
    echo '```'
  } >> "$summary"
fi
echo >> "$summary"
echo "Total: $(( $(date +%s) - start ))s. Full output: log.txt." >> "$summary"
cat "$summary"
grep -q "FAILED\|TIMEOUT" "$summary" && exit 1
exit 0
