#!/bin/bash
# A/B runs of `xtask bench` (decode, verify and drafts; no prefill, no MoE) from one binary, one
# process per setting, in the order given, so knobs alternate within one machine's run:
#   bench/gpu/ab.sh XTASK OUTDIR "base" "hl SPECULA_Q4K_HL=1" "base2" ...
# XTASK is a binary name under /tmp/b (bench/gpu/unpack.sh); each label gets OUTDIR/LABEL/ (the
# bench's JSON, markdown and SVG) and OUTDIR/LABEL.log. The 31B files are synthesized into
# /tmp/synth on first use. Summarize with bench/gpu/ab-summary.py OUTDIR/LABEL ...
set -uo pipefail
x=$1; out=$2; shift 2
mkdir -p "$out"
for spec in "$@"; do
  read -r label vars <<< "$spec"
  echo "=== $label ${vars:-}"
  # shellcheck disable=SC2086
  env $vars "/tmp/b/$x" bench --models /tmp/synth --skip-prefill --skip-moe --commit "$label" \
    --out "$out/$label" > "$out/$label.log" 2>&1
  echo "rc=$?"
done
