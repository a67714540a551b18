#!/usr/bin/env bash
# Same-run comparison of two checkouts on the GPU: the attention benchmark (full and causal,
# D64 and D128, against sdpa) and the decode benchmark, each run from the old tree and from
# this one, alternating, so both see the same machine and the same sdpa.
#   mkdir -p .carry && git archive <old-commit> | (mkdir -p .carry/before && tar -x -C .carry/before)
#   bash benchmarks/compare_trees.sh .carry/before      (device tool: carry [".carry/before"])
# Writes $OUT/<tree>/{attention,decode}/ (results.json, table.md) and prints every table.
set -euo pipefail
OLD=${1:?usage: compare_trees.sh OLD_TREE}
OUT=${OUT:-benchmarks/out/compare}
NEW=$(pwd)
OLD=$(cd "$OLD" && pwd)
run() {  # run TREE NAME SCRIPT ARGS...
  local tree=$1 name=$2; shift 2
  mkdir -p "$OUT/$name"
  (cd "$tree" && FLASHLIGHT_CACHE_DIR=$(mktemp -d) python "$@" --out "$OUT/$name") 2>&1 | tail -n 25
}
for pass in attention decode; do
  for side in before after; do
    tree=$([ $side = before ] && echo "$OLD" || echo "$NEW")
    echo "=== $side: $pass"
    if [ $pass = attention ]; then
      run "$tree" "$side/attention" benchmarks/bench_attention.py --impls sdpa flashlight --variants full causal --head-dim 64 128
    else
      run "$tree" "$side/decode" benchmarks/bench_decode.py
    fi
  done
done
