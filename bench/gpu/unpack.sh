#!/bin/bash
# Unpacks the binaries carried to the GPU machine (xz files in the directory given, default the
# git-ignored gpu-bundle/) into /tmp/b, keeping names already there: give each build a new name.
set -euo pipefail
src=${1:-$(dirname "$0")/../../gpu-bundle}
mkdir -p /tmp/b
for f in "$src"/*.xz; do
  n=$(basename "$f" .xz)
  [ -e "/tmp/b/$n" ] || { xz -dc "$f" > "/tmp/b/$n" && chmod +x "/tmp/b/$n"; }
done
