#!/usr/bin/env bash
# Trains the tokenizer, the Gemma 4 target, its MTP assistant and its DFlash drafter end to end.
#
#   bash tools/train/run_all.sh OUT [--smoke] [--pack DIR] [--fixtures DIR]
#
# OUT/hf/{target,assistant,dflash}/  HF folders in the layouts of shared/fixtures/hf/{dense,assistant,dflash}
# OUT/curves/*.png (+ .json)        training curves
# OUT/metrics.json                  held-out perplexity, losses, acceptance, seeds, timings, sizes
# OUT/logs/*.log, OUT/work/         per-stage logs; corpus split, tokenizer, token and generated data
#
# --smoke         toy sizes, a few steps each: the whole pipeline in ~1-2 minutes on a CPU
# --pack DIR      also writes DIR/train-bundle.tar.gz.part-NN (15 MiB pieces of OUT without work/),
#                 DIR/metrics.json and DIR/run.log (the device machine returns at most 8 files of
#                 16 MiB each); reassemble with: cat train-bundle.tar.gz.part-* | tar xz
# --fixtures DIR  shared/fixtures: also check the drafter modules against the fixture references
#                 (default: ../shared/fixtures or shared/fixtures relative to the repo, if present)
# --deadline S    wall-clock budget of the whole run in seconds (default 540; 0 = none, the smoke
#                 default): the target's and the drafters' training budgets shrink to fit it
# --dflash-seconds S  DFlash's training budget (default 160, as the assistant's)
# --dflash-steps N    DFlash's planned steps (default 4000)
# --dflash-args "A"   more arguments for dflash.py train (e.g. "--target-layer-ids 1 3 4 5 --layers 5")
# --target-gguf F --template D
#                 train drafters for an existing target instead of a new one: F (any GGUF type,
#                 e.g. the shipped assets/specula-py-target.q4_k_m.gguf) is exported to OUT/hf/target
#                 with f32 weights by `xtask gguf-to-hf` (binary: $XTASK, default target/release/xtask)
#                 and D's config.json and tokenizer; the tokenizer is reused, not retrained
# --drafters LIST     which drafters to train: assistant,dflash (default), assistant, dflash or none
# Environment: PYTHON (default python3), SEED (default 1234).
set -euo pipefail

usage() { sed -n '2,29p' "$0"; exit 2; }
[[ $# -ge 1 ]] || usage
OUT=$1; shift
SMOKE=0; PACK=""; FIXTURES=""; DEADLINE=""; DFLASH_SECS=""; DFLASH_STEPS=""; DFLASH_EXTRA=""
TARGET_GGUF=""; TEMPLATE=""; DRAFTERS="assistant,dflash"
while [[ $# -gt 0 ]]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --pack) PACK=$2; shift ;;
    --fixtures) FIXTURES=$2; shift ;;
    --deadline) DEADLINE=$2; shift ;;
    --dflash-seconds) DFLASH_SECS=$2; shift ;;
    --dflash-steps) DFLASH_STEPS=$2; shift ;;
    --dflash-args) DFLASH_EXTRA=$2; shift ;;
    --target-gguf) TARGET_GGUF=$2; shift ;;
    --template) TEMPLATE=$2; shift ;;
    --drafters) DRAFTERS=$2; shift ;;
    *) usage ;;
  esac
  shift
done

[[ -n $TARGET_GGUF && -z $TEMPLATE || -z $TARGET_GGUF && -n $TEMPLATE ]] && usage
case $DRAFTERS in assistant,dflash|dflash,assistant|assistant|dflash|none) ;; *) usage ;; esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [[ -n $TARGET_GGUF ]]; then
  TARGET_GGUF=$(realpath "$TARGET_GGUF"); TEMPLATE=$(realpath "$TEMPLATE")
  XTASK=$(realpath -m "${XTASK:-$REPO/target/release/xtask}")
  [[ -x $XTASK ]] || { echo "no xtask binary at $XTASK: build it (cargo build --release -p xtask) or set XTASK"; exit 2; }
fi
PY=${PYTHON:-python3}
SEED=${SEED:-1234}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
if [[ -z $FIXTURES ]]; then
  for d in "$REPO/shared/fixtures" "$REPO/../shared/fixtures"; do
    [[ -f $d/assistant.ref.safetensors ]] && { FIXTURES=$(cd "$d" && pwd); break; }
  done
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work; HF=$OUT/hf; CURVES=$OUT/curves; LOGS=$OUT/logs
mkdir -p "$WORK" "$HF" "$CURVES" "$LOGS"
exec > >(tee "$OUT/run.log") 2>&1

GPU=$($PY -c 'import torch; print(int(torch.cuda.is_available()))')
echo "run_all: OUT=$OUT smoke=$SMOKE gpu=$GPU seed=$SEED fixtures=${FIXTURES:-none} python=$($PY -V 2>&1)"
$PY - "$WORK/run.json" "$SMOKE" "$SEED" "$GPU" <<'EOF'
import json, subprocess, sys, time
path, smoke, seed, gpu = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4] == "1"
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    commit = None
json.dump({"smoke": smoke, "seed": seed, "gpu": gpu, "commit": commit, "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
          open(path, "w"), indent=1)
EOF

if [[ $SMOKE == 1 ]]; then
  # One intra-op thread: toy tensors gain nothing from more, and it keeps a shared CPU from thrashing.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  CORPUS_ARGS=(--max-files 60)
  TOK_ARGS=(--vocab-size 512 --check-files 4)
  TARGET_ARGS=(--hidden 64 --ffn 128 --heads 2 --kv-heads 2 --head-dim 32 --global-head-dim 64 --window 32
               --seq 128 --batch 8 --max-steps 60 --log-every 20 --eval-every 30 --eval-windows 8
               --sample-tokens 24)
  GEN_ARGS=(--seq 96 --n-train 64 --train-prompt-lens 16 32 --n-heldout 6 --heldout-prompt-len 24 --gen-batch 32)
  ASSIST_ARGS=(--hidden 64 --ffn 128 --heads 2 --batch 8 --steps 40 --log-every 10 --eval-every 20
               --eval-seqs-during 3)
  DFLASH_ARGS=(--layers 2 --heads 2 --kv-heads 1 --head-dim 32 --ffn 128 --anchors 4 --batch 8 --steps 40
               --log-every 10 --eval-every 20 --eval-seqs-during 2)
else
  CORPUS_ARGS=()
  TOK_ARGS=(--vocab-size 4096)
  TARGET_ARGS=()
  GEN_ARGS=()
  ASSIST_ARGS=()
  DFLASH_ARGS=()
fi
[[ -n $FIXTURES ]] && TOK_ARGS+=(--fixture "$FIXTURES/hf/dense")
if [[ $SMOKE == 1 ]]; then
  default_secs() { echo 60; }
  DEADLINE=${DEADLINE:-0}
else
  default_secs() { case $1 in target) echo 150 ;; drafter) echo 160 ;; esac; }
  DEADLINE=${DEADLINE:-540}
fi

declare -A T   # wall milliseconds per stage
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { printf '%d.%03d' $(( $1 / 1000 )) $(( $1 % 1000 )); }
quiet() { sed -u -e '/^Loading weights/d' -e '/^Writing model shards/d'; }
stage() {  # stage NAME CMD... : runs with its log, records wall time
  local name=$1; shift
  local t0; t0=$(now_ms)
  echo "=== $name: $*"
  "$@" 2>&1 | quiet | tee "$LOGS/$name.log"
  T[$name]=$(( $(now_ms) - t0 ))
  echo "=== $name done in $(secs "${T[$name]}")s"
}
write_timings() {
  T[total]=$(( $(now_ms) - T0 ))
  {
    echo "{"
    local first=1 k
    for k in "${!T[@]}"; do
      [[ $first == 1 ]] || echo ","
      printf '  "%s": %s' "$k" "$(secs "${T[$k]}")"
      first=0
    done
    echo
    echo "}"
  } > "$WORK/timings.json"
}
pack() {  # on exit, also after a failure: whatever exists goes into the bundle
  local rc=$?
  [[ -n $PACK ]] || return $rc
  set +e
  [[ -f $OUT/metrics.json ]] || { write_timings; $PY metrics.py "$OUT" > /dev/null 2>&1; }
  mkdir -p "$PACK"
  local items=() p
  for p in hf curves logs metrics.json run.log work/corpus.json work/run.json work/timings.json; do
    [[ -e $OUT/$p ]] && items+=("$p")
  done
  tar -C "$OUT" -czf - "${items[@]}" | split -b 15M -d -a 2 - "$PACK/train-bundle.tar.gz.part-"
  [[ -f $OUT/metrics.json ]] && cp "$OUT/metrics.json" "$PACK/metrics.json"
  cp "$OUT/run.log" "$PACK/run.log"
  echo "packed (exit status $rc):"; ls -l "$PACK"
  return $rc
}
trap pack EXIT
budget() {  # budget DEFAULT RESERVE: training seconds left under the deadline, keeping RESERVE for later stages
  if [[ -z $DEADLINE || $DEADLINE == 0 ]]; then echo "$1"; return; fi
  local left=$(( DEADLINE - ($(now_ms) - T0) / 1000 - $2 ))
  (( left > $1 )) && left=$1
  (( left < 20 )) && left=20
  echo "$left"
}
cd "$HERE"
T0=$(now_ms)

stage corpus $PY corpus.py --work "$WORK" "${CORPUS_ARGS[@]}"
if [[ -n $TARGET_GGUF ]]; then
  stage tokenizer $PY tokenizer.py --work "$WORK" --from "$TEMPLATE" "${TOK_ARGS[@]}"
  stage export "$XTASK" gguf-to-hf "$TARGET_GGUF" --template "$TEMPLATE" --out "$HF/target"
else
  stage tokenizer $PY tokenizer.py --work "$WORK" "${TOK_ARGS[@]}"
  # reserve after the target's training: its eval/save ~25 s, gen ~60 s, drafters >= 160 s + ~45 s, pack ~20 s
  TARGET_ARGS+=(--max-seconds "$(budget "$(default_secs target)" 310)")
  stage target $PY target.py train --work "$WORK" --out "$HF/target" --curves "$CURVES" --seed "$SEED" "${TARGET_ARGS[@]}"
fi
stage gen $PY target.py gen --work "$WORK" --target "$HF/target" --seed "$SEED" "${GEN_ARGS[@]}"

# reserve: load + fp32 eval + save ~45 s, pack ~20 s
ASSIST_ARGS+=(--max-seconds "$(budget "$(default_secs drafter)" 65)")
DFLASH_ARGS+=(--max-seconds "$(budget "${DFLASH_SECS:-$(default_secs drafter)}" 65)")
[[ -n $DFLASH_STEPS ]] && DFLASH_ARGS+=(--steps "$DFLASH_STEPS")
# shellcheck disable=SC2206  # word splitting of the extra arguments is intended
[[ -n $DFLASH_EXTRA ]] && DFLASH_ARGS+=($DFLASH_EXTRA)
A_CMD=($PY assistant.py train --work "$WORK" --target "$HF/target" --out "$HF/assistant" --curves "$CURVES"
       --seed "$SEED" "${ASSIST_ARGS[@]}")
D_CMD=($PY dflash.py train --work "$WORK" --target "$HF/target" --out "$HF/dflash" --curves "$CURVES"
       --seed "$SEED" "${DFLASH_ARGS[@]}")
if [[ $DRAFTERS == none ]]; then
  echo "=== drafters: none asked for"
elif [[ $DRAFTERS == assistant ]]; then
  stage assistant "${A_CMD[@]}"
elif [[ $DRAFTERS == dflash ]]; then
  stage dflash "${D_CMD[@]}"
elif [[ $GPU == 1 ]]; then
  # Both drafters are small and launch-bound: sharing the GPU roughly doubles the work done per second.
  t0=$(now_ms)
  echo "=== drafters (assistant and dflash in parallel)"
  ( "${A_CMD[@]}" 2>&1 | quiet | tee "$LOGS/assistant.log" | sed -u 's/^/[assistant] /' ) &
  PA=$!
  ( "${D_CMD[@]}" 2>&1 | quiet | tee "$LOGS/dflash.log" | sed -u 's/^/[dflash] /' ) &
  PD=$!
  RA=0; RD=0
  wait $PA || RA=$?
  wait $PD || RD=$?
  T[drafters]=$(( $(now_ms) - t0 ))
  echo "=== drafters done in $(secs "${T[drafters]}")s (assistant rc=$RA, dflash rc=$RD)"
  [[ $RA == 0 && $RD == 0 ]] || { echo "a drafter failed"; exit 1; }
else
  stage assistant "${A_CMD[@]}"
  stage dflash "${D_CMD[@]}"
fi

if [[ -n $FIXTURES ]]; then
  stage fixtures $PY check_fixtures.py --fixtures "$FIXTURES" --trained "$HF" --json "$WORK/metrics_fixtures.json"
else  # no fixtures here: still load the trained assistant with transformers' own class, if it has one
  stage fixtures $PY check_fixtures.py --trained "$HF" --json "$WORK/metrics_fixtures.json"
fi
stage layout $PY layout.py "$HF"

write_timings
$PY metrics.py "$OUT"
echo "run_all: total $(secs "${T[total]}")s"
