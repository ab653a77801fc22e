#!/usr/bin/env bash
# Trains several DFlash drafters side by side for an existing target (by default the shipped
# one), so that their acceptance can be compared in one run on one GPU.
#
#   bash tools/train/dflash_variants.sh OUT TARGET_GGUF TEMPLATE_DIR SECONDS NAME="ARGS" [NAME="ARGS"...]
#        [--pack DIR] [--smoke]
#
# First the shared stages of run_all.sh, once: corpus, tokenizer (reused from TEMPLATE_DIR),
# the target exported from TARGET_GGUF with f32 weights (xtask gguf-to-hf), target-greedy data.
# Then one `dflash.py train` per NAME="ARGS", all at once, each with SECONDS of training and its
# own OUT/work-NAME (links to the shared data; its metrics_dflash.json), OUT/hf/dflash-NAME and
# OUT/curves-NAME. OUT/variants.json lists each variant's arguments and held-out acceptance.
# --pack DIR: DIR/variants-bundle.tar.gz.part-NN (hf/dflash-*, curves-*, logs, metrics; not the
# exported target) and DIR/variants.json. --smoke: run_all.sh's toy data sizes (a CPU check).
# Environment: PYTHON, SEED, XTASK as for run_all.sh; NPROC=N trains each variant data-parallel
# over N processes (torchrun, one GPU each), variant i on GPUs i*N .. i*N + N - 1 (of
# CUDA_VISIBLE_DEVICES' list where that is set).
set -euo pipefail
[[ $# -ge 5 ]] || { sed -n '2,17p' "$0"; exit 2; }
OUT=$1; GGUF=$2; TEMPLATE=$3; SECS=$4; shift 4
PACK=""; VARIANTS=(); SMOKE=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --pack) PACK=$2; shift ;;
    --smoke) SMOKE=(--smoke) ;;
    *=*) VARIANTS+=("$1") ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
  shift
done
[[ ${#VARIANTS[@]} -gt 0 ]] || { echo "no NAME=\"ARGS\" variant given"; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
SEED=${SEED:-1234}
NPROC=${NPROC:-1}
LAUNCH=()
DEVICES=()
if [[ $NPROC -gt 1 ]]; then
  # NVLink multicast stays off (the lent machines' rule: it can take a shared host's GPUs down).
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  LAUNCH=(-m torch.distributed.run --standalone --nproc_per_node "$NPROC")
  # The GPUs to share out: the caller's CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists
  # (none on a CPU machine: the variants then run their processes there, e.g. with --cpu).
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a DEVICES <<< "$CUDA_VISIBLE_DEVICES"
  else
    n_gpus=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null || true) | wc -l)
    DEVICES=()
    for ((d = 0; d < n_gpus; d++)); do DEVICES+=("$d"); done
  fi
  need=$((NPROC * ${#VARIANTS[@]}))
  if [[ ${#DEVICES[@]} -gt 0 && ${#DEVICES[@]} -lt $need ]]; then
    echo "NPROC=$NPROC x ${#VARIANTS[@]} variants needs $need GPUs, there are ${#DEVICES[@]}"; exit 2
  fi
fi

bash "$HERE/run_all.sh" "$OUT" --target-gguf "$GGUF" --template "$TEMPLATE" --drafters none --deadline 0 \
  "${SMOKE[@]}"
OUT=$(cd "$OUT" && pwd)

pids=()
i=0
for v in "${VARIANTS[@]}"; do
  name=${v%%=*}; args=${v#*=}
  gpus=()
  if [[ $NPROC -gt 1 && ${#DEVICES[@]} -gt 0 ]]; then
    for ((d = i * NPROC; d < (i + 1) * NPROC; d++)); do gpus+=("${DEVICES[$d]}"); done
  fi
  i=$((i + 1))
  work=$OUT/work-$name
  mkdir -p "$work" "$OUT/curves-$name"
  for f in "$OUT"/work/*; do ln -sfn "$f" "$work/$(basename "$f")"; done
  rm -f "$work/metrics_dflash.json"
  # shellcheck disable=SC2086  # the variant's arguments are split on purpose
  ( cd "$HERE" && if [[ ${#gpus[@]} -gt 0 ]]; then export CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${gpus[*]}"); fi
    $PY "${LAUNCH[@]}" dflash.py train --work "$work" --target "$OUT/hf/target" --out "$OUT/hf/dflash-$name" \
      --curves "$OUT/curves-$name" --seed "$SEED" --max-seconds "$SECS" $args ) \
      > "$OUT/logs/dflash-$name.log" 2>&1 &
  pids+=($!)
  echo "variant $name: $args (pid $!)"
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done

$PY - "$OUT" "${VARIANTS[@]}" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for v in sys.argv[2:]:
    name, args = v.split("=", 1)
    p = out / f"work-{name}" / "metrics_dflash.json"
    if not p.exists():
        rows[name] = {"args": args, "failed": True}
        continue
    m = json.loads(p.read_text())
    h = m["heldout"]
    rows[name] = {"args": args, "params": m["params"], "steps": m["steps_done"], "time_limited": m["time_limited"],
                  "processes": m.get("processes", 1), "batch_total": m.get("batch_total", m["config"]["batch"]),
                  "target_layer_ids": m["target_layer_ids"],
                  "acceptance": h["simulated_acceptance_length"],
                  "acceptance_first128": h.get("simulated_acceptance_length_first128"),
                  "rounds_first128": h.get("simulated_round_acceptance_first128"),
                  "per_position_accuracy": h["per_position_accuracy"]}
(out / "variants.json").write_text(json.dumps(rows, indent=1) + "\n")
for n, r in rows.items():
    if r.get("failed"):
        print(f"{n:>10}  FAILED  {r['args']}")
    else:
        print(f"{n:>10}  {r['params'] / 1e6:5.2f} M  {r['steps']:5d} steps  acceptance {r['acceptance']:.3f}"
              f"  first 128: {r['acceptance_first128']:.3f}  {r['args']}")
PYEOF

if [[ -n $PACK ]]; then
  mkdir -p "$PACK"
  items=(variants.json logs)
  for v in "${VARIANTS[@]}"; do name=${v%%=*}; items+=("hf/dflash-$name" "curves-$name" "work-$name/metrics_dflash.json"); done
  tar -C "$OUT" -czf - --ignore-failed-read "${items[@]}" | split -b 15M -d -a 2 - "$PACK/variants-bundle.tar.gz.part-"
  cp "$OUT/variants.json" "$PACK/"
  ls -l "$PACK"
fi
exit $rc
