#!/bin/bash
# A/B runs of the 26B-A4B decode alone (`xtask bench --moe-only`), one process per setting, in the
# order given, so binaries and knobs alternate within one machine's run:
#   bench/gpu/ab-moe.sh OUTDIR "base XTASK_A" "new XTASK_B SPECULA_MMA_ID=0" "base2 XTASK_A" ...
# Each spec is a label, a binary name under /tmp/b (bench/gpu/unpack.sh) and optional VAR=value
# settings; each label gets OUTDIR/LABEL/ (the bench's files) and OUTDIR/LABEL.log, and one line
# "LABEL BINARY: 26B-A4B decode at depth 0: … ms (… tok/s)" is printed. The 26B-A4B file is
# synthesized into /tmp/synth on first use.
set -uo pipefail
out=$1; shift
mkdir -p "$out"
for spec in "$@"; do
  read -r label bin vars <<< "$spec"
  # shellcheck disable=SC2086
  env $vars "/tmp/b/$bin" bench --models /tmp/synth --moe-only --commit "$label" --out "$out/$label" \
    > "$out/$label.log" 2>&1
  echo "$label $bin${vars:+ $vars}: $(grep '26B-A4B decode' "$out/$label.log" || echo "failed, rc=$?")"
done
